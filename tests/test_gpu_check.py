"""gpu-check --smoke: every code path of the GPU acceptance check, at tiny shapes on the CPU, so it never rots."""

import json

import pytest

from tts_lib.cli import main


@pytest.mark.slow  # two training steps per mode, the codec, generation, a merge and two torchrun processes
def test_smoke_runs_every_check_and_ends_with_one_json_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TTS_LIB_CACHE", str(tmp_path / "cache"))
    assert main(["gpu-check", "--smoke"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("gpu_check=")
    r = json.loads(out[-1].removeprefix("gpu_check="))
    assert r["smoke"] is True and r["precision"] == "fp32"
    for mode in ("quick_lora", "full"):
        t = r[f"train_{mode}"]
        assert t["tokens_per_s"] > 0 and t["planned_peak_gib"] > 0 and t["measured_peak_gib"] is None
    assert r["codec"]["seconds_per_hour_of_audio"] > 0 and r["generation"]["frames"] > 0
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
