from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from tts_lib.common import fileio
from tts_lib.data.sampler import LengthBucketedBatchSampler
from tts_lib.training import checkpoints as ck
from tts_lib.training.ema import EMA


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    return model


def train_setup(model: nn.Module):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    return opt, sched


def train_steps(model, opt, sched, ema, n: int = 3) -> None:
    for _ in range(n):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def full_payload(model, opt, sched, ema, sampler) -> dict:
    return {
        ck.MODEL: ck.trainable_state(model),
        ck.OPTIMIZER: opt.state_dict(),
        ck.SCHEDULER: sched.state_dict(),
        ck.SCALER: torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        ck.EMA: ema.state_dict(),
        ck.RNG: ck.rng_state(),
        ck.SAMPLER: sampler.state_dict(position=1),
        ck.EPOCH: 0,
        ck.BEST_METRIC: 1.25,
        ck.EARLY_STOP: {"bad_evals": 1},
        ck.CONFIG: {"lora": {"r": 8}, "lr": 1e-2},
        ck.DATA_FINGERPRINT: "abc",
    }


def test_full_round_trip(tmp_path):
    model = tiny()
    opt, sched = train_setup(model)
    ema = EMA(model)
    train_steps(model, opt, sched, ema)
    sampler = LengthBucketedBatchSampler([10, 20, 30, 40], max_tokens=80, seed=1)
    folder = ck.save_checkpoint(tmp_path, 3, full_payload(model, opt, sched, ema, sampler))
    after_save = draws()

    assert folder == tmp_path / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in folder.iterdir()) == ["state.pt", "trainable.safetensors"]
    assert ck.latest_checkpoint(tmp_path) == folder

    state = ck.load_checkpoint(folder)  # state.pt goes through torch.load(weights_only=True)
    assert state[ck.STEP] == 3 and state[ck.FORMAT_VERSION] == ck.CURRENT_FORMAT_VERSION
    model2 = tiny()  # the frozen base comes from the base model, not the checkpoint
    with torch.no_grad():
        model2[2].weight.zero_()
    ck.load_trainable_state(model2, state[ck.MODEL])
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), n
    opt2, sched2 = train_setup(model2)
    opt2.load_state_dict(state[ck.OPTIMIZER])
    sched2.load_state_dict(state[ck.SCHEDULER])
    ema2 = EMA.from_model_or_state(model2, state[ck.EMA], decay=0.999)
    sampler2 = LengthBucketedBatchSampler([10, 20, 30, 40], max_tokens=80, seed=1)
    sampler2.load_state_dict(state[ck.SAMPLER])
    assert sampler2.position == 1
    assert sched2.state_dict() == sched.state_dict()
    assert ema2.num_updates == ema.num_updates
    for k in ema.shadow:
        assert torch.equal(ema2.shadow[k], ema.shadow[k])
    saved_opt, now_opt = opt.state_dict(), opt2.state_dict()
    assert saved_opt["param_groups"] == now_opt["param_groups"]
    for i, s in saved_opt["state"].items():
        for key, value in s.items():
            assert torch.equal(value, now_opt["state"][i][key])

    ck.set_rng_state(state[ck.RNG])
    assert draws() == after_save
    # Training continues identically from both copies.
    ck.set_rng_state(state[ck.RNG])
    train_steps(model, opt, sched, ema, n=2)
    ck.set_rng_state(state[ck.RNG])
    train_steps(model2, opt2, sched2, ema2, n=2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for k in ema.shadow:
        assert torch.equal(ema2.shadow[k], ema.shadow[k])


def test_rng_state_bit_exact_with_gauss_cache():
    random.gauss(0, 1)  # leaves a cached second Gaussian in python's generator
    np.random.standard_normal()  # and in numpy's
    saved = ck.rng_state()
    first = (random.gauss(0, 1), np.random.standard_normal(), draws())
    ck.set_rng_state(saved)
    assert (random.gauss(0, 1), np.random.standard_normal(), draws()) == first


def test_load_trainable_state_is_strict():
    model = tiny()
    state = ck.trainable_state(model)
    assert set(state) == {"2.weight", "2.bias"}
    with pytest.raises(ValueError, match=r"missing from checkpoint: 2\.bias"):
        ck.load_trainable_state(model, {"2.weight": state["2.weight"]})
    with pytest.raises(ValueError, match=r"not trainable in the model: extra"):
        ck.load_trainable_state(model, {**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"2\.bias saved \(3,\), model \(2,\)"):
        ck.load_trainable_state(model, {**state, "2.bias": torch.zeros(3)})


def save_simple(run_dir, step: int) -> None:
    ck.save_checkpoint(run_dir, step, {ck.MODEL: {"w": torch.full((2,), float(step))}})


def test_failed_save_keeps_previous_latest(tmp_path, monkeypatch):
    save_simple(tmp_path, 1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_simple(tmp_path, 2)
    monkeypatch.undo()

    parent = tmp_path / "checkpoints"
    assert json.loads((parent / "latest.json").read_text())["folder"] == "step_00000001"
    assert sorted(p.name for p in parent.iterdir()) == ["latest.json", "step_00000001"]
    assert ck.latest_checkpoint(tmp_path) == parent / "step_00000001"
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path))[ck.MODEL]["w"].tolist() == [1.0, 1.0]


def test_latest_falls_back_to_highest_complete_folder(tmp_path):
    save_simple(tmp_path, 1)
    save_simple(tmp_path, 20)
    parent = tmp_path / "checkpoints"
    (parent / "latest.json").unlink()
    (parent / ".tmp-step_00000030.x").mkdir()  # a killed save
    (parent / "step_00000040").mkdir()  # not complete: ignored
    assert ck.latest_checkpoint(tmp_path) == parent / "step_00000020"
    assert ck.latest_checkpoint(tmp_path / "nothing") is None


def test_resave_same_step_replaces_folder(tmp_path):
    save_simple(tmp_path, 5)
    ck.save_checkpoint(tmp_path, 5, {ck.MODEL: {"w": torch.zeros(2)}})
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path))[ck.MODEL]["w"].tolist() == [0.0, 0.0]
    assert [p.name for p in ck.complete_step_folders(tmp_path)] == ["step_00000005"]


def test_keep_last_keeps_the_newest_and_removes_leftovers(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save_simple(tmp_path, step)
    (tmp_path / "checkpoints" / ".tmp-step_00000006.abc").mkdir()  # a killed save
    ck.save_checkpoint(tmp_path, 2, {ck.MODEL: {"w": torch.zeros(2)}})  # resumed from 2: latest, though not newest
    removed = ck.keep_last(tmp_path, 2)
    assert sorted(p.name for p in removed) == [".tmp-step_00000006.abc", "step_00000001", "step_00000003"]
    assert [p.name for p in ck.complete_step_folders(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]


def test_best_weights_are_one_weights_only_file_replaced_atomically(tmp_path, monkeypatch):
    assert ck.best_info(tmp_path) is None and ck.load_best(tmp_path) is None
    first = {"w": torch.arange(3, dtype=torch.float32)}
    path = ck.save_best(tmp_path, 4, first, 0.1 + 0.2, "val_codebook_loss")
    assert path == tmp_path / "checkpoints" / "best.safetensors"
    assert ck.best_info(tmp_path) == {"step": 4, "metric": "val_codebook_loss", "value": 0.1 + 0.2}  # every bit
    assert ck.load_best(tmp_path).keys() == {"w"} and torch.equal(ck.load_best(tmp_path)["w"], first["w"])

    def half_written(f):
        f.write(b"partial")
        raise OSError("disk full")

    real_write_with = fileio.atomic_write_with
    monkeypatch.setattr(fileio, "atomic_write_with", lambda path, write: real_write_with(path, half_written))
    with pytest.raises(OSError, match="disk full"):
        ck.save_best(tmp_path, 8, {"w": torch.zeros(3)}, 0.05, "val_codebook_loss")
    monkeypatch.undo()
    assert ck.best_info(tmp_path)["step"] == 4 and torch.equal(ck.load_best(tmp_path)["w"], first["w"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.safetensors"]  # no leftovers


def test_best_weights_after_a_resumed_step_are_dropped(tmp_path):
    ck.save_best(tmp_path, 6, {"w": torch.zeros(2)}, 0.5, "val_codebook_loss")
    assert ck.drop_best_after(tmp_path, 6) is None and ck.best_info(tmp_path)["step"] == 6  # not after: kept
    assert ck.drop_best_after(tmp_path, 3)["step"] == 6
    assert ck.best_info(tmp_path) is None


def test_rng_state_of_each_process(tmp_path):
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(ck.rng_state())
    expected = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected.append(torch.rand(3))
    ck.set_rng_state(states, rank=1)
    assert torch.equal(torch.rand(3), expected[1])
    ck.set_rng_state(states[0])  # one process's state, as older checkpoints hold it
    assert torch.equal(torch.rand(3), expected[0])


def test_unloadable_payload_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"payload\['rng'\]\['x'\] is a ndarray"):
        ck.save_checkpoint(tmp_path, 1, {ck.MODEL: {"w": torch.zeros(1)}, ck.RNG: {"x": np.zeros(2)}})
    assert ck.latest_checkpoint(tmp_path) is None


@dataclass
class Item:
    id: str
    audio: str
    text: str
    split: str | None
    duration: float | None


def test_data_fingerprint():
    items = [Item("a", "/d/a.wav", "hello", "train", 1.2341), Item("b", "/d/b.wav", "bye", "val", None)]
    fp = ck.data_fingerprint(items)
    assert fp == ck.data_fingerprint(list(reversed(items)))
    assert fp == ck.data_fingerprint([Item("a", "/d/a.wav", "hello", "train", 1.23412), items[1]])
    assert fp != ck.data_fingerprint([Item("a", "/d/a.wav", "hello!", "train", 1.2341), items[1]])
    assert fp != ck.data_fingerprint([Item("a", "/d/a.wav", "hello", "val", 1.2341), items[1]])


def test_check_resume_compatible():
    saved = {"lora": {"r": 8, "lora_alpha": 16}, "model": "fish"}
    current = {"lora": {"r": 16, "lora_alpha": 16}}
    assert ck.check_resume_compatible(saved, current, ["lora.r", "lora.lora_alpha", "model"]) == [
        "lora.r: saved 8, now 16",
        "model: saved 'fish', now (not set)",
    ]
