"""The training loop on tiny-demo: resume to the bit after SIGKILL (and with dropout), clean stop on
SIGTERM, non-finite updates and fp16 overflows, refused resumes, per-token normalisation over
micro-batches and processes, DDP and FSDP2 against one process, best weights apart from the
resumable checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tts_lib.common.config_io import save_config
from tts_lib.data.manifest import read_manifest, write_manifest
from tts_lib.models import load_family
from tts_lib.training import checkpoints as ckpt
from tts_lib.training.adapters import AdapterConfig
from tts_lib.training.distributed import Dist
from tts_lib.training.train import MIN_LOSS_SCALE, TrainingLoss, backward_update, is_overflow_skip, load_samples, train
from tts_lib.training.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def config(prepared, run_dir, **over) -> TrainConfig:
    base, manifest = prepared
    fields = dict(base_model=str(base), manifest=str(manifest), run_dir=str(run_dir), max_steps=24, max_tokens=256,
                  val_every=6, save_every=3, log_every_seconds=60.0)  # fmt: skip
    config = TrainConfig(**{**fields, **over})
    config.optim.lr = 1e-3
    config.schedule.warmup_steps = 2
    return config


# One CPU thread in the runs compared bit for bit: with several, MKL/OpenMP may split a reduction differently
# when the machine is busy (MKL_DYNAMIC), and the last bits of the weights then differ for reasons no resume causes.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}


def run_cli(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tts_lib", "train", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **ONE_THREAD})  # fmt: skip


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
    save_config(config(prepared, tmp_path / "straight"), tmp_path / "straight.yaml")
    straight = run_cli(tmp_path / "straight.yaml")  # in a process like the others: the same threads
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

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
    import tts_lib.training.train as train_module

    real = train_module.load_family

    def poisoned(folder):
        family = real(folder)
        original = family.loss_parts

        def loss_parts(model, batch):
            parts = original(model, batch)
            parts.sums["slow"] = parts.sums["slow"] * float("nan")
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


def train_lengths(prepared) -> list[int]:
    family = load_family(prepared[0])
    items = [i for i in read_manifest(prepared[1]) if i.split == "train"]
    return [s.tokens.shape[1] for s in load_samples(family, items)]


def torchrun_two(config_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tts_lib", "train", "--config", str(config_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def logged(run_dir: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(prepared, tmp_path):
    from tts_lib.data.sampler import LengthBucketedBatchSampler

    steps = 2  # within one epoch: at an epoch's end DDP pads with a repeated batch, one process does not
    assert len(LengthBucketedBatchSampler(train_lengths(prepared), 256).global_batches(0)) >= 2 * steps

    one = train(config(prepared, tmp_path / "one", max_steps=steps, grad_accum=2, val_every=0, ema_decay=None))
    cfg = config(prepared, tmp_path / "two", max_steps=steps, grad_accum=1, val_every=0, ema_decay=None)
    save_config(cfg, tmp_path / "two.yaml")
    assert "x 2 process(es) (DDP)" in torchrun_two(tmp_path / "two.yaml").stdout

    a = torch.load(one.final_model / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "two" / "final" / "model.pth", weights_only=True)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5  # the same update up to the order of float additions
    moved = max((a[k] - torch.load(prepared[0] / "model.pth", weights_only=True)[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # and the runs did train
    # Adam hides a gradient's scale from the weights; the logged norm does not: DDP's average over the
    # processes must be undone exactly, or this norm would be half of one process's.
    assert logged(tmp_path / "two", "grad_norm") == pytest.approx(logged(tmp_path / "one", "grad_norm"), rel=1e-4)
    assert logged(tmp_path / "two", "loss") == pytest.approx(logged(tmp_path / "one", "loss"), rel=1e-5)
    one_keys, two_keys = (load_file(tmp_path / run / "checkpoints" / "step_00000002" / "trainable.safetensors").keys()
                          for run in ("one", "two"))  # fmt: skip
    assert one_keys == two_keys  # the unwrapped model's names: no "module." prefixes


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_and_resume(prepared, tmp_path):
    from tts_lib.data.sampler import LengthBucketedBatchSampler

    assert len(LengthBucketedBatchSampler(train_lengths(prepared), 160).global_batches(0)) >= 2 * 3
    settings = dict(max_tokens=160, val_every=2, save_every=1, keep_last=5)
    cfg = config(prepared, tmp_path / "fsdp", max_steps=2, fsdp=True, **settings)
    save_config(cfg, tmp_path / "fsdp.yaml")
    assert "x 2 process(es) (FSDP2)" in torchrun_two(tmp_path / "fsdp.yaml").stdout
    one = config(prepared, tmp_path / "one", max_steps=2, grad_accum=2, **settings)
    train(one)

    def final(run: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / run / "final" / "model.pth", weights_only=True)

    def close(a: dict, b: dict) -> float:
        assert a.keys() == b.keys()
        return max((a[k] - b[k]).abs().max().item() for k in a)

    assert close(final("fsdp"), final("one")) < 1e-5  # gathered, EMA-averaged and saved whole
    state = ckpt.load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "step_00000002")
    one_state = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "step_00000002")
    assert state[ckpt.MODEL].keys() == one_state[ckpt.MODEL].keys()
    assert all(isinstance(k, str) for k in state[ckpt.OPTIMIZER]["state"])  # gathered Adam state, by weight name
    assert len(state[ckpt.RNG]) == 2  # each process's generators

    # One more step from the saved shards (weights, Adam state, EMA), against one process doing the same.
    cfg.max_steps = one.max_steps = 3
    save_config(cfg, tmp_path / "fsdp.yaml")
    assert "resumed from" in torchrun_two(tmp_path / "fsdp.yaml").stdout
    train(one)
    assert close(final("fsdp"), final("one")) < 1e-5
    assert logged(tmp_path / "fsdp", "grad_norm") == pytest.approx(logged(tmp_path / "one", "grad_norm"), rel=1e-4)


def test_resume_from_a_given_checkpoint(prepared, tmp_path):
    train(config(prepared, tmp_path / "a", max_steps=6))
    first = tmp_path / "a" / "checkpoints" / "step_00000003"
    resumed = train(config(prepared, tmp_path / "b", max_steps=6, resume_from=str(first)))
    straight = load_file(tmp_path / "a" / "checkpoints" / "step_00000006" / "trainable.safetensors")
    again = load_file(tmp_path / "b" / "checkpoints" / "step_00000006" / "trainable.safetensors")
    assert resumed.step == 6 and all(torch.equal(straight[k], again[k]) for k in straight)


def test_auto_max_tokens_is_resolved_once_and_resumed_as_saved(prepared, tmp_path, capsys):
    train(config(prepared, tmp_path / "run", max_steps=3, val_every=0, save_every=3))  # max_tokens 256
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003")[ckpt.CONFIG]
    assert saved["max_tokens"] == 256
    # resumed with auto: the checkpoint's budget, not this machine's choice (4096 on a CPU), which would be refused
    resumed = train(config(prepared, tmp_path / "run", max_steps=6, val_every=0, save_every=3, max_tokens="auto"))
    assert resumed.step == 6 and "max_tokens auto: 256, as in the checkpoint resumed" in capsys.readouterr().out
    fresh = train(config(prepared, tmp_path / "fresh", max_steps=1, val_every=0, save_every=1, max_tokens="auto"))
    assert fresh.step == 1 and "max_tokens auto: 4096, the fish_speech default (no GPU" in capsys.readouterr().out
    assert ckpt.load_checkpoint(tmp_path / "fresh" / "checkpoints" / "step_00000001")[ckpt.CONFIG]["max_tokens"] == 4096


@pytest.mark.slow
def test_compiled_steps_train_and_save_the_plain_model(prepared, tmp_path):
    result = train(config(prepared, tmp_path / "run", max_steps=2, val_every=0, compile=True))
    state = torch.load(result.final_model / "model.pth", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state)  # saved unwrapped, loadable upstream


@pytest.mark.parametrize(("final_weights", "expected_step"), [("best", 4), ("last", 6)])
def test_the_final_model_holds_the_best_or_the_last_weights(
    prepared, tmp_path, monkeypatch, final_weights, expected_step
):
    import tts_lib.training.train as engine
    from tts_lib.models.fish_speech.checkpoint import load_state_dict_file
    from tts_lib.training.checkpoints import load_checkpoint

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


def test_best_weights_are_kept_apart_and_only_the_latest_checkpoints_are_resumable(prepared, tmp_path, monkeypatch):
    import tts_lib.training.train as engine

    scripted = iter([1.0, 0.5, 0.9])  # validations at steps 2, 4, 6: step 4 is the best

    def fake_evaluate(*args, **kwargs):
        value = next(scripted)
        return {"val_loss": value, "val_slow_loss": 0.0, "val_codebook_loss": value, "val_top1": 0.0, "val_top5": 0.0}

    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    written = []
    real_save = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda run_dir, step, payload: written.append(step) or real_save(
        run_dir, step, payload))  # fmt: skip
    run = tmp_path / "run"
    result = train(config(prepared, run, max_steps=6, val_every=2, save_every=3, keep_last=1))
    # An improving validation writes the best weights only, no resumable state; save_every writes that,
    # and only the newest keep_last step folders stay.
    assert written == [3, 6]
    assert [p.name for p in ckpt.complete_step_folders(run)] == ["step_00000006"]
    assert ckpt.best_info(run) == {"step": 4, "metric": "val_codebook_loss", "value": 0.5}
    best = ckpt.load_best(run)
    last = ckpt.load_checkpoint(run / "checkpoints" / "step_00000006")
    assert best.keys() == last[ckpt.MODEL].keys()  # the trainable weights, nothing else
    assert not all(torch.equal(best[k], last[ckpt.EMA]["shadow"][k]) for k in best)  # step 4's, not step 6's
    final = torch.load(result.final_model / "model.pth", weights_only=True)
    assert all(torch.equal(final[k], best[k]) for k in best)  # the final model holds the best weights


@pytest.mark.slow
def test_resume_is_exact_with_dropout(prepared, tmp_path):
    adapter = AdapterConfig(lora_dropout=0.3)  # dropout draws from torch's generator every step
    straight = train(config(prepared, tmp_path / "a", max_steps=6, adapter=adapter))
    middle = tmp_path / "a" / "checkpoints" / "step_00000003"
    resumed = train(config(prepared, tmp_path / "b", max_steps=6, adapter=adapter, resume_from=str(middle)))
    a = load_file(str(straight.final_model / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_model / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def batches_of(prepared, groups: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    family = load_family(prepared[0])
    samples = load_samples(family, [i for i in read_manifest(prepared[1]) if i.split == "train"])
    return [family.collate([samples[i] for i in group]) for group in groups]


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(prepared):
    family = load_family(prepared[0])
    lengths = train_lengths(prepared)
    short = min(range(len(lengths)), key=lengths.__getitem__)
    rest = [i for i in range(len(lengths)) if i != short][:4]  # about ten times the tokens of `short`
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def gradients(groups: list[list[int]]) -> tuple[float, dict[str, torch.Tensor]]:
        model = family.load_model().train()
        loss, _ = backward_update(family, TrainingLoss(family, model), model, batches_of(prepared, groups), Dist(),
                                  nullcontext, scaler)  # fmt: skip
        return loss, {n: p.grad for n, p in model.named_parameters()}

    loss_two, two = gradients([[short], rest])
    loss_one, one = gradients([[short, *rest]])
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7)


def test_overflow_skip_decision():
    scaler = torch.amp.GradScaler("cpu", init_scale=MIN_LOSS_SCALE)
    assert is_overflow_skip(1.5, scaler)  # fp16 overflow at a usable scale: harmless
    assert not is_overflow_skip(float("nan"), scaler)  # a non-finite loss always counts
    collapsed = torch.amp.GradScaler("cpu", init_scale=MIN_LOSS_SCALE / 2)
    assert not is_overflow_skip(1.5, collapsed)  # overflowing even below the floor: diverging
    assert not is_overflow_skip(1.5, torch.amp.GradScaler("cpu", enabled=False))  # bf16/fp32: no overflow skips


def inject_inf_gradients(monkeypatch, updates: int) -> None:
    """The backward of the first `updates` training micro-batches starts from inf gradients."""
    import tts_lib.training.train as engine

    real = engine.load_family
    seen = {"backward": 0}

    def poisoned(folder):
        family = real(folder)
        original = family.loss_parts

        def loss_parts(model, batch):
            parts = original(model, batch)
            if parts.sums["codebook"].requires_grad and seen["backward"] < updates:
                seen["backward"] += 1
                parts.sums["codebook"].register_hook(lambda g: torch.full_like(g, float("inf")))
            return parts

        family.loss_parts = loss_parts
        return family

    monkeypatch.setattr(engine, "load_family", poisoned)


def test_fp16_overflows_are_skipped_without_stopping_the_run(prepared, tmp_path, monkeypatch, capsys):
    inject_inf_gradients(monkeypatch, updates=8)  # more than max_bad_steps in a row
    result = train(config(prepared, tmp_path / "run", max_steps=3, val_every=0, precision="fp16"))
    assert result.step == 3
    out = capsys.readouterr().out
    assert "fp16 autocast" in out and out.count("fp16 overflow: update skipped") == 8
    assert "non-finite" not in out
    scale = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))[ckpt.SCALER]["scale"]
    assert scale == 2.0**16 / 2**8  # halved at each overflow, from GradScaler's initial 65536


def test_fp16_scale_collapsing_below_the_floor_stops_the_run(prepared, tmp_path, monkeypatch, capsys):
    inject_inf_gradients(monkeypatch, updates=40)  # the run must stop well before these run out
    with pytest.raises(RuntimeError, match="5 non-finite updates in a row and the fp16 loss scale fell below 1"):
        train(config(prepared, tmp_path / "run", max_steps=3, val_every=0, precision="fp16"))
    out = capsys.readouterr().out
    assert out.count("fp16 overflow: update skipped") == 16  # 65536 down to 1, then each skip counts
    assert out.count("skipped a non-finite update") == 5


def test_the_loop_knows_no_loss_names_the_family_decides_them_and_what_best_means(prepared, tmp_path, monkeypatch):
    """A family with other component names and another selection metric: the loop normalises each component by
    its own count, reports val_<name>_loss for each, and keeps the best weights by the family's metric."""
    import tts_lib.training.train as engine
    from tts_lib.models import LossParts

    fish = load_family(prepared[0])
    renamed = {"slow": "text_and_frames", "codebook": "residual"}

    class Renamed:  # the Fish family under other names: what a second family looks like to the loop
        def __init__(self, inner):
            self.inner = inner
            self.selection_metric = "val_text_and_frames_loss"

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def loss_parts(self, model, batch):
            p = self.inner.loss_parts(model, batch)
            return LossParts({renamed[k]: v for k, v in p.sums.items()}, {renamed[k]: v for k, v in p.counts.items()})

        def supervised_counts(self, model, batch):
            return {renamed[k]: v for k, v in self.inner.supervised_counts(model, batch).items()}

    monkeypatch.setattr(engine, "load_family", lambda folder: Renamed(fish))
    run = tmp_path / "renamed"
    train(config(prepared, run, max_steps=4, val_every=2, save_every=2))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in rows if "val_loss" in r]
    assert validated and all({"val_text_and_frames_loss", "val_residual_loss"} <= set(r) for r in validated)
    assert all("val_codebook_loss" not in r for r in rows)
    best = min(validated, key=lambda r: r["val_text_and_frames_loss"])
    assert ckpt.best_info(run)["step"] == best["step"]
    assert ckpt.best_info(run)["metric"] == "val_text_and_frames_loss"
