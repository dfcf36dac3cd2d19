import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tone, write_audio

from tts_lib.data.manifest import Item, Origin
from tts_lib.data.validate import ValidationConfig, invalid_indices, validate_items, validate_path
from tts_lib.models import load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
from tts_lib.models.fish_speech.tokenizer import FishTokenizer


def item(path, text="Hyvää huomenta kaikille", speaker="a", id=None):
    return Item(id=id or path.stem, audio=str(path), text=text, speaker=speaker)


def codes_of(report, item_id):
    return {p.code for p in report.problems if p.item_id == item_id}


def messages(report, code):
    return [p.message for p in report.problems if p.code == code]


def test_clean_items_have_no_problems(tmp_path):
    items = [item(write_audio(tmp_path / f"{k}.wav", 1.5, seed=k)) for k in range(3)]
    report = validate_items(items)
    assert report.problems == []
    assert report.summary["readable_items"] == 3
    assert items[0].duration == pytest.approx(1.5, abs=1e-3)  # filled from the audio


@pytest.mark.parametrize(
    "make, code, fragment",
    [
        (lambda p: None, "missing_audio", "not found"),
        (
            lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10),
            "unreadable_audio",
            "not a readable audio file",
        ),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 44100), "empty_audio", "zero samples"),
    ],
)
def test_audio_errors(tmp_path, make, code, fragment):
    path = tmp_path / "x.wav"
    make(path)
    report = validate_items([item(path)])
    assert [p.code for p in report.errors] == [code]
    assert fragment in report.errors[0].message
    assert report.errors[0].path == str(path)
    assert invalid_indices(report.item_problems) == [0]


def test_text_errors(tmp_path):
    items = [
        item(write_audio(tmp_path / "a.wav", seed=1), text="   \t"),
        item(write_audio(tmp_path / "b.wav", seed=2), text="Hyv\ufffd\ufffd p\u00e4iv\u00e4\u00e4"),
    ]
    report = validate_items(items)
    assert codes_of(report, "a") == {"empty_text"}
    assert codes_of(report, "b") == {"text_not_utf8"}
    assert "not valid UTF-8" in messages(report, "text_not_utf8")[0]


def test_duplicate_id_flags_only_the_later_copy(tmp_path):
    a = write_audio(tmp_path / "a.wav", seed=1)
    b = write_audio(tmp_path / "b.wav", seed=2)
    report = validate_items([item(a, id="same"), item(b, id="same")])
    [problem] = report.errors
    assert problem.code == "duplicate_id" and problem.path == str(b) and str(a) in problem.message
    assert invalid_indices(report.item_problems) == [1]


# Each dataset's 3rd row names a missing file, after a blank line (and, in the comma CSV, a record
# quoted over two lines); the number is that row's line as an editor shows it.
TABLES = {
    "csv": ("list.csv", 'audio_file,text\na.wav,"quoted, over\ntwo lines"\n\nb.wav,two\ngone.wav,three\n', 6),
    "csv_pipe": ("list.csv", "audio_file|text\na.wav|one\n\nb.wav|two\ngone.wav|three\n", 5),
    "ljspeech": ("metadata.csv", "a|one|one\n\nb|two|two\ngone|three|three\n", 4),
    "jsonl": ("m.jsonl", '{"audio": "a.wav", "text": "one"}\n\n{"audio": "b.wav", "text": "two"}\n'
                         '{"audio": "gone.wav", "text": "three"}\n', 4),
}  # fmt: skip


@pytest.mark.parametrize("layout", TABLES)
def test_problem_names_the_table_row_of_its_item(tmp_path, layout):
    name, content, line = TABLES[layout]
    audio = tmp_path / ("wavs" if layout == "ljspeech" else "")
    write_audio(audio / "a.wav", 1.5, seed=1)
    write_audio(audio / "b.wav", 1.5, seed=2)
    (tmp_path / name).write_text(content, encoding="utf-8")
    report = validate_path(tmp_path / name)
    [problem] = report.problems
    assert problem.code == "missing_audio" and problem.path == str(audio / "gone.wav")
    assert problem.origin == Origin(str(tmp_path / name), line)
    as_json = report.to_json()["problems"][0]["origin"]  # what --json prints
    assert as_json == {"file": str(tmp_path / name), "line": line, "last_line": None, "row": None}


def test_problems_of_a_multiline_record_and_a_duplicate_name_their_lines(tmp_path):
    write_audio(tmp_path / "a.wav", 1.5, seed=1)
    write_audio(tmp_path / "b.wav", 1.5, seed=2)
    path = tmp_path / "list.csv"
    path.write_text('audio_file,text\nb.wav,fine\ngone.wav,"quoted\nover two"\n./b.wav,again\na.wav,"  "\n')
    report = validate_path(path)
    found = {p.code: p for p in report.problems}
    assert set(found) == {"missing_audio", "duplicate_id", "duplicate_audio", "empty_text"}
    assert str(found["missing_audio"].origin) == f"{path} lines 3-4"
    assert found["duplicate_id"].origin.line == 5
    assert found["duplicate_id"].message == f"id 'b' is also used by {path} line 2"  # the row to compare with
    assert found["duplicate_audio"].message.endswith(f"b.wav ({path} line 2)")
    assert found["empty_text"].origin.line == 6


def test_fish_problems_name_the_lab_file(tmp_path):
    write_audio(tmp_path / "anna" / "a1.wav", 1.5)
    (tmp_path / "anna" / "a1.lab").write_text(" ")
    [problem] = validate_path(tmp_path).problems
    assert problem.code == "empty_text" and problem.origin == Origin(str(tmp_path / "anna" / "a1.lab"))


def test_warnings(tmp_path):
    cases = {
        "short": (write_audio(tmp_path / "short.wav", 0.2), "Moi", "too_short"),
        "long": (write_audio(tmp_path / "long.wav", 2.5, seed=1), "Hyvää huomenta kaikille " * 2, "too_long"),
        "lowsr": (
            write_audio(tmp_path / "lowsr.wav", 1.5, sr=16000, seed=2),
            "Hyvää huomenta",
            "low_sample_rate",
        ),
        "stereo": (
            write_audio(tmp_path / "stereo.wav", 1.5, channels=2, seed=3),
            "Hyvää huomenta",
            "multichannel",
        ),
        "quiet": (
            write_audio(tmp_path / "quiet.wav", 1.5, amplitude=1e-4, seed=4),
            "Hyvää huomenta",
            "near_silence",
        ),
        "mismatch": (
            write_audio(tmp_path / "mismatch.wav", 1.0, seed=5),
            "sana " * 40,
            "text_audio_mismatch",
        ),
    }
    clipped = tmp_path / "clipped.wav"
    sf.write(clipped, np.clip(tone(1.5, amplitude=3.0), -1, 1), 44100, subtype="FLOAT")
    cases["clipped"] = (clipped, "Hyvää huomenta", "clipping")
    items = [item(path, text, id=name) for name, (path, text, _) in cases.items()]
    report = validate_items(items, ValidationConfig(max_duration=2.0))
    assert report.errors == []
    for name, (_, _, code) in cases.items():
        assert codes_of(report, name) == {code}, name
    assert "0.20 s is shorter than 0.3 s" in messages(report, "too_short")[0]
    assert "16000 Hz is below the model's 44100 Hz" in messages(report, "low_sample_rate")[0]
    assert "2 channels" in messages(report, "multichannel")[0]
    assert "characters per second" in messages(report, "text_audio_mismatch")[0]
    assert invalid_indices(report.item_problems) == []  # warnings alone drop nothing
    assert invalid_indices(report.item_problems, also_drop=("too_long",)) == [1]


def test_duplicate_audio_is_found_across_formats(tmp_path):
    x = (tone(1.2) * 32767).astype(np.int16)  # the same PCM in two containers
    sf.write(tmp_path / "a.wav", x, 44100, subtype="PCM_16")
    sf.write(tmp_path / "b.flac", x, 44100, subtype="PCM_16")
    report = validate_items([item(tmp_path / "a.wav"), item(tmp_path / "b.flac")])
    [problem] = report.warnings
    assert problem.code == "duplicate_audio" and problem.item_id == "b" and "a.wav" in problem.message


def test_headers_only_skips_content_checks(tmp_path):
    quiet = write_audio(tmp_path / "quiet.wav", 1.5, amplitude=1e-4)
    report = validate_items([item(quiet)], ValidationConfig(decode=False))
    assert report.problems == []


def test_tokenizer_coverage_warns_per_script(tmp_path, tokenizer_dir):
    encoder = FishTokenizer.from_dir(tokenizer_dir)
    items = [
        item(write_audio(tmp_path / "fi.wav", 1.5, seed=1), "hyvää huomenta"),
        item(write_audio(tmp_path / "am.wav", 1.5, seed=2), "ሰላም ነው", speaker="b"),
    ]
    report = validate_items(items, encoder=encoder)
    [problem] = messages(report, "tokenizer_coverage")
    assert problem.startswith("ETHIOPIC script: 3.00 tokens per character")
    ratios = report.summary["tokens_per_char_by_script"]
    assert ratios["ETHIOPIC"] == 3.0 and ratios["LATIN"] < 1.0


def test_summary(tmp_path):
    items = [
        item(write_audio(tmp_path / "a1.wav", 3.0, seed=1), speaker="a"),
        item(write_audio(tmp_path / "a2.wav", 0.5, seed=2), speaker="a"),
        item(write_audio(tmp_path / "b1.wav", 12.0, sr=22050, seed=3), "sana " * 30, speaker="b"),
    ]
    s = validate_items(items).summary
    assert s["items"] == 3 and s["speakers"] == 2
    assert s["minutes_per_speaker"] == {"b": 0.2, "a": pytest.approx(3.5 / 60, abs=0.01)}
    assert s["total_hours"] == pytest.approx(15.5 / 3600, abs=1e-4)
    assert s["sample_rates"] == {22050: 1, 44100: 2}
    assert s["duration_histogram"]["0-1s"] == 1
    assert s["duration_histogram"]["2-5s"] == 1
    assert s["duration_histogram"]["10-15s"] == 1
    json.dumps(s)  # the --json output must serialise


def test_process_pool_gives_the_same_report(tmp_path):
    items = [item(write_audio(tmp_path / f"{k}.wav", 0.35, seed=k % 60), "Moi") for k in range(70)]
    serial = validate_items([Item(**vars(i)) for i in items], ValidationConfig(workers=1))
    pooled = validate_items(items, ValidationConfig(workers=2))
    assert [vars(p) for p in pooled.problems] == [vars(p) for p in serial.problems]
    assert {p.code for p in pooled.problems} == {"duplicate_audio"}  # seeds repeat after 60


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    """tiny-demo: max_seq_len 1024, S1-mini's codec frame rate (about 21.5 frames per second)."""
    return load_family(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-demo"))


def frames_of_audio(path, frames, family, seed=0):
    """A clip of exactly `frames` codec frames at the codec's own sample rate."""
    codec = family.codec_config()
    return write_audio(path, frames * codec.frame_length / codec.sample_rate, sr=codec.sample_rate, seed=seed)


def test_an_item_too_long_for_the_model_is_an_error_naming_its_length(tmp_path, tiny_family):
    text = "hyvää huomenta"
    limit, num_codebooks = tiny_family.config.max_seq_len, tiny_family.config.num_codebooks
    prefix = tiny_family.build_sample(text, torch.zeros(num_codebooks, 1, dtype=torch.long)).tokens.shape[1] - 1
    fits = limit - prefix  # frames whose training sequence is exactly max_seq_len long
    items = [
        item(write_audio(tmp_path / "short.wav", 1.5, seed=1), text),
        item(frames_of_audio(tmp_path / "fits.wav", fits, tiny_family, seed=2), text),
        item(frames_of_audio(tmp_path / "over.wav", fits + 1, tiny_family, seed=3), text),
    ]
    report = validate_items(items, ValidationConfig(decode=False), family=tiny_family)
    [problem] = [p for p in report.problems if p.code == "too_long_for_model"]
    assert problem.severity == "error" and problem.item_id == "over" and problem.path == items[2].audio
    assert f"is {limit + 1} tokens ({fits + 1} codec frames" in problem.message
    assert f"more than the model's max_seq_len {limit}" in problem.message
    assert invalid_indices(report.item_problems) == [2]  # --drop-invalid drops it, and only it
    assert validate_items(items, ValidationConfig(decode=False)).errors == []  # without the model: not checked

    # The limit is the model's real one: the sequence that fits runs, one frame more fails inside the model.
    model = tiny_family.load_model().eval()
    with torch.no_grad():
        sample = tiny_family.build_sample(text, torch.zeros(num_codebooks, fits, dtype=torch.long))
        model(sample.tokens[None])
        sample = tiny_family.build_sample(text, torch.zeros(num_codebooks, fits + 1, dtype=torch.long))
        with pytest.raises(RuntimeError):
            model(sample.tokens[None])


def test_a_model_family_brings_its_own_sample_rate(tmp_path, tiny_family):
    """The rate a clip is checked against is the family's codec's, not S1-mini's 44.1 kHz."""

    class At16k:  # the tiny family with a 16 kHz codec, as VoxCPM-like families have
        sample_rate = 16000

        def __getattr__(self, name):
            return getattr(tiny_family, name)

    clip = item(write_audio(tmp_path / "at16k.wav", 1.5, sr=16000), "Hyvää huomenta")
    assert "low_sample_rate" in codes_of(validate_items([clip], ValidationConfig(decode=False)), "at16k")
    report = validate_items([clip], ValidationConfig(decode=False), family=At16k())
    assert "low_sample_rate" not in codes_of(report, "at16k")
    low = item(write_audio(tmp_path / "at8k.wav", 1.5, sr=8000, seed=1), "Hyvää huomenta")
    report = validate_items([low], ValidationConfig(decode=False), family=At16k())
    assert "8000 Hz is below the model's 16000 Hz" in messages(report, "low_sample_rate")[0]


def test_the_family_counts_frames_as_its_codec_does(tiny_family):
    codec = tiny_family.codec_config()
    assert tiny_family.frame_rate == codec.sample_rate / codec.frame_length
    one_frame = codec.frame_length / codec.sample_rate
    assert tiny_family.frames_for_seconds(one_frame) == 1 and tiny_family.frames_for_seconds(one_frame * 1.01) == 2
    assert tiny_family.frames_for_seconds(10 * one_frame) == 10


def test_with_the_model_family_its_tokenizer_measures_every_script(tmp_path):
    """validate --base-model, prepare and finetune pass the family: a script its tokenizer barely knows shows up
    before training, without asking for --tokenizer."""
    family = load_family(make_tiny_checkpoint(tmp_path / "tiny"))
    demo = Path(__file__).resolve().parents[2] / "data" / "demo" / "am_speaker"
    report = validate_path(demo, ValidationConfig(decode=False), family=family)
    [problem] = messages(report, "tokenizer_coverage")
    assert problem.startswith("ETHIOPIC script:")
    assert report.summary["tokens_per_char_by_script"]["ETHIOPIC"] > 1


def test_a_voice_reference_counts_toward_the_training_sequence_of_a_family_that_trains_with_one(tmp_path):
    """VoxCPM2 puts a row's ref_audio before its text: an item that fits alone can be too long with it."""
    from tts_lib.models import load_family, make_tiny_checkpoint

    family = load_family(make_tiny_checkpoint(tmp_path / "vox", family="voxcpm"))  # max_seq_len 512 positions
    clip = write_audio(tmp_path / "clip.wav", 5.0, sr=16000, seed=1)  # 32 patches
    items = [item(clip, "hyvää"), item(clip, "hyvää"), item(clip, "hyvää")]
    items[1].ref_audio = str(write_audio(tmp_path / "short-ref.wav", 4.0, sr=16000, seed=2))
    items[2].ref_audio = str(write_audio(tmp_path / "long-ref.wav", 80.0, sr=16000, seed=3))  # 500 patches
    items[1].id, items[2].id = "with-short-ref", "with-long-ref"
    report = validate_items(items, ValidationConfig(decode=False), family=family)
    assert [p.item_id for p in report.problems if p.code == "too_long_for_model"] == ["with-long-ref"]
