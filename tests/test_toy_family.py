"""The family interface is all the stages need: a toy family with float latents (tests/toy_family.py), registered
by this module only, runs every mode through the same code as Fish Speech: prepare, quick_lora, full, two_phase,
incremental, export with verification, hot-swap and listening."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import toy_family
from conftest import DEMO, copy_clips
from safetensors.torch import load_file
from toy_family import ToyLM, registered

from tts_lib.data.manifest import read_manifest
from tts_lib.data.validate import validate_path
from tts_lib.listening.players import read_reference, render_versions
from tts_lib.models import FAMILIES, load_family, make_tiny_checkpoint
from tts_lib.training.adapters import AdapterConfig
from tts_lib.versions.export import merge_adapter_folder
from tts_lib.versions.finetune import FinetuneConfig, run_finetune
from tts_lib.versions.hotswap import AdapterBank
from tts_lib.versions.lineage import read_metadata
from tts_lib.versions.upstream_lora import import_upstream_lora


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    first, grown = root / "data1", root / "data2"
    copy_clips(first, "fi_female", range(1, 8))
    copy_clips(first, "fi_male", range(1, 5))
    shutil.copytree(first, grown)
    copy_clips(grown, "fi_female", range(8, 11))
    with registered(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTS_LIB_CACHE", str(root / "cache"))
        base = make_tiny_checkpoint(root / "toy-base", family="toy")
        yield {"root": root, "base": base, "first": first, "grown": grown, "project": root / "runs"}
    assert "toy" not in FAMILIES  # registered by this module only, and only while it runs


def run(toy, name: str, **over) -> dict:
    c = FinetuneConfig(base_model=str(toy["base"]), data=str(toy["first"]), out=str(toy["project"] / name),
                       max_steps=4, estimate_steps=1, adapter=AdapterConfig(lora_dropout=0.0))  # fmt: skip
    for key, value in over.items():
        setattr(c, key, value)
    c.train.max_tokens, c.train.val_every, c.train.save_every, c.train.log_every_seconds = 512, 2, 2, 60.0
    return run_finetune(c)


@pytest.fixture(scope="module")
def v1(toy):
    return run(toy, "v1")


def test_a_checkpoint_names_its_family_and_unknown_ones_are_refused(toy, tmp_path):
    assert load_family(toy["base"]).name == "toy"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wavenet"}))
    with pytest.raises(ValueError, match="model_type 'wavenet' is not supported; .*'dual_ar'.*'toy_latent'"):
        load_family(tmp_path)


def test_prepare_stores_float_latents_exactly_at_the_familys_rates(toy, v1):
    items = read_manifest(toy["project"] / "v1" / "data" / "manifest.jsonl")
    family = load_family(toy["base"])
    for item in items:
        stored = np.load(item.codes)
        assert stored.dtype == np.float32 and stored.shape == (3, family.frames_for_seconds(item.duration))
    # the validation's sequence limit is the toy's: 600 positions, 25 frames a second -> a 30 s clip is refused
    long_clip = toy["root"] / "long" / "x"
    long_clip.mkdir(parents=True)
    sf.write(long_clip / "x_001.flac", np.zeros(30 * 8000, np.float32) + 0.1, 8000)
    (long_clip / "x_001.lab").write_text("a long one")
    report = validate_path(long_clip.parent, family=family)
    assert [p.code for p in report.problems if p.severity == "error"] == ["too_long_for_model"]


def test_quick_lora_trains_merges_verifies_and_packages(toy, v1):
    out = toy["project"] / "v1"
    meta = read_metadata(out)
    assert meta["base_model"]["family"] == "toy" and meta["best_val"]["val_latent_loss"] > 0
    logged = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_close" in row for row in logged)  # the toy's own score reaches the log
    merged = load_family(out / v1["merged_dir"])  # the export reloads through the registry, verified
    assert merged.name == "toy" and isinstance(merged.load_model(), ToyLM)
    assert "A toy-family fine-tune" in (out / v1["merged_dir"] / "README.md").read_text()
    assert (out / v1["package"]).is_file()
    assert v1["metrics"]["lora"]["best_val_latent_loss"] == meta["best_val"]["val_latent_loss"]
    peft = json.loads((out / v1["adapter_dir"] / "adapter_config.json").read_text())  # r, alpha, targets unset:
    assert (peft["r"], peft["lora_alpha"], sorted(peft["target_modules"])) == (4, 4, ["head", "proj_in", "proj_out"])


def test_full_and_two_phase_modes(toy):
    full = run(toy, "full", mode="full", max_steps=3, package=False)
    base, trained = load_file(toy["base"] / "model.safetensors"), load_file(
        toy["project"] / "full" / full["merged_dir"] / "model.safetensors"
    )
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    two = run(toy, "two", mode="two_phase", speaker_max_steps=2, package=False)
    assert (toy["project"] / "two" / two["language_base_dir"] / "model.safetensors").is_file()
    assert (toy["project"] / "two" / two["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_incremental_runs_check_forgetting_with_the_familys_metric(toy, v1):
    v2 = run(toy, "v2", data=str(toy["grown"]), parent="v1")
    assert read_metadata(toy["project"] / "v2")["parent"]["version"] == "v1"
    forgetting = v2["forgetting"]
    assert forgetting["metric"] == "val_latent_loss" and forgetting["old_data"]["before"] > 0


def test_a_bad_export_is_caught_by_the_familys_probe(toy, v1, monkeypatch, tmp_path):
    adapter = toy["project"] / "v1" / v1["adapter_dir"]
    report = merge_adapter_folder(toy["base"], adapter, tmp_path / "good")
    assert 0 <= report.max_abs_diff <= report.tolerance and report.adapter_effect > 0
    real_save = toy_family.save  # a family whose save loses a layer's weights: the reloaded probe disagrees
    monkeypatch.setattr(toy_family, "save", lambda state: real_save({**state, "head.bias": state["head.bias"] + 1}))
    with pytest.raises(ValueError, match="merged"):
        merge_adapter_folder(toy["base"], adapter, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_hot_swap_and_listening(toy, v1, tmp_path):
    bank = AdapterBank(load_family(toy["base"]))
    bank.load("v1", toy["project"] / "v1" / v1["adapter_dir"])
    voice = read_reference(DEMO / "fi_male" / "fi_male_001.flac", "Hei", bank.family)
    assert voice.wave.dtype == np.float32 and len(voice.wave) < 8000 * 20  # read at the toy's 8 kHz
    adapted = bank.generate("Hyvää huomenta", seed=1)
    with bank.base_only() as model:
        plain = bank.family.generate(model, "Hyvää huomenta", seed=1)
        rows = render_versions({"base": (bank.family, model)}, ["Hei"], tmp_path, references=[voice])
    assert adapted.dtype == torch.float32 and adapted.shape == plain.shape and not torch.equal(adapted, plain)
    assert not torch.equal(bank.generate("Hyvää huomenta", seed=1, references=[voice]), adapted)
    assert sf.info(rows[0]["wav"]).samplerate == 16000 and rows[0]["seconds"] > 0  # the rate decode makes


def test_an_upstream_lora_import_needs_a_family_with_that_format(toy, tmp_path):
    checkpoint = tmp_path / "lora.ckpt"
    torch.save({"head.lora_A": torch.zeros(2, 16), "head.lora_B": torch.zeros(3, 2)}, checkpoint)
    with pytest.raises(ValueError, match="families with an upstream LoRA format .* is a toy model"):
        import_upstream_lora(checkpoint, toy["base"], tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_familys_released_checkpoints_are_base_model_names(toy, tmp_path, monkeypatch):
    """launch/ knows released checkpoints from the registry: names, repositories and their files."""
    from tts_lib.common.errors import MissingInputError
    from tts_lib.launch import download
    from tts_lib.launch.bundle import resolve_base_model

    with pytest.raises(MissingInputError, match="run `BASE_MODEL=toy-small bash setup.sh`"):
        resolve_base_model("toy-small", root=tmp_path)
    asked = []

    def snapshot(repo, revision, dest, files, token, kind):
        asked.append((repo, files))
        for name in files:
            (dest / name).write_text("{}")

    monkeypatch.setattr(download, "_snapshot", snapshot)
    dest = download.download_model("example/toy-small", dest=tmp_path / "checkpoints" / "toy-small")
    assert asked == [("example/toy-small", ["config.json", "model.safetensors"])]
    assert resolve_base_model("toy-small", root=tmp_path) == dest
