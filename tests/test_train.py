"""The training loop on tiny-demo: resume to the bit after SIGKILL, clean stop on SIGTERM,
non-finite updates, refused resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tts_lib.config_io import save_config
from tts_lib.manifest import read_manifest, write_manifest
from tts_lib.models import load_family
from tts_lib.train import train
from tts_lib.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def config(prepared, run_dir, **over) -> TrainConfig:
    base, manifest = prepared
    fields = dict(base_model=str(base), manifest=str(manifest), run_dir=str(run_dir), max_steps=24, max_tokens=256,
                  val_every=6, save_every=3, log_every_seconds=60.0)  # fmt: skip
    config = TrainConfig(**{**fields, **over})
    config.optim.lr = 1e-3
    config.schedule.warmup_steps = 2
    return config


def run_cli(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tts_lib", "train", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)  # fmt: skip


def latest_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while latest_step(run_dir) < step:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(prepared, tmp_path):
    straight = train(config(prepared, tmp_path / "straight"))
    assert straight.step == 24 and straight.final_model is not None

    cfg = config(prepared, tmp_path / "killed")
    save_config(cfg, tmp_path / "killed.yaml")
    proc = run_cli(tmp_path / "killed.yaml")
    wait_for_step(proc, tmp_path / "killed", 7)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_step(tmp_path / "killed")
    assert killed_at < 24, "the run finished before it could be killed"
    resumed = run_cli(tmp_path / "killed.yaml")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"at step {killed_at}" in out

    for name in ("checkpoints/step_00000024/trainable.safetensors",):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "killed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (
        torch.load(d / "final" / "model.pth", weights_only=True) for d in (tmp_path / "straight", tmp_path / "killed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # the EMA weights too
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # redone steps are logged once


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(prepared, tmp_path):
    cfg = config(prepared, tmp_path / "run", max_steps=500, save_every=1000, val_every=0)
    save_config(cfg, tmp_path / "run.yaml")
    proc = run_cli(tmp_path / "run.yaml")
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3 and "stopped by a signal" in out
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert latest_step(tmp_path / "run") == logged[-1] < 500


def test_non_finite_updates_are_skipped_then_stop_the_run(prepared, tmp_path, monkeypatch, capsys):
    import tts_lib.train as train_module

    real = train_module.load_family

    def poisoned(folder):
        family = real(folder)
        original = family.loss_parts

        def loss_parts(model, batch):
            parts = original(model, batch)
            parts.slow_sum = parts.slow_sum * float("nan")
            return parts

        family.loss_parts = loss_parts
        return family

    monkeypatch.setattr(train_module, "load_family", poisoned)
    with pytest.raises(RuntimeError, match="5 non-finite updates in a row; last good state saved at step 0"):
        train(config(prepared, tmp_path / "run"))
    out = capsys.readouterr().out
    assert out.count("skipped a non-finite update") == 5 and "items ['fi_" in out
    assert latest_step(tmp_path / "run") == 0 and (tmp_path / "run" / "checkpoints" / "step_00000000").is_dir()


def test_resume_refuses_changed_settings_or_data(prepared, tmp_path):
    train(config(prepared, tmp_path / "run", max_steps=3))
    with pytest.raises(ValueError, match="max_tokens: saved 256, now 512"):
        train(config(prepared, tmp_path / "run", max_steps=6, max_tokens=512))
    base, manifest = prepared
    items = read_manifest(manifest)
    items[0].text += " (korjattu)"
    changed = write_manifest(tmp_path / "changed.jsonl", items)
    with pytest.raises(ValueError, match="the manifest's items changed"):
        train(config((base, changed), tmp_path / "run", max_steps=6))
    assert train(config(prepared, tmp_path / "run", max_steps=6)).step == 6  # same settings: resumes


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(prepared, tmp_path):
    from tts_lib.sampler import LengthBucketedBatchSampler
    from tts_lib.train import load_samples

    family = load_family(prepared[0])
    lengths = [
        s.tokens.shape[1] for s in load_samples(family, [i for i in read_manifest(prepared[1]) if i.split == "train"])
    ]
    steps = 2  # within one epoch: at an epoch's end DDP pads with a repeated batch, one process does not
    assert len(LengthBucketedBatchSampler(lengths, 256).global_batches(0)) >= 2 * steps

    one = train(config(prepared, tmp_path / "one", max_steps=steps, grad_accum=2, val_every=0, ema_decay=None))
    cfg = config(prepared, tmp_path / "two", max_steps=steps, grad_accum=1, val_every=0, ema_decay=None)
    save_config(cfg, tmp_path / "two.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tts_lib", "train", "--config", str(tmp_path / "two.yaml")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "x 2 process(es)" in done.stdout

    a = torch.load(one.final_model / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "two" / "final" / "model.pth", weights_only=True)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5  # the same update up to the order of float additions
    moved = max((a[k] - torch.load(prepared[0] / "model.pth", weights_only=True)[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # and the runs did train


def test_resume_from_a_given_checkpoint(prepared, tmp_path):
    train(config(prepared, tmp_path / "a", max_steps=6))
    first = tmp_path / "a" / "checkpoints" / "step_00000003"
    resumed = train(config(prepared, tmp_path / "b", max_steps=6, resume_from=str(first)))
    straight = load_file(tmp_path / "a" / "checkpoints" / "step_00000006" / "trainable.safetensors")
    again = load_file(tmp_path / "b" / "checkpoints" / "step_00000006" / "trainable.safetensors")
    assert resumed.step == 6 and all(torch.equal(straight[k], again[k]) for k in straight)


@pytest.mark.slow
def test_compiled_steps_train_and_save_the_plain_model(prepared, tmp_path):
    result = train(config(prepared, tmp_path / "run", max_steps=2, val_every=0, compile=True))
    state = torch.load(result.final_model / "model.pth", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state)  # saved unwrapped, loadable upstream


@pytest.mark.parametrize(("final_weights", "expected_step"), [("best", 4), ("last", 6)])
def test_the_final_model_holds_the_best_or_the_last_weights(
    prepared, tmp_path, monkeypatch, final_weights, expected_step
):
    import tts_lib.train as engine
    from tts_lib.checkpoints import load_checkpoint
    from tts_lib.models.fish_speech.checkpoint import load_state_dict_file

    scripted = iter([1.0, 0.5, 0.9])  # validations at steps 2, 4, 6: step 4 is the best

    def fake_evaluate(*args, **kwargs):
        value = next(scripted)
        return {"val_loss": value, "val_slow_loss": 0.0, "val_codebook_loss": value, "val_top1": 0.0, "val_top5": 0.0}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    run = tmp_path / final_weights
    result = train(
        config(prepared, run, max_steps=6, val_every=2, save_every=2, keep_last=5, final_weights=final_weights)
    )
    final = load_state_dict_file(result.final_model / "model.pth")
    for step in (4, 6):
        ema = load_checkpoint(run / "checkpoints" / f"step_{step:08d}")["ema"]["shadow"]
        same = all(torch.equal(final[name], value) for name, value in ema.items())
        assert same == (step == expected_step), step
