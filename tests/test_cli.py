"""The command line as a user runs it: python -m tts_lib ..."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_audio

from tts_lib.cli import main
from tts_lib.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent


def fish_dataset(root: Path, speakers=("anna", "ben"), per_speaker=6) -> Path:
    for n, s in enumerate(speakers):
        for k in range(per_speaker):
            write_audio(root / s / f"{s}_{k}.wav", 1.0 + 0.1 * k, seed=1000 * n + k)
            (root / s / f"{s}_{k}.lab").write_text(f"Lause numero {k} puhujalta {s}.", encoding="utf-8")
    return root


def test_ingest_writes_a_split_manifest_and_never_overwrites(tmp_path, capsys):
    data = fish_dataset(tmp_path / "data")
    out = tmp_path / "manifest.jsonl"
    assert main(["ingest", str(data), "--out", str(out)]) == 0
    items = read_manifest(out)
    assert len(items) == 12 and {i.split for i in items} == {"train", "val"}
    assert "12 items" in capsys.readouterr().out

    before = out.read_bytes()
    assert main(["ingest", str(data), "--out", str(out)]) == 2
    assert "--update" in capsys.readouterr().err and out.read_bytes() == before


def test_ingest_update_keeps_every_split(tmp_path):
    data = fish_dataset(tmp_path / "data", per_speaker=4)
    out = tmp_path / "manifest.jsonl"
    main(["ingest", str(data), "--out", str(out)])
    before = {i.id: i.split for i in read_manifest(out)}
    fish_dataset(tmp_path / "data", speakers=("anna", "ben", "cid"), per_speaker=30)  # more data
    assert main(["ingest", str(data), "--out", str(out), "--update"]) == 0
    after = {i.id: i.split for i in read_manifest(out)}
    assert len(after) == 90 and all(after[k] == v for k, v in before.items())


def test_validate_exit_status_and_json(tmp_path, capsys):
    data = fish_dataset(tmp_path / "data")
    assert main(["validate", str(data)]) == 0
    assert "Result: OK: no errors" in capsys.readouterr().out

    (data / "anna" / "anna_0.wav").write_bytes(b"broken")
    (data / "ben" / "ben_1.lab").write_text("  ")
    assert main(["validate", str(data), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert sorted(p["code"] for p in report["problems"]) == ["empty_text", "unreadable_audio"]


def test_validate_drop_invalid(tmp_path, capsys):
    data = fish_dataset(tmp_path / "data")
    (data / "ben" / "ben_1.lab").write_text("")
    clean = tmp_path / "clean.jsonl"
    assert main(["validate", str(data), "--drop-invalid", str(clean)]) == 0
    assert len(read_manifest(clean)) == 11
    dropped = [json.loads(line) for line in (tmp_path / "clean.dropped.jsonl").read_text().splitlines()]
    assert [d["item"]["id"] for d in dropped] == ["ben/ben_1"]
    assert main(["validate", str(data), "--drop-invalid", str(clean)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err


def test_missing_path_is_one_clear_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err


def test_module_entry_point_runs_the_padding_bench():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tts_lib",
            "bench",
            "padding",
            "--durations",
            str(ROOT / "benchmarks" / "durations_ljspeech_like.txt"),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    bucketed, random = (float(part.split("=")[1]) for part in last.split())
    assert last.startswith("bucketed_efficiency=") and bucketed >= 0.95 > random


def test_demo_runs_the_finetune_notebook_headless(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))
    # As with the headless extra: no ipywidgets in the kernel (tqdm then warns "IProgress not found")
    (tmp_path / "no-widgets" / "ipywidgets").mkdir(parents=True)
    (tmp_path / "no-widgets" / "ipywidgets" / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path / "no-widgets"),
                                                                     os.environ.get("PYTHONPATH")])))  # fmt: skip
    assert main(["demo", "--data", str(ROOT / "data" / "demo"), "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "Problems: 0 errors" in out and "step 40/40" in out and "merged and verified" in out
    for noise in ("TCP without encryption", "IProgress", "TensorBoard logging", "Warning"):  # headless: no noise
        assert noise not in out + err, noise
    version = tmp_path / "run" / "v1"
    results = json.loads((version / "results.json").read_text())
    assert (version / results["merged_dir"] / "codec.pth").is_file() and (version / results["package"]).is_file()
    assert (tmp_path / "run" / "finetune.ipynb").is_file() and (
        tmp_path / "run" / "v1" / "listen" / "after" / "0.wav"
    ).is_file()
    items = read_manifest(tmp_path / "run" / "v1" / "data" / "manifest.jsonl")
    assert (
        len(items) == 35 and sum(i.split == "val" for i in items) >= 3 and all(Path(i.codes).is_file() for i in items)
    )


def test_export_cli_merges_once_and_refuses_an_existing_folder(tmp_path, capsys):
    from tts_lib.models import load_family
    from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
    from tts_lib.training.adapters import AdapterConfig, add_adapters, save_adapter

    family = load_family(make_tiny_checkpoint(tmp_path / "base"))
    config = AdapterConfig()
    save_adapter(add_adapters(family.load_model(), config), tmp_path / "adapter", config, family.identity())
    args = ["export", "--base-model", str(family.folder), "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--out", str(tmp_path / "merged")]) == 0
    assert "verified" in capsys.readouterr().out and (tmp_path / "merged" / "model.pth").is_file()
    before = (tmp_path / "merged" / "model.pth").stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "merged")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "merged" / "model.pth").stat().st_mtime_ns == before


def test_extract_codes_records_codes_in_the_manifest(tmp_path, capsys):
    data = fish_dataset(tmp_path / "data", per_speaker=2)
    manifest = tmp_path / "manifest.jsonl"
    main(["ingest", str(data), "--out", str(manifest)])
    assert main(["make-tiny-model", str(tmp_path / "tiny")]) == 0
    args = ["extract-codes", str(manifest), "--model", str(tmp_path / "tiny"), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    items = read_manifest(manifest)
    assert all(Path(i.codes).is_file() for i in items)
    assert main(args) == 0
    assert "0 encoded, 4 cached" in capsys.readouterr().out


def test_validate_measures_the_text_with_a_models_tokenizer(tmp_path, capsys):
    """--tokenizer takes a model (name or folder) like --base-model, and uses that model family's tokenizer."""
    assert main(["make-tiny-model", str(tmp_path / "tiny")]) == 0
    amharic = str(ROOT / "data" / "demo" / "am_speaker")
    capsys.readouterr()
    assert main(["validate", amharic, "--no-decode", "--tokenizer", str(tmp_path / "tiny"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["code"] for p in report["problems"]] == ["tokenizer_coverage"]
    assert main(["validate", amharic, "--no-decode", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
