"""gpu-check --smoke: every code path of the GPU acceptance check, at tiny shapes on the CPU, so it never rots."""

import json

import pytest

from tts_lib.cli import main


@pytest.mark.slow  # two training steps per mode, the codec, generation, a merge and two torchrun processes
@pytest.mark.parametrize("family", ["fish_speech", "voxcpm"])
def test_smoke_runs_every_check_and_ends_with_one_json_line(capsys, monkeypatch, tmp_path, family):
    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))
    assert main(["gpu-check", "--smoke", "--family", family]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("gpu_check=")
    r = json.loads(out[-1].removeprefix("gpu_check="))
    assert r["smoke"] is True and r["precision"] == "fp32" and r["family"] == family
    for mode in ("quick_lora", "full"):
        t = r[f"train_{mode}"]
        assert t["tokens_per_s"] > 0 and t["planned_peak_gib"] > 0 and t["measured_peak_gib"] is None
    speeds = r["family_speeds"]
    if family == "fish_speech":
        assert speeds["codec"]["seconds_per_hour_of_audio"] > 0 and speeds["generation"]["frames"] > 0
    else:  # VoxCPM2's audio VAE, and its KV-cached generation
        assert speeds["vae"]["seconds_per_hour_of_audio"] > 0 and speeds["generation"]["patches_per_s"] > 0
    merge = r["merge_bf16"]
    assert merge["dtype"] == "bfloat16" and merge["adapter_effect"] > merge["max_abs_diff"]
    assert r["two_process"] == {"processes": 2, "steps": 2, "seconds": pytest.approx(r["two_process"]["seconds"])}
    assert any("SMOKE" in line for line in out)


def test_without_a_gpu_it_says_to_use_smoke(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="gpu-check --smoke"):
        from tts_lib.gpu_check import run_checks

        run_checks(smoke=False, max_tokens=4096)


def test_tokens_per_second_counts_supervised_tokens_the_unit_of_the_flop_count(tmp_path):
    """MFU = FLOPs per supervised token x supervised tokens/s: counting positions instead would understate it
    by the codebooks per frame (11x for S1-mini)."""
    import torch

    from tts_lib.gpu_check import training_step
    from tts_lib.models import load_family, make_tiny_checkpoint

    shape = load_family(make_tiny_checkpoint(tmp_path / "tiny")).planning_shape()
    result = training_step(shape, "full", 256, "fp32", torch.device("cpu"), 1)
    positions = shape.batch(256)["labels"].numel()
    assert result["tokens_per_s"] * result["seconds_per_step"] == pytest.approx(positions * shape.supervised_per_frame)
