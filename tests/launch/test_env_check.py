"""The environment check: GPU, memory, disk, versions, and warnings where the machine falls short."""

import types

import pytest
import torch

from tts_lib.launch import env_check
from tts_lib.launch.env_check import check_environment, format_environment


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
    assert "CPU:" in text and "Disk:" in text and f"torch {torch.__version__}" in text


def test_tiny_demo_on_a_cpu_is_fine(monkeypatch, tmp_path, tiny):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_environment("full", tiny, path=tmp_path)["warnings"] == []


def test_the_real_model_without_a_gpu_warns(monkeypatch, tmp_path, real):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = check_environment("quick_lora", real, path=tmp_path)
    assert any("no GPU" in w for w in env["warnings"])
    assert "WARNING: no GPU" in format_environment(env)


def test_too_little_vram_for_the_mode_warns(monkeypatch, tmp_path, real):
    needs = env_check.vram_needs_gb()
    between = (needs["quick_lora"] + needs["full"]) / 2  # the plan's needs
    fake_gpu(monkeypatch, "NVIDIA A40", between)
    assert check_environment("quick_lora", real, path=tmp_path)["warnings"] == []
    env = check_environment("full", real, path=tmp_path)
    assert env["gpu"] == "NVIDIA A40" and env["vram_gb"] == pytest.approx(between)
    [warning] = env["warnings"]
    assert f"{between:.0f} GiB" in warning and f"{needs['full']:.0f} GiB" in warning
    assert "memory plan" in warning
    # the table is a parameter: measured numbers replace the plan's
    assert check_environment("full", real, path=tmp_path, needs_gb={"full": between - 1})["warnings"] == []


def test_the_needs_are_the_base_models_familys(monkeypatch, tmp_path):
    from tts_lib.models import make_tiny_checkpoint

    vox = make_tiny_checkpoint(tmp_path / "voxcpm2", family="voxcpm")
    (vox / "README.md").unlink()  # not the random demo: plan the family's reference model (VoxCPM2)
    fake_gpu(monkeypatch, "NVIDIA L4", 22.5)
    env = check_environment("full", vox, path=tmp_path)
    assert env["vram_needed_gb"] == env_check.vram_needs_gb("voxcpm")["full"] != env_check.vram_needs_gb()["full"]
    assert "VoxCPM2, max_tokens 1024" in env["needs_basis"] and "expect out of memory" in env["warnings"][0]


def test_no_bf16_warns(monkeypatch, tmp_path, real):
    fake_gpu(monkeypatch, "Tesla V100", 32, bf16=False)
    env = check_environment("quick_lora", real, path=tmp_path)
    assert env["bf16"] is False and any("fp16" in w for w in env["warnings"])


def test_unknown_mode_is_refused(tmp_path, tiny):
    with pytest.raises(ValueError, match="quick_lora"):
        check_environment("lora", tiny, path=tmp_path)


def test_the_need_says_where_it_comes_from(tiny, real):
    assert "(the tiny random demo model)" in format_environment(check_environment("quick_lora", base_model=tiny))
    text = format_environment(check_environment("full", base_model=real))
    assert "(memory plan of OpenAudio S1-mini, max_tokens 4096)" in text
