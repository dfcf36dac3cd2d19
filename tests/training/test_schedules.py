import io
import math

import pytest
import torch

from tts_lib.training.schedules import ScheduleConfig, lr_multiplier, make_scheduler


def values(config: ScheduleConfig, total: int) -> list[float]:
    return [lr_multiplier(config, s, total) for s in range(total + 20)]


def test_warmup_starts_small_and_reaches_one():
    for kind in ("cosine", "constant", "multistep"):
        cfg = ScheduleConfig(kind=kind, warmup_steps=10)
        assert lr_multiplier(cfg, 0, 100) == pytest.approx(1 / 11)
        ramp = [lr_multiplier(cfg, s, 100) for s in range(11)]
        assert all(a < b for a, b in zip(ramp, ramp[1:-1]))
        assert lr_multiplier(cfg, 10, 100) == pytest.approx(1.0)


def test_no_warmup_starts_at_one():
    assert lr_multiplier(ScheduleConfig(warmup_steps=0), 0, 50) == 1.0


def test_cosine_key_steps_and_monotonic_decay():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(cfg, 55, 100) == pytest.approx(0.55)  # halfway through the decay
    assert lr_multiplier(cfg, 100, 100) == pytest.approx(0.1)
    assert lr_multiplier(cfg, 500, 100) == pytest.approx(0.1)  # stays at the floor after the end
    decay = values(cfg, 100)[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_constant():
    cfg = ScheduleConfig(kind="constant", warmup_steps=5)
    assert values(cfg, 30)[5:] == [1.0] * 45


def test_multistep():
    cfg = ScheduleConfig(kind="multistep", warmup_steps=0, milestones=(10, 20), gamma=0.5)
    assert [lr_multiplier(cfg, s, 100) for s in (0, 9, 10, 19, 20, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_bad_configs():
    with pytest.raises(ValueError, match="min_lr_ratio"):
        ScheduleConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="increasing"):
        ScheduleConfig(milestones=(20, 10))


def make_opt() -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    groups = [{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 1e-4}]
    return torch.optim.AdamW(groups)


def train_steps(opt, sched, n: int) -> list[list[float]]:
    seen = []
    for _ in range(n):
        seen.append([g["lr"] for g in opt.param_groups])  # the lr this optimiser step uses
        opt.step()
        sched.step()
    return seen


def test_lambda_lr_steps_per_optimiser_step_and_keeps_group_ratios():
    cfg = ScheduleConfig(warmup_steps=3)
    opt = make_opt()
    sched = make_scheduler(opt, cfg, total_steps=20)
    seen = train_steps(opt, sched, 20)
    for step, (w, b) in enumerate(seen):
        assert w == pytest.approx(1e-3 * lr_multiplier(cfg, step, 20))
        assert b == pytest.approx(w / 10)
    assert seen[0][0] > 0


def test_state_dict_resume_gives_the_same_lrs():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=4)
    opt = make_opt()
    sched = make_scheduler(opt, cfg, total_steps=30)
    train_steps(opt, sched, 10)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    torch.save(saved_sched, io.BytesIO())  # picklable, so it can go in a checkpoint
    expected = train_steps(opt, sched, 15)

    opt2 = make_opt()
    sched2 = make_scheduler(opt2, cfg, total_steps=30)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = train_steps(opt2, sched2, 15)
    assert all(math.isclose(a, b) for ra, rb in zip(expected, resumed) for a, b in zip(ra, rb))
