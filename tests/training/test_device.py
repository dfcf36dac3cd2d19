"""The training device rule and `max_tokens: auto`: the largest budget the memory plan fits in the free memory."""

import pytest
import torch

from tts_lib.models import load_family
from tts_lib.training import device
from tts_lib.training.device import pick_device


@pytest.fixture
def tiny(prepared):
    return prepared[0]  # a tiny-demo folder (random weights)


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_auto_max_tokens_is_the_default_on_a_cpu(tiny):
    family = load_family(tiny)
    tokens, why = device.auto_max_tokens(family, True, torch.device("cpu"), False, None)
    assert tokens == 4096 and "no GPU" in why  # the Fish Speech default


def test_an_unset_max_tokens_is_the_familys_default(tiny, tmp_path):
    from tts_lib.models import make_tiny_checkpoint

    vox = load_family(make_tiny_checkpoint(tmp_path / "vox", family="voxcpm"))
    for family, default in ((load_family(tiny), 4096), (vox, 1024)):
        tokens, why = device.resolve_max_tokens(None, family, True, torch.device("cpu"), False, None)
        assert tokens == default and f"the {family.name} default" in why
        assert device.auto_max_tokens(family, True, torch.device("cpu"), False, None)[0] == default
    assert device.resolve_max_tokens(512, vox, True, torch.device("cpu"), False, None)[0] == 512


@pytest.mark.parametrize("adapter", [True, False])
def test_auto_max_tokens_is_the_largest_budget_the_plan_fits_in_the_free_memory(tiny, monkeypatch, adapter):
    from tts_lib.training.memory_plan import TOKEN_STEP, plan_memory

    family = load_family(tiny)
    mode = "quick_lora" if adapter else "full"
    peak = plan_memory(mode, 4 * TOKEN_STEP, False, "bf16", family.planning_shape()).peak_gib
    # Free memory that holds 4 steps' plan with the margin kept back, and not 5 steps' (the plan grows with tokens)
    assert plan_memory(mode, 5 * TOKEN_STEP, False, "bf16", family.planning_shape()).peak_gib > peak
    free = peak / (1 - device.AUTO_MARGIN) * 1.0001
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free * 2**30), int(80 * 2**30)))
    tokens, why = device.auto_max_tokens(family, adapter, torch.device("cuda"), False, torch.bfloat16)
    assert tokens == 4 * TOKEN_STEP, why
    assert f"{free:.1f} GiB free" in why and mode in why
    # plenty of memory: capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(10**6 * 2**30), int(10**6 * 2**30)))
    tokens, why = device.auto_max_tokens(family, adapter, torch.device("cuda"), False, torch.bfloat16)
    assert tokens == device.AUTO_MAX_TOKENS_CAP and "the cap" in why


def test_auto_max_tokens_refuses_a_gpu_too_small_for_the_smallest_budget(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**30))
    with pytest.raises(ValueError, match="needs .* GiB at max_tokens 256"):
        device.auto_max_tokens(load_family(tiny), True, torch.device("cuda"), False, torch.bfloat16)
