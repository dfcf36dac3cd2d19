import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import audio_bytes, write_audio

from tts_lib.data.ingest import ingest
from tts_lib.data.manifest import Origin

SR = 16000

AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_shard(path, audio, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"audio": pa.array(audio, AUDIO_TYPE), **columns})
    pq.write_table(table, path)
    return path


def test_parquet_extracts_once_and_reuses_cache(tmp_path, monkeypatch):
    local = write_audio(tmp_path / "hub" / "clips" / "local.wav", 0.2, SR, seed=9)
    audio = [
        {"bytes": audio_bytes("WAV", seed=0), "path": "common_voice_1.wav"},
        {"bytes": audio_bytes("FLAC", seed=1), "path": None},  # no name: the format is sniffed
        {"bytes": None, "path": str(local)},  # already on disk: used where it is
        {"bytes": None, "path": None},
        {"bytes": audio_bytes("WAV", seed=2), "path": "common_voice_1.wav"},  # same name again
    ]
    columns = {
        "sentence": ["eka", "toka", "kolmas", "neljäs", "viides"],
        "client_id": ["c1", "c1", None, "c2", "c2"],
        "up_votes": [1, 2, 3, 4, 5],
    }
    shard = write_shard(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", audio, columns)
    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))

    result = ingest(tmp_path / "hub")
    assert result.format == "parquet"
    prefix = "data/train-00000-of-00001"
    # The name from the struct's path when there is one and it is not taken, else the row number.
    assert [i.id for i in result.items] == [f"{prefix}/{n}" for n in ("common_voice_1", "1", "local", "4")]
    assert [i.text for i in result.items] == ["eka", "toka", "kolmas", "viides"]
    assert [i.speaker for i in result.items] == ["c1", "c1", "hub", "c2"]
    assert result.items[2].audio == str(local)
    extracted = [result.items[k].audio for k in (0, 1, 3)]
    assert [os.path.basename(p) for p in extracted] == ["0.wav", "1.flac", "4.wav"]
    for path in extracted:
        assert path.startswith(str(tmp_path / "cache" / "parquet" / "train-00000-of-00001-"))
    assert open(extracted[1], "rb").read() == audio[1]["bytes"]
    assert [i.sample_rate for i in result.items] == [SR] * 4
    (bad,) = result.problems
    assert (bad.code, bad.path) == ("malformed_row", str(shard))
    assert bad.message == "row 3: audio column 'audio' has neither bytes nor path"
    # Each item knows the shard and row it came from; the skipped row 3 shifts nothing.
    assert [i.origin for i in result.items] == [Origin(str(shard), row=k) for k in (0, 1, 2, 4)]
    assert str(result.items[3].origin) == f"{shard} row 4" and bad.origin == Origin(str(shard), row=3)

    # A second ingest finds the extracted files and leaves them alone.
    for path in extracted:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    again = ingest(tmp_path / "hub")
    assert [i.audio for i in again.items] == [i.audio for i in result.items]
    assert [os.stat(p).st_mtime_ns for p in extracted] == [1_000_000_000] * 3
    assert not [p for p in os.listdir(os.path.dirname(extracted[0])) if p.endswith(".tmp")]


def test_parquet_text_column_detection_and_choice(tmp_path):
    audio = [{"bytes": audio_bytes(), "path": "x.wav"}]
    shard = write_shard(tmp_path / "s.parquet", audio, {"phrase": ["hei"], "lang": ["fi"]})
    with pytest.raises(ValueError) as e:
        ingest(shard, cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert "no text column found" in message and "transcription" in message
    assert "phrase (string)" in message and "lang (string)" in message and "audio (struct" in message

    result = ingest(shard, text_column="phrase", cache_dir=tmp_path / "cache")
    assert [(i.id, i.text, i.speaker) for i in result.items] == [("s/x", "hei", tmp_path.name)]
    assert result.items[0].audio.startswith(str(tmp_path / "cache" / "parquet"))

    other = write_shard(tmp_path / "t.parquet", audio, {"Transcription": ["moi"], "text_len": [3]})
    assert [i.text for i in ingest(other, cache_dir=tmp_path / "cache").items] == ["moi"]
    with pytest.raises(ValueError, match="no text column 'nope'"):
        ingest(other, text_column="nope", cache_dir=tmp_path / "cache")
