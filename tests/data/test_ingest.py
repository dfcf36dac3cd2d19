import json

import numpy as np
import pytest
import soundfile as sf
from conftest import audio_bytes, write_audio

from tts_lib.data.ingest import ingest
from tts_lib.data.manifest import Item, Origin, write_manifest

SR = 16000


def wav(path, seconds=0.2, sr=SR, seed=0):
    return write_audio(path, seconds, sr, seed=seed)


def codes(result):
    return sorted((p.severity, p.code) for p in result.problems)


def by_code(result, code):
    return [p for p in result.problems if p.code == code]


# --- Fish Speech layout ----------------------------------------------------------------------------


def make_fish(root):
    wav(root / "alice" / "a1.wav", 0.2)
    (root / "alice" / "a1.lab").write_text("  Hyvää huomenta \n", encoding="utf-8")
    write_audio(root / "alice" / "chapter" / "a2.flac", 0.3, 44100, seed=1)
    (root / "alice" / "chapter" / "a2.lab").write_text("Toinen lause", encoding="utf-8")
    wav(root / "bob" / "b1.wav", seed=2)
    (root / "bob" / "b1.lab").write_text("Bob speaks", encoding="utf-8")
    np.save(root / "bob" / "b1.npy", np.zeros((8, 10), np.int64))
    wav(root / "r1.wav", seed=3)  # directly in ROOT: the speaker is ROOT itself
    (root / "r1.lab").write_text("root level", encoding="utf-8")
    wav(root / "alice" / "untranscribed.wav", seed=4)
    (root / "bob" / "orphan.lab").write_text("no audio here", encoding="utf-8")
    wav(root / ".ipynb_checkpoints" / "x.wav", seed=5)  # hidden: never part of the dataset
    (root / ".ipynb_checkpoints" / "x.lab").write_text("hidden", encoding="utf-8")
    return root


def test_fish_layout(tmp_path):
    root = make_fish(tmp_path / "voices")
    result = ingest(root)
    assert result.format == "fish" and result.source == root
    assert [i.id for i in result.items] == ["alice/a1", "alice/chapter/a2", "bob/b1", "voices/r1"]
    a1, a2, b1, r1 = result.items
    assert (a1.speaker, a1.text, a1.audio) == ("alice", "Hyvää huomenta", str(root / "alice" / "a1.wav"))
    assert (a2.speaker, a2.sample_rate, a2.channels) == ("alice", 44100, 1)
    assert a2.duration == pytest.approx(0.3, abs=1e-3)
    assert (a1.sample_rate, a1.duration) == (SR, pytest.approx(0.2, abs=1e-3))
    assert b1.codes == str(root / "bob" / "b1.npy") and a1.codes is None
    assert r1.speaker == "voices"
    # The .lab is where a Fish Speech item is fixed; it is a whole file, so no line.
    assert a2.origin == Origin(str(root / "alice" / "chapter" / "a2.lab"))
    assert str(a1.origin) == str(root / "alice" / "a1.lab")

    assert codes(result) == [("error", "missing_audio"), ("error", "missing_transcript")]
    (missing_audio,) = by_code(result, "missing_audio")
    assert missing_audio.path == str(root / "bob" / "orphan.lab") and missing_audio.item_id is None
    (missing_text,) = by_code(result, "missing_transcript")
    assert missing_text.path == str(root / "alice" / "untranscribed.wav") and missing_text.item_id is None
    assert "untranscribed.lab" in missing_text.message


def test_fish_lab_with_bom_and_invalid_utf8(tmp_path):
    root = tmp_path / "ds"
    wav(root / "s" / "good.wav")
    (root / "s" / "good.lab").write_bytes(b"\xef\xbb\xbfBOM is fine\n")
    wav(root / "s" / "bad.wav", seed=1)
    (root / "s" / "bad.lab").write_bytes(b"Hyv\xe4\xe4 p\xe4iv\xe4\xe4")  # Latin-1, not UTF-8
    result = ingest(root, "fish")
    texts = {i.id: i.text for i in result.items}
    assert texts["s/good"] == "BOM is fine"
    assert texts["s/bad"] == "Hyv\ufffd\ufffd p\ufffdiv\ufffd\ufffd"
    (problem,) = result.problems
    assert (problem.code, problem.item_id) == ("text_not_utf8", "s/bad")
    assert problem.path == str(root / "s" / "bad.lab")
    assert "byte 3" in problem.message


def test_fish_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    root = tmp_path / "ds"
    (root / "s").mkdir(parents=True)
    (root / "s" / "m.mp3").write_bytes(audio_bytes("MP3", 0.5, 44100))
    (root / "s" / "m.lab").write_text("mp3 clip", encoding="utf-8")
    (item,) = ingest(root).items
    assert item.id == "s/m" and item.sample_rate == 44100
    assert item.duration == pytest.approx(0.5, abs=0.1)  # MP3 frames pad the end a little


def test_read_headers_off_and_unreadable_audio(tmp_path):
    root = tmp_path / "ds"
    wav(root / "s" / "a.wav")
    (root / "s" / "a.lab").write_text("a", encoding="utf-8")
    (root / "s" / "broken.wav").write_bytes(b"RIFF not really")
    (root / "s" / "broken.lab").write_text("b", encoding="utf-8")
    fast = ingest(root, read_headers=False)
    assert [(i.duration, i.sample_rate) for i in fast.items] == [(None, None), (None, None)]
    full = ingest(root)
    assert [i.sample_rate for i in full.items] == [SR, None]
    assert full.problems == []  # corrupt audio is validation's to report, once


# --- LJSpeech ---------------------------------------------------------------------------------------


def make_ljspeech(root):
    for k, name in enumerate(["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004"]):
        wav(root / "wavs" / f"{name}.wav", seed=k)
    (root / "metadata.csv").write_bytes(
        b'LJ001-0001|He said "1st" place|He said "first" place\n'
        b"LJ001-0002|Only raw text|\n"
        b"LJ001-0003|Two columns only\n"
        b"\n"
        b"no separator at all\n"
        b"LJ001-0005|a|b|c\n"
        b"LJ001-0004|caf\xe9|caf\xe9\n"
    )
    return root


def test_ljspeech(tmp_path):
    root = make_ljspeech(tmp_path / "LJSpeech-1.1")
    result = ingest(root)
    assert result.format == "ljspeech"
    assert [(i.id, i.text) for i in result.items] == [
        ("LJ001-0001", 'He said "first" place'),  # normalized column, quotes kept literally
        ("LJ001-0002", "Only raw text"),  # empty normalized column: the raw one
        ("LJ001-0003", "Two columns only"),
        ("LJ001-0004", "caf\ufffd"),
    ]
    assert {i.speaker for i in result.items} == {"LJSpeech-1.1"}
    assert result.items[0].audio == str(root / "wavs" / "LJ001-0001.wav")
    assert result.items[0].sample_rate == SR
    # No header; the blank line 4 and the malformed lines 5-6 are counted, as an editor counts them.
    assert [i.origin for i in result.items] == [Origin(str(root / "metadata.csv"), n) for n in (1, 2, 3, 7)]

    malformed = by_code(result, "malformed_row")
    assert [p.message.split(":")[0] for p in malformed] == ["line 5", "line 6"]
    assert [p.origin.line for p in malformed] == [5, 6]
    assert "found 1 field(s)" in malformed[0].message and "found 4 field(s)" in malformed[1].message
    assert all(p.path == str(root / "metadata.csv") for p in malformed)
    (bad,) = by_code(result, "text_not_utf8")
    assert bad.item_id == "LJ001-0004" and bad.message.startswith("line 7, byte 14")

    # The metadata file itself is accepted too, with the same result.
    assert ingest(root / "metadata.csv").items == result.items


# --- Coqui / XTTS CSV -------------------------------------------------------------------------------


def test_csv_pipe_with_speakers(tmp_path):
    root = tmp_path / "coqui"
    wav(root / "wavs" / "one.wav")
    wav(root / "wavs" / "sub" / "two.wav", seed=1)
    (root / "metadata_train.csv").write_text(
        "audio_file|text|speaker_name\n"
        'wavs/one.wav|She said "yes", twice|anna\n'
        "wavs/sub/two.wav| Second |\n"
        "wavs/three.wav|too|many|fields\n"
        "|no audio|anna\n",
        encoding="utf-8",
    )
    result = ingest(root)
    assert result.format == "csv"
    assert [(i.id, i.text, i.speaker) for i in result.items] == [
        ("wavs/one", 'She said "yes", twice', "anna"),
        ("wavs/sub/two", "Second", "coqui"),  # no speaker_name: the dataset folder's name
    ]
    assert result.items[1].audio == str(root / "wavs" / "sub" / "two.wav")
    assert [i.origin.line for i in result.items] == [2, 3]  # the header is line 1
    malformed = by_code(result, "malformed_row")
    assert [p.message for p in malformed] == [
        "line 4: expected 3 fields (audio_file|text|speaker_name), found 4",
        "line 5: audio_file is empty",
    ]


def test_csv_comma_quoting_bom_and_bad_bytes(tmp_path):
    root = tmp_path / "ds"
    for k in range(5):
        wav(root / f"{k}.wav", seed=k)
    path = root / "list.csv"
    path.write_bytes(
        b"\xef\xbb\xbfaudio_file,text,language\n"
        b'0.wav,"Well, he said ""no"", then left",fi\n'
        b'4.wav,"a quoted record\nover two lines",fi\n'
        b"1.wav,plain text,fi\n"
        b"2.wav,only two\n"
        b"3.wav,p\xe4iv\xe4\xe4,fi\n"
    )
    result = ingest(path)
    assert result.format == "csv"
    assert [(i.id, i.text, i.speaker) for i in result.items] == [
        ("0", 'Well, he said "no", then left', "ds"),
        ("4", "a quoted record\nover two lines", "ds"),
        ("1", "plain text", "ds"),
        ("3", "p\ufffdiv\ufffd\ufffd", "ds"),
    ]
    # The record quoted over lines 3-4 moves every later record down a line.
    lines = [str(i.origin).removeprefix(f"{path} ") for i in result.items]
    assert lines == ["line 2", "lines 3-4", "line 5", "line 7"]
    found = codes(result)
    assert found == [("error", "malformed_row"), ("error", "text_not_utf8"), ("warning", "ignored_fields")]
    assert by_code(result, "malformed_row")[0].message == (
        "line 6: expected 3 fields (audio_file,text,language), found 2"
    )
    (bad,) = by_code(result, "text_not_utf8")
    assert bad.item_id == "3" and bad.message.startswith("line 7, byte 7") and bad.path == str(path)
    assert "language" in by_code(result, "ignored_fields")[0].message


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_origin_counts_header_blank_lines_and_multiline_records(tmp_path, newline):
    rows = [
        "audio_file,text",
        '"a.wav","spans',  # one record on lines 2-4
        "three",
        'lines"',
        "",
        "b.wav,plain",  # line 6
        'c.wav,"two',  # lines 7-8
        'lines"',
    ]
    path = tmp_path / "list.csv"
    path.write_bytes(newline.join(rows).encode())  # no newline after the last line
    items = ingest(path, read_headers=False).items
    assert [i.id for i in items] == ["a", "b", "c"]
    assert [(i.origin.line, i.origin.last_line) for i in items] == [(2, 4), (6, None), (7, 8)]
    assert [i.origin.place for i in items] == ["lines 2-4", "line 6", "lines 7-8"]


# --- JSONL --------------------------------------------------------------------------------------------


def test_jsonl_voxcpm(tmp_path):
    root = tmp_path / "vox"
    wav(root / "audio" / "a.wav", 0.2)
    wav(tmp_path / "elsewhere" / "b.wav", 0.1, seed=1)
    rows = [
        {"audio": "audio/a.wav", "text": " first ", "duration": 9.9, "dataset_id": 3},
        {"audio": "../elsewhere/b.wav", "text": "second", "speaker": "eva", "emotion": "happy"},
        "{not json",
        {"audio": "audio/a.wav"},
        [1, 2],
        {"audio": "audio/a.wav", "text": "bad split", "split": "test"},
        {"audio": "audio/missing.wav", "text": "gone", "duration": 1.5, "emotion": "sad", "lang": "fi"},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")

    result = ingest(root)
    assert result.format == "jsonl"
    a, b, gone = result.items
    assert (a.id, a.audio, a.text, a.speaker) == ("audio/a", str(root / "audio" / "a.wav"), "first", "vox")
    assert a.duration == pytest.approx(0.2, abs=1e-3)  # headers read: the file, not the row, decides
    assert (b.audio, b.speaker) == (str(tmp_path / "elsewhere" / "b.wav"), "eva")
    assert (gone.duration, gone.sample_rate) == (None, None)
    malformed = by_code(result, "malformed_row")
    assert [p.message.split(":")[0] for p in malformed] == ["line 3", "line 4", "line 5", "line 6"]
    assert 'missing field "text"' in malformed[1].message
    assert "found list" in malformed[2].message and "split must be one of" in malformed[3].message
    (ignored,) = by_code(result, "ignored_fields")
    assert ignored.severity == "warning"
    unused = ignored.message.split(";")[0]
    assert "emotion (2 rows), lang (1 rows)" in unused and "dataset_id" not in unused  # a known VoxCPM field

    no_headers = ingest(root / "train.jsonl", read_headers=False)
    assert [i.duration for i in no_headers.items] == [9.9, None, 1.5]


def test_jsonl_reads_tts_lib_manifest_and_keeps_splits(tmp_path):
    root = tmp_path / "run"
    a = wav(root / "data" / "a.wav")
    b = wav(root / "data" / "b.wav", seed=1)
    np.save(root / "data" / "a.npy", np.zeros((8, 4), np.int64))
    written = [
        Item("spk/a", str(a), "one", "spk", split="val", codes=str(root / "data" / "a.npy")),
        Item("spk/b", str(b), "two", "spk", split="train"),
    ]
    manifest = write_manifest(root / "manifest.jsonl", written)
    result = ingest(manifest)
    assert result.problems == []
    assert [(i.id, i.split, i.audio, i.codes) for i in result.items] == [
        ("spk/a", "val", str(a), str(root / "data" / "a.npy")),
        ("spk/b", "train", str(b), None),
    ]
    assert result.items[0].sample_rate == SR
    # Validating a tts_lib manifest: problems point at its own lines.
    assert [i.origin for i in result.items] == [Origin(str(manifest), 1), Origin(str(manifest), 2)]


def test_jsonl_origin_counts_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"audio": "a.wav", "text": "one"}\n'
        "\n"
        "   \n"
        '{"audio": "b.wav", "text": "two"}\n'
        "{broken\n"
        '{"audio": "c.wav", "text": "three"}\n',
        encoding="utf-8",
    )
    result = ingest(path, read_headers=False)
    assert [i.id for i in result.items] == ["a", "b", "c"]
    assert [i.origin for i in result.items] == [Origin(str(path), n) for n in (1, 4, 6)]
    (bad,) = result.problems
    assert bad.origin == Origin(str(path), 5) and bad.message.startswith("line 5:")


def test_jsonl_invalid_utf8_line(tmp_path):
    wav(tmp_path / "a.wav")
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav", "text": "caf\xe9"}\n')
    result = ingest(path)
    assert result.items[0].text == "caf\ufffd"
    (bad,) = result.problems
    assert (bad.code, bad.item_id) == ("text_not_utf8", "a") and bad.message.startswith("line 1, byte 31")
    assert bad.origin == result.items[0].origin == Origin(str(path), 1)


# --- detection and wrong input ------------------------------------------------------------------------


def test_detection_failure_names_everything_looked_for(tmp_path):
    wav(tmp_path / "lonely.wav")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "old.parquet").write_bytes(b"")  # hidden: a partial download, not data
    with pytest.raises(ValueError) as e:
        ingest(tmp_path)
    message = str(e.value)
    for looked_for in ("metadata.csv", "audio_file", "*.jsonl", "*.parquet", ".lab", str(tmp_path)):
        assert looked_for in message
    assert "found 1 audio files" in message


def test_missing_path_and_wrong_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest(tmp_path / "nowhere")
    root = make_fish(tmp_path / "fish")
    with pytest.raises(ValueError, match="no metadata.csv"):
        ingest(root, "ljspeech")
    with pytest.raises(ValueError, match="no \\*.jsonl"):
        ingest(root, "jsonl")
    with pytest.raises(ValueError, match="no \\*.parquet"):
        ingest(root, "parquet")
    with pytest.raises(ValueError, match="unknown format 'wav'"):
        ingest(root, "wav")
    with pytest.raises(ValueError, match="apply to parquet only"):
        ingest(root, text_column="text")
    with pytest.raises(ValueError, match="folder of"):
        ingest(root / "alice" / "a1.wav", "fish")
    with pytest.raises(ValueError, match="cannot tell the format"):
        ingest(root / "alice" / "a1.lab")
    (root / "metadata.csv").write_text("a|b|c\n")
    with pytest.raises(ValueError, match="more than one dataset format: ljspeech .* fish"):
        ingest(root)
    assert ingest(root, "fish").format == "fish"


def test_jsonl_ref_audio_is_kept_through_the_manifest_and_checked(tmp_path):
    """VoxCPM's JSONL names a reference clip per row (`ref_audio`): ingest keeps it (not "fields not used"), the
    manifest stores it relative to itself, and validation says when the clip is missing."""
    from tts_lib.data.manifest import read_manifest
    from tts_lib.data.validate import ValidationConfig, validate_path

    root = tmp_path / "vox"
    wav(root / "audio" / "a.wav", 0.5)
    wav(root / "refs" / "voice.wav", 0.5, seed=1)
    rows = [{"audio": "audio/a.wav", "text": "hei", "ref_audio": "refs/voice.wav"},
            {"audio": "audio/a.wav", "text": "moi", "id": "b", "ref_audio": "refs/gone.wav"}]  # fmt: skip
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = ingest(root)
    assert result.items[0].ref_audio == str(root / "refs" / "voice.wav") and not by_code(result, "ignored_fields")
    manifest = write_manifest(root / "prepared" / "manifest.jsonl", result.items[:1])
    assert json.loads(manifest.read_text())["ref_audio"] == str(root / "refs" / "voice.wav")  # outside: absolute
    manifest = write_manifest(root / "manifest.jsonl", result.items)
    assert json.loads(manifest.read_text().splitlines()[0])["ref_audio"] == "refs/voice.wav"  # inside: relative
    assert read_manifest(manifest) == result.items
    report = validate_path(root / "train.jsonl", ValidationConfig(decode=False))
    [missing] = [p for p in report.problems if p.code == "missing_ref_audio"]
    assert missing.item_id == "b" and "refs/gone.wav not found" in missing.message
