"""prepare_dataset: ingest, sticky splits and validation into a run folder; with the model family, items too long
for the model are found there."""

import json

from conftest import write_audio

from tts_lib.data.prepare import prepare_dataset
from tts_lib.models import load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint


def test_prepare_with_the_family_finds_an_item_too_long_for_the_model(tmp_path):
    family = load_family(make_tiny_checkpoint(tmp_path / "tiny-demo"))
    codec = family.codec_config()
    too_long = (family.config.max_seq_len + 1) * codec.frame_length / codec.sample_rate  # frames alone overflow
    write_audio(tmp_path / "data" / "short.wav", 1.5, seed=1)
    write_audio(tmp_path / "data" / "long.wav", too_long, sr=codec.sample_rate, seed=2)
    rows = [{"audio": "short.wav", "text": "hyvää huomenta"}, {"audio": "long.wav", "text": "hyvää huomenta"}]
    (tmp_path / "data" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    data = prepare_dataset(tmp_path / "data" / "m.jsonl", tmp_path / "run", family=family)
    assert [(p.code, p.item_id) for p in data.report.errors] == [("too_long_for_model", "long")]
    saved = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert [p["code"] for p in saved["problems"] if p["severity"] == "error"] == ["too_long_for_model"]
    assert prepare_dataset(tmp_path / "data" / "m.jsonl", tmp_path / "run2").report.errors == []
