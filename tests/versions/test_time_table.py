"""The README's and launchable.yaml's time and cost figures: generated from counted FLOPs (versions/time_table.py),
current, with the steps finetune recommends and the time the pre-training estimator computes from FLOPs."""

from pathlib import Path

import pytest
import yaml

from tts_lib.models import default_max_tokens
from tts_lib.training import memory_needs
from tts_lib.training.flops import ASSUMED_MFU
from tts_lib.versions import finetune, time_table
from tts_lib.versions.cost import GPU_TABLE

ROOT = Path(__file__).resolve().parents[2]
FIX = "run python benchmarks/memory_table.py --tables-only"


def test_the_generated_blocks_are_current():
    assert time_table.readme_block() in (ROOT / "README.md").read_text(), f"README.md: {FIX}"
    assert time_table.yaml_block() in (ROOT / "launchable.yaml").read_text(), f"launchable.yaml: {FIX}"


def test_the_assumed_steps_are_what_finetune_recommends():
    assert time_table.EPOCHS == finetune.EPOCHS and time_table.MIN_STEPS == finetune.MIN_STEPS["fresh"]
    ((kind, steps),) = time_table.phases("quick_lora")
    frames = 10 * 3600 * 44100 / 2048  # 10 h of S1-mini codec frames
    assert kind == "lora" and steps == pytest.approx(20 * frames / 4096, abs=1)
    assert [k for k, _ in time_table.phases("two_phase")] == ["full", "lora"]


def test_launchable_states_the_assumptions_it_was_computed_with():
    estimate = yaml.safe_load((ROOT / "launchable.yaml").read_text())["estimate"]
    a = estimate["assumptions"]
    assert a["mfu"] == ASSUMED_MFU and a["max_tokens"] == default_max_tokens(time_table.DEFAULT_FAMILY)
    assert a["gflop_per_token"] == {"full": time_table.gflop_per_token("full"),
                                    "lora": time_table.gflop_per_token("lora")}  # fmt: skip
    assert set(estimate["modes"]) == set(memory_needs.MODES)
    for mode, figures in estimate["modes"].items():
        shown = list(figures["per_gpu"])
        assert shown and all(GPU_TABLE[g].memory_gb * memory_needs.GIB_PER_GB >= memory_needs.need_gib(mode)
                             for g in shown)  # fmt: skip
        minutes = [figures["per_gpu"][g]["minutes"] for g in shown]
        tflops = [GPU_TABLE[g].bf16_tflops for g in shown]
        for i in range(len(shown)):  # twice the TFLOPs, half the time (minutes rounded to 0.1)
            ratio = tflops[0] / tflops[i]
            assert minutes[i] == pytest.approx(minutes[0] * ratio, abs=0.05 + 0.05 * ratio)


def test_a_faster_gpu_is_shown_faster_and_the_lora_phase_cheaper_per_token():
    assert time_table.gflop_per_token("lora") < time_table.gflop_per_token("full")
    l4, h100 = GPU_TABLE["L4"], GPU_TABLE["H100-80GB"]
    assert time_table.hours_on(h100, "quick_lora") < time_table.hours_on(l4, "quick_lora")


@pytest.mark.slow
def test_the_table_is_what_the_estimator_computes_from_flops_counted_today():
    """The same hours as tts_lib.training.flops.estimate_hours, which counts S1-mini's FLOPs now (not the stored
    count)."""
    from tts_lib.training.flops import estimate_hours

    gpu = GPU_TABLE["A100-80GB"]
    ((_, steps),) = time_table.phases("full")
    tokens = steps * default_max_tokens(time_table.DEFAULT_FAMILY) * time_table.shape().supervised_per_frame
    assert time_table.hours_on(gpu, "full") == pytest.approx(estimate_hours(tokens, "full", gpu.bf16_tflops), rel=1e-3)
