"""Each fine-tuning mode end to end on tiny-demo and a slice of data/demo: outputs, lineage,
incremental runs from earlier versions, resume after an interruption, and the refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_clips
from safetensors.torch import load_file

from tts_lib.data.manifest import read_manifest
from tts_lib.models import load_family
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
from tts_lib.training.adapters import AdapterConfig, resolve_adapter
from tts_lib.versions import cost
from tts_lib.versions.finetune import FinetuneConfig, run_finetune
from tts_lib.versions.lineage import read_metadata

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, a first dataset (7 + 4 clips), and a grown one (3 more clips of fi_female)."""
    root = tmp_path_factory.mktemp("finetune")
    base = make_tiny_checkpoint(root / "tiny-demo")
    first, grown = root / "data1", root / "data2"
    copy_clips(first, "fi_female", range(1, 8))
    copy_clips(first, "fi_male", range(1, 5))
    shutil.copytree(first, grown)
    copy_clips(grown, "fi_female", range(8, 11))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTS_LIB_CACHE", str(root / "cache"))
        yield {"root": root, "base": base, "first": first, "grown": grown, "project": root / "runs"}


def config(world, name, **over) -> FinetuneConfig:
    c = FinetuneConfig(base_model=str(world["base"]), data=str(world["first"]), out=str(world["project"] / name),
                       max_steps=4, estimate_steps=1, adapter=AdapterConfig(lora_dropout=0.0))  # fmt: skip
    for key, value in over.items():
        setattr(c, key, value)
    c.train.max_tokens, c.train.val_every, c.train.save_every, c.train.log_every_seconds = 512, 2, 2, 60.0
    return c


def at(world, name: str, relative: str) -> Path:
    """A path from results.json: relative to the version folder, so it stays right after a download."""
    assert not Path(relative).is_absolute() and ".." not in Path(relative).parts, relative
    return world["project"] / name / relative


@pytest.fixture(scope="module")
def v1(world):
    return run_finetune(config(world, "v1"))


def test_quick_lora_leaves_a_merged_model_an_adapter_a_package_and_lineage(world, v1, capsys):
    out = world["project"] / "v1"
    assert v1["version"] == "v1" and v1["mode"] == "quick_lora"
    merged = at(world, "v1", v1["merged_dir"])
    assert {"config.json", "model.pth", "tokenizer.tiktoken", "codec.pth"} <= {p.name for p in merged.iterdir()}
    FishSpeechLM.from_pretrained(merged)
    assert (at(world, "v1", v1["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert at(world, "v1", v1["package"]).is_file() and v1["package"] == "v1.tar.gz"
    meta = read_metadata(out)
    assert meta["number"] == 1 and meta["parent"] is None and meta["steps"] == 4
    assert meta["samples"] == {"new": 11, "total": 11}
    assert meta["hyperparameters"]["lr"] == 1e-4 and meta["hyperparameters"]["r"] == 8
    assert meta["best_val"]["val_codebook_loss"] > 0
    estimate = json.loads((out / "estimate.json").read_text())
    assert estimate["tokens_per_s"] > 0
    # measured on a CPU: every GPU gets a time computed from this model's counted FLOPs, labelled so
    computed = [r for r in estimate["rows"] if r["basis"].startswith("computed: counted FLOPs")]
    assert {r["gpu"] for r in computed} == set(cost.GPU_TABLE) and all(r["hours"] > 0 for r in computed)
    assert json.loads((out / "results.json").read_text()) == v1
    assert v1["forgetting"] is None and meta["forgetting"] is None and not (out / "forgetting.json").exists()
    assert v1["plots"] == ["dataset.png", "train/training.png"] and v1["metadata"] == "metadata.json"
    assert all(at(world, "v1", p).stat().st_size > 1000 for p in v1["plots"])
    for folder in (merged, at(world, "v1", v1["adapter_dir"])):
        card = (folder / "README.md").read_text()
        assert "## Lineage" in card and "## Metrics" in card and "## Licence" in card
        assert "tiny-demo model (not OpenAudio S1-mini)" in card and "CC-BY-NC-SA-4.0" not in card  # random base
    assert read_metadata(out)["base_model"]["random_weights"] is True
    assert read_metadata(out)["base_model"]["family"] == "fish_speech"  # the model card takes its text from it
    with tarfile.open(at(world, "v1", v1["package"])) as tar:
        assert "v1/merged/README.md" in tar.getnames()
    again = run_finetune(config(world, "v1"))  # finished: nothing is redone or overwritten
    assert again == v1 and "already finished" in capsys.readouterr().out


def test_full_mode_exports_the_trained_weights_without_an_adapter(world):
    results = run_finetune(config(world, "full", mode="full", max_steps=3, package=False))
    assert results["adapter_dir"] is None and results["package"] is None
    merged = at(world, "full", results["merged_dir"])
    assert results["merged_dir"] == "train/final"
    trained, base = (
        FishSpeechLM.from_pretrained(merged).state_dict(),
        FishSpeechLM.from_pretrained(world["base"]).state_dict(),
    )
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # all weights could move, and some did
    assert read_metadata(world["project"] / "full")["hyperparameters"]["lr"] == 1e-5


def test_two_phase_keeps_the_language_base_and_a_speaker_adapter(world):
    results = run_finetune(config(world, "two", mode="two_phase", speaker_max_steps=2))
    out = world["project"] / "two"
    assert (at(world, "two", results["language_base_dir"]) / "model.pth").is_file()
    assert (at(world, "two", results["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert [Path(p).parent.name for p in results["plots"][1:]] == ["phase1_full", "phase2_lora"]
    speaker_items = read_manifest(out / "data" / "speaker_fi_female.jsonl")  # 7 clips beat 4
    assert speaker_items and {i.speaker for i in speaker_items} == {"fi_female"}
    assert read_metadata(out)["start_model"]["folder"] == str((out / "phase1_full" / "final").resolve())
    with pytest.raises(ValueError, match="speaker 'nobody' is not in .*fi_female \\("):
        run_finetune(config(world, "two-bad", mode="two_phase", speaker="nobody"))


def test_incremental_lora_on_lora_keeps_old_validation_items(world, v1):
    results = run_finetune(config(world, "v2", data=str(world["grown"]), parent="v1"))
    meta = read_metadata(world["project"] / "v2")
    assert meta["parent"]["version"] == "v1" and meta["number"] > read_metadata(world["project"] / "v1")["number"]
    assert meta["samples"]["new"] == 3 and meta["samples"]["total"] == 14
    assert meta["hyperparameters"]["lr"] == pytest.approx(1e-5)  # a tenth of the parent's
    assert meta["start_model"] == read_metadata(world["project"] / "v1")["start_model"]  # same base, same adapter
    old_val = {i.id for i in read_manifest(world["project"] / "v1" / "data" / "manifest.jsonl") if i.split == "val"}
    new_val = {i.id for i in read_manifest(world["project"] / "v2" / "data" / "manifest.jsonl") if i.split == "val"}
    assert old_val and old_val <= new_val
    forgetting = results["forgetting"]  # the parent's model and v2's, on v1's and on the new held-out items
    assert forgetting["old_data"]["before"] > 0 and forgetting["old_data"]["after"] > 0
    assert forgetting["old_data"]["items"] == len(old_val) and isinstance(forgetting["flagged"], bool)
    assert meta["forgetting"] == forgetting == json.loads((world["project"] / "v2" / "forgetting.json").read_text())
    first = load_file(str(at(world, "v1", v1["adapter_dir"]) / "adapter_model.safetensors"))
    second = load_file(str(at(world, "v2", results["adapter_dir"]) / "adapter_model.safetensors"))
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)


def test_incremental_with_another_rank_merges_first_or_is_refused(world, v1):
    other_rank = AdapterConfig(r=4, lora_alpha=8, lora_dropout=0.0)
    results = run_finetune(config(world, "v3", parent="v1", adapter=other_rank))
    meta = read_metadata(world["project"] / "v3")
    assert meta["start_model"]["folder"] == str(at(world, "v1", v1["merged_dir"]).resolve())  # merged v1, new LoRA
    assert json.loads((at(world, "v3", results["adapter_dir"]) / "adapter_config.json").read_text())["r"] == 4
    with pytest.raises(ValueError, match="r 8 -> 4.*merge"):
        run_finetune(config(world, "v4", parent="v1", adapter=other_rank, incremental="lora_on_lora"))


def test_bad_parents_are_refused_with_a_reason(world, v1):
    with pytest.raises(FileNotFoundError, match="v1"):  # the message lists the versions there are
        run_finetune(config(world, "x1", parent="v9"))
    other = make_tiny_checkpoint(world["root"] / "other-base", seed=1)
    with pytest.raises(ValueError, match="trained from base model 'tiny-demo'"):
        run_finetune(config(world, "x2", parent="v1", base_model=str(other)))


def test_rerunning_an_interrupted_run_ends_with_the_same_weights(world, v1, tmp_path):
    out = world["project"] / "killed"
    cmd = [sys.executable, "-m", "tts_lib", "finetune", "--base-model", str(world["base"]), "--data",
           str(world["first"]), "--out", str(out), "--max-steps", "4", "--save-every", "1", "--val-every", "2",
           "--max-tokens", "512", "--set", "estimate_steps=1", "--set", "adapter.lora_dropout=0.0"]  # fmt: skip
    env = {**os.environ, "TTS_LIB_CACHE": str(world["root"] / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    latest = out / "train" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 180
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")  # too fast to interrupt: nothing to check
    assert proc.returncode == 3, output
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming the unfinished run" in done.stdout
    straight = load_file(str(at(world, "v1", v1["adapter_dir"]) / "adapter_model.safetensors"))
    resumed = load_file(str(out / "train" / "final_adapter" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def loralib_checkpoint(base: Path, path: Path) -> Path:
    """An upstream-style Lightning checkpoint: base weights + loralib lora_A/lora_B (r 8) under `model.`."""
    from tts_lib.training.adapters import add_adapters

    model = load_family(base).load_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_adapters(model, AdapterConfig(targets="upstream"))
    g = torch.Generator().manual_seed(3)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            part = "lora_A" if ".lora_A." in name or "lora_embedding_A" in name else "lora_B"
            state[f"{module}.{part}"] = torch.randn(p.shape, generator=g) * 0.05
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return path


def test_an_upstream_lora_checkpoint_is_imported_and_continued(world):
    ckpt = loralib_checkpoint(world["base"], world["root"] / "upstream-lora.ckpt")
    upstream = AdapterConfig(targets="upstream", lora_dropout=0.0)
    results = run_finetune(config(world, "from-upstream", parent=str(ckpt), adapter=upstream))
    imported = load_file(
        str(world["project"] / "from-upstream" / "imported_parent_adapter" / "adapter_model.safetensors")
    )
    trained = load_file(str(at(world, "from-upstream", results["adapter_dir"]) / "adapter_model.safetensors"))
    assert imported.keys() == trained.keys() and len(imported) > 0
    lora_b = [k for k in imported if "lora_B" in k or "lora_embedding_B" in k]
    assert all(imported[k].abs().sum() > 0 for k in lora_b)  # the import carried the upstream weights over
    assert read_metadata(world["project"] / "from-upstream")["parent"]["checkpoint"] == str(ckpt.resolve())


def test_parent_kinds_are_detected(world, v1):
    from tts_lib.versions.parents import resolve_start

    base = world["base"]
    family = load_family(base)
    adapter = resolve_adapter(AdapterConfig(lora_dropout=0.0), family.module_roles)  # as plan_finetune passes it
    args = (world["project"], base, family.identity(), "quick_lora", adapter, "auto")
    merged_dir, adapter_dir = at(world, "v1", v1["merged_dir"]), at(world, "v1", v1["adapter_dir"])
    merged = resolve_start(str(merged_dir), *args, world["root"])  # a model folder: trained from as a base
    assert merged.kind == "model" and merged.weights == merged_dir and merged.init_adapter is None
    adapter = resolve_start(str(adapter_dir), *args, world["root"])  # an adapter folder: continued
    assert adapter.kind == "adapter" and adapter.weights == base and adapter.init_adapter == adapter_dir
    version = resolve_start("v1", *args, world["root"])
    assert version.kind == "version" and version.manifest == world["project"] / "v1" / "data" / "manifest.jsonl"
    with pytest.raises(ValueError, match="expected a version folder"):
        resolve_start(str(world["first"]), *args, world["root"])


def test_a_failed_start_locks_nothing(world, v1):
    """A typo in the data path, then a base model that is no model: each fails before training, and the
    corrected run in the same folder trains (the settings are pinned only when training starts)."""
    out = world["project"] / "retry"
    with pytest.raises(FileNotFoundError):
        run_finetune(config(world, "retry", data=str(world["root"] / "dta1")))
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_finetune(config(world, "retry", base_model=str(world["first"])))
    assert not (out / "run.json").exists()
    results = run_finetune(config(world, "retry", max_steps=2, estimate_steps=0, package=False))
    assert results["metrics"]["lora"]["steps"] == 2 and (out / "run.json").is_file()


def test_a_started_run_refuses_other_settings_naming_the_setting_to_change(world, v1):
    from tts_lib.versions.finetune import lock_run, plan_finetune

    lock_run(plan_finetune(config(world, "pinned", estimate_steps=0)))  # training started, then stopped
    with pytest.raises(ValueError, match="mode: was 'quick_lora', now 'full'.*set output_dir to a new folder"):
        plan_finetune(config(world, "pinned", mode="full"), out_setting="output_dir")
    with pytest.raises(ValueError, match="set --out to a new folder"):
        plan_finetune(config(world, "pinned", mode="full"))


def test_the_estimate_is_measured_again_when_the_settings_change(world, v1):
    from tts_lib.versions.finetune import plan_finetune

    first = plan_finetune(config(world, "estimates"))
    assert plan_finetune(config(world, "estimates")).estimate == first.estimate  # kept for the same settings
    other = plan_finetune(config(world, "estimates", mode="full"))
    assert other.estimate["config"]["mode"] == "full" and first.estimate["config"]["mode"] == "quick_lora"


def test_base_model_names_work_in_the_cli(world, tmp_path, monkeypatch):
    """`--base-model tiny-demo` as in the notebook: the random model from the bundle's checkpoints/."""
    from tts_lib.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["finetune", "--base-model", "tiny-demo", "--data", str(world["first"]), "--out", "runs/t1",
                 "--max-steps", "1", "--max-tokens", "512", "--set", "estimate_steps=0", "--no-package"])  # fmt: skip
    assert code == 0
    meta = read_metadata(tmp_path / "runs" / "t1")
    assert meta["base_model"]["folder"] == str(ROOT / "checkpoints" / "tiny-demo")
    assert meta["base_model"]["random_weights"] is True


def test_codes_are_extracted_on_the_training_device(world, monkeypatch):
    """With a GPU, the codec runs on it (not on the CPU while the rented GPU idles): the device reaches codec_spec."""
    from tts_lib.models.fish_speech.family import FishSpeechFamily
    from tts_lib.versions import cost
    from tts_lib.versions.finetune import plan_finetune

    asked = []
    original = FishSpeechFamily.codec_spec

    def recording(self, device="cpu"):
        asked.append(str(device))
        return original(self, "cpu")  # no GPU here: encode on the CPU, but record what was asked

    monkeypatch.setattr(FishSpeechFamily, "codec_spec", recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cost, "detect_machine", lambda table: cost.Machine("NVIDIA H200", "H200-141GB"))
    plan_finetune(config(world, "on-gpu", estimate_steps=0, codes_cache=str(world["root"] / "c")))
    assert asked == ["cuda"]
    c = config(world, "on-cpu", estimate_steps=0, codes_cache=str(world["root"] / "c"))
    c.train.device = "cpu"  # an explicit training device wins
    plan_finetune(c)
    assert asked == ["cuda", "cpu"]


def test_auto_max_tokens_is_pinned_with_the_run(world, capsys):
    from tts_lib.versions.finetune import resolve_auto_tokens

    family = load_family(world["base"])
    config = FinetuneConfig(base_model=str(world["base"]))
    config.train.max_tokens = "auto"
    new_run = {"config": {"train": {"max_tokens": "auto"}}}  # nothing pinned yet: this machine decides (a CPU)
    assert resolve_auto_tokens(config, new_run, family).train.max_tokens == 4096
    pinned = {"config": {"train": {"max_tokens": 768}}}  # run.json of the run being resumed
    resolved = resolve_auto_tokens(config, pinned, family)
    assert resolved.train.max_tokens == 768 and "as pinned when this run started" in capsys.readouterr().out
    config.train.max_tokens = 1024
    assert resolve_auto_tokens(config, pinned, family).train.max_tokens == 1024  # a number is left as it is


def test_the_cli_takes_max_tokens_auto():
    import argparse

    from tts_lib.cli import max_tokens_arg

    assert max_tokens_arg("auto") == "auto" and max_tokens_arg("2048") == 2048
    with pytest.raises(argparse.ArgumentTypeError, match="whole number or auto"):
        max_tokens_arg("lots")
