from __future__ import annotations

import pytest
import torch
from torch import nn

from tts_lib.training.ema import EMA, decay_at


def tiny(seed: int = 0, frozen: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    if frozen:
        model[0].requires_grad_(False)
    return model


def test_tracks_only_trainable_parameters_in_fp32():
    model = tiny().to(torch.bfloat16)
    ema = EMA(model)
    assert set(ema.shadow) == {"2.weight", "2.bias"}
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())


def test_update_follows_formula_with_and_without_warmup():
    model = tiny()
    ema = EMA(model, decay=0.9, warmup=False)
    start = model[2].weight.detach().clone()
    with torch.no_grad():
        model[2].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["2.weight"], 0.9 * start + 0.1 * (start + 1.0))

    warm = EMA(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)
    warm.update(model)
    assert warm.current_decay() == pytest.approx(2 / 11)
    assert decay_at(10**6, 0.999) == 0.999


def test_swap_into_restores_live_weights_even_on_error():
    model = tiny()
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model[2].weight.add_(2.0)
    ema.update(model)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    averages = {k: v.clone() for k, v in ema.shadow.items()}
    with ema.swap_into(model):
        assert torch.equal(model[2].weight, averages["2.weight"])
        assert not torch.equal(model[2].weight, live["2.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k])
    assert all(torch.equal(ema.shadow[k], v) for k, v in averages.items())  # the averages are back too, bit for bit
    with pytest.raises(RuntimeError), ema.swap_into(model):
        raise RuntimeError("validation failed")
    assert torch.equal(model[2].weight, live["2.weight"])
    assert all(torch.equal(ema.shadow[k], v) for k, v in averages.items())


def test_an_error_halfway_into_the_swap_undoes_only_what_was_swapped(monkeypatch):
    model = tiny()
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    averages = {k: v.clone() for k, v in ema.shadow.items()}
    calls, exchange = [], EMA._exchange

    def failing_second(a, b):  # the first weight is exchanged, the second fails
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        exchange(a, b)

    monkeypatch.setattr(EMA, "_exchange", staticmethod(failing_second))
    with pytest.raises(RuntimeError, match="out of memory"), ema.swap_into(model):
        pass
    assert len(calls) == 3  # two on the way in (the second failed), the first undone
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(ema.shadow[k], v) for k, v in averages.items())


def test_copy_to_writes_averages():
    model = tiny()
    ema = EMA(model)
    ema.shadow["2.bias"].fill_(3.0)
    ema.copy_to(model)
    assert torch.equal(model[2].bias, torch.full((2,), 3.0))


def test_state_dict_round_trip_and_refusal():
    model = tiny()
    ema = EMA(model, decay=0.99)
    ema.update(model)
    ema.update(model)
    other = EMA(tiny(seed=1), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])

    unfrozen = EMA(tiny(frozen=False))
    with pytest.raises(ValueError, match=r"unexpected 0\.bias, 0\.weight"):
        ema.load_state_dict(unfrozen.state_dict())
    wider = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    wider[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"2\.weight \(3, 8\) vs \(2, 8\)"):
        ema.load_state_dict(EMA(wider).state_dict())


def test_from_model_or_state_logs_when_checkpoint_has_no_ema():
    model = tiny()
    lines: list[str] = []
    ema = EMA.from_model_or_state(model, None, decay=0.99, log=lines.append)
    assert len(lines) == 1 and "current" in lines[0]
    assert torch.equal(ema.shadow["2.weight"], model[2].weight)

    ema.update(model)
    lines.clear()
    resumed = EMA.from_model_or_state(tiny(seed=3), ema.state_dict(), decay=0.99, log=lines.append)
    assert lines == [] and resumed.num_updates == 1
    assert torch.equal(resumed.shadow["2.weight"], ema.shadow["2.weight"])
