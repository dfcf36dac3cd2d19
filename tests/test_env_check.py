"""The environment check: GPU, memory, disk, versions, and warnings where the machine falls short."""

import types

import pytest
import torch

from tts_lib import env_check
from tts_lib.env_check import check_environment, format_environment
from tts_lib.models import load_family


@pytest.fixture
def tiny(prepared):
    return prepared[0]  # a tiny-demo folder (random weights)


@pytest.fixture
def real(tmp_path):
    folder = tmp_path / "openaudio-s1-mini"  # any checkpoint that is not the random demo
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def fake_gpu(monkeypatch, name: str, gib: float, bf16: bool = True) -> None:
    props = types.SimpleNamespace(name=name, total_memory=int(gib * 2**30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)


def test_reports_the_machine(tmp_path, tiny):
    env = check_environment("quick_lora", tiny, path=tmp_path)
    for key in ("gpu", "vram_gb", "cpu", "cpu_cores", "ram_gb", "disk_free_gb", "torch", "cuda", "tts_lib", "bf16"):
        assert key in env, key
    assert env["cpu_cores"] >= 1 and env["disk_free_gb"] > 0 and env["torch"] == torch.__version__
    text = format_environment(env)
    assert "CPU:" in text and "Disk:" in text and f"torch {torch.__version__}" in text and "memory plan" in text


def test_tiny_demo_on_a_cpu_is_fine(monkeypatch, tmp_path, tiny):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_environment("full", tiny, path=tmp_path)["warnings"] == []


def test_the_real_model_without_a_gpu_warns(monkeypatch, tmp_path, real):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = check_environment("quick_lora", real, path=tmp_path)
    assert any("no GPU" in w for w in env["warnings"])
    assert "WARNING: no GPU" in format_environment(env)


def test_too_little_vram_for_the_mode_warns(monkeypatch, tmp_path, real):
    between = (env_check.VRAM_NEEDS_GB["quick_lora"] + env_check.VRAM_NEEDS_GB["full"]) / 2  # the plan's needs
    fake_gpu(monkeypatch, "NVIDIA A40", between)
    assert check_environment("quick_lora", real, path=tmp_path)["warnings"] == []
    env = check_environment("full", real, path=tmp_path)
    assert env["gpu"] == "NVIDIA A40" and env["vram_gb"] == pytest.approx(between)
    [warning] = env["warnings"]
    assert f"{between:.0f} GiB" in warning and f"{env_check.VRAM_NEEDS_GB['full']:.0f} GiB" in warning
    assert "memory plan" in warning
    # the table is a parameter: measured numbers replace the plan's
    assert check_environment("full", real, path=tmp_path, needs_gb={"full": between - 1})["warnings"] == []


def test_no_bf16_warns(monkeypatch, tmp_path, real):
    fake_gpu(monkeypatch, "Tesla V100", 32, bf16=False)
    env = check_environment("quick_lora", real, path=tmp_path)
    assert env["bf16"] is False and any("fp16" in w for w in env["warnings"])


def test_unknown_mode_is_refused(tmp_path, tiny):
    with pytest.raises(ValueError, match="quick_lora"):
        check_environment("lora", tiny, path=tmp_path)


def test_auto_max_tokens_is_the_default_on_a_cpu(tiny):
    family = load_family(tiny)
    tokens, why = env_check.auto_max_tokens(family, True, torch.device("cpu"), False, None)
    assert tokens == env_check.AUTO_MAX_TOKENS_CPU and "no GPU" in why


@pytest.mark.parametrize("adapter", [True, False])
def test_auto_max_tokens_is_the_largest_budget_the_plan_fits_in_the_free_memory(tiny, monkeypatch, adapter):
    from tts_lib.memory_plan import TOKEN_STEP, plan_memory

    family = load_family(tiny)
    mode = "quick_lora" if adapter else "full"
    peak = plan_memory(mode, 4 * TOKEN_STEP, False, "bf16", family.config).peak_gib
    # Free memory that holds 4 steps' plan with the margin kept back, and not 5 steps' (the plan grows with tokens)
    assert plan_memory(mode, 5 * TOKEN_STEP, False, "bf16", family.config).peak_gib > peak
    free = peak / (1 - env_check.AUTO_MARGIN) * 1.0001
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free * 2**30), int(80 * 2**30)))
    tokens, why = env_check.auto_max_tokens(family, adapter, torch.device("cuda"), False, torch.bfloat16)
    assert tokens == 4 * TOKEN_STEP, why
    assert f"{free:.1f} GiB free" in why and mode in why
    # plenty of memory: capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(10**6 * 2**30), int(10**6 * 2**30)))
    tokens, why = env_check.auto_max_tokens(family, adapter, torch.device("cuda"), False, torch.bfloat16)
    assert tokens == env_check.AUTO_MAX_TOKENS_CAP and "the cap" in why


def test_auto_max_tokens_refuses_a_gpu_too_small_for_the_smallest_budget(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**30))
    with pytest.raises(ValueError, match="needs .* GiB at max_tokens 256"):
        env_check.auto_max_tokens(load_family(tiny), True, torch.device("cuda"), False, torch.bfloat16)
