"""The environment check (GPU, memory, disk, versions, warnings) and base-model name resolution."""

import types
from pathlib import Path

import pytest
import torch

from tts_lib import env_check
from tts_lib.env_check import check_environment, format_environment, resolve_base_model


def fake_gpu(monkeypatch, name: str, gib: float, bf16: bool = True) -> None:
    props = types.SimpleNamespace(name=name, total_memory=int(gib * 2**30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)


def test_reports_the_machine(tmp_path):
    env = check_environment("quick_lora", "tiny-demo", path=tmp_path)
    for key in ("gpu", "vram_gb", "cpu", "cpu_cores", "ram_gb", "disk_free_gb", "torch", "cuda", "tts_lib", "bf16"):
        assert key in env, key
    assert env["cpu_cores"] >= 1 and env["disk_free_gb"] > 0 and env["torch"] == torch.__version__
    text = format_environment(env)
    assert "CPU:" in text and "Disk:" in text and f"torch {torch.__version__}" in text and "an estimate" in text


def test_tiny_demo_on_a_cpu_is_fine(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_environment("full", "tiny-demo", path=tmp_path)["warnings"] == []


def test_the_real_model_without_a_gpu_warns(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = check_environment("quick_lora", "openaudio-s1-mini", path=tmp_path)
    assert any("no GPU" in w for w in env["warnings"])
    assert "WARNING: no GPU" in format_environment(env)


def test_too_little_vram_for_the_mode_warns(monkeypatch, tmp_path):
    fake_gpu(monkeypatch, "NVIDIA L4", 22)
    assert check_environment("quick_lora", "openaudio-s1-mini", path=tmp_path)["warnings"] == []
    env = check_environment("full", "openaudio-s1-mini", path=tmp_path)
    assert env["gpu"] == "NVIDIA L4" and env["vram_gb"] == pytest.approx(22)
    [warning] = env["warnings"]
    assert "22 GiB" in warning and f"{env_check.VRAM_NEEDS_GB['full']:.0f} GiB" in warning and "estimate" in warning
    # the table is a parameter: measured numbers replace the estimates
    assert check_environment("full", "openaudio-s1-mini", path=tmp_path, needs_gb={"full": 20})["warnings"] == []


def test_no_bf16_warns(monkeypatch, tmp_path):
    fake_gpu(monkeypatch, "Tesla V100", 32, bf16=False)
    env = check_environment("quick_lora", "openaudio-s1-mini", path=tmp_path)
    assert env["bf16"] is False and any("fp16" in w for w in env["warnings"])


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="quick_lora"):
        check_environment("lora", "tiny-demo", path=tmp_path)


def test_tiny_demo_is_written_once(tmp_path):
    folder = resolve_base_model("tiny-demo", tmp_path / "project")
    assert folder == tmp_path / "project" / "tiny-demo" and (folder / "model.pth").is_file()
    stamp = (folder / "model.pth").stat().st_mtime_ns
    assert resolve_base_model("tiny-demo", tmp_path / "project") == folder
    assert (folder / "model.pth").stat().st_mtime_ns == stamp


def test_s1_mini_missing_says_to_run_setup(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="HF_TOKEN.*setup.sh"):
        resolve_base_model("openaudio-s1-mini", tmp_path)
    (tmp_path / env_check.S1_MINI_FOLDER).mkdir(parents=True)
    (tmp_path / env_check.S1_MINI_FOLDER / "config.json").write_text("{}")
    assert resolve_base_model("openaudio-s1-mini", tmp_path) == Path(env_check.S1_MINI_FOLDER)  # relative to cwd


def test_fish_speech_1_5_is_not_supported_yet(tmp_path):
    with pytest.raises(ValueError, match="not supported yet"):
        resolve_base_model("fish-speech-1.5", tmp_path)


def test_a_folder_path_must_be_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_base_model(str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert resolve_base_model(str(tmp_path / "ckpt"), tmp_path) == tmp_path / "ckpt"
