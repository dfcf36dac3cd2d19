"""One source for memory figures: launchable.yaml, setup.sh (through launchable), the README and docs/benchmarks.md
agree with tts_lib/training/memory_needs.json, which agrees with what the memory plan traces today (slow)."""

import math
from pathlib import Path

import pytest
import yaml

from tts_lib.models import FAMILIES, default_max_tokens, reference_model
from tts_lib.training import memory_needs
from tts_lib.versions.cost import GPU_TABLE

ROOT = Path(__file__).resolve().parents[2]
FIX = "run python benchmarks/memory_table.py --write and copy the figures where they are not generated"


def test_launchable_needs_and_smallest_gpus_come_from_the_plan():
    modes = yaml.safe_load((ROOT / "launchable.yaml").read_text())["compute"]["modes"]
    for mode in memory_needs.MODES:
        need = memory_needs.need_gib(mode)
        assert modes[mode]["vram_need_gb"] == math.ceil(need), (mode, FIX)
        assert modes[mode]["min_gpu"] == memory_needs.min_gpu(mode, GPU_TABLE), (mode, FIX)
        smallest = memory_needs.min_gpu(mode, GPU_TABLE, checkpointing=True)
        assert modes[mode]["min_gpu_gradient_checkpointing"] == smallest, (mode, FIX)
        for key in ("min_gpu", "recommended_gpu"):  # GB on the sheet, GiB in the plan
            assert GPU_TABLE[modes[mode][key]].memory_gb * memory_needs.GIB_PER_GB >= need, (mode, key)


def test_the_smallest_gpu_holds_the_need_and_the_next_smaller_does_not():
    for mode in memory_needs.MODES:
        need = memory_needs.need_gib(mode)
        chosen = GPU_TABLE[memory_needs.min_gpu(mode, GPU_TABLE)]
        assert chosen.memory_gb * memory_needs.GIB_PER_GB >= need
        smaller = [g for g in GPU_TABLE.values() if g.memory_gb < chosen.memory_gb]
        assert all(g.memory_gb * memory_needs.GIB_PER_GB < need for g in smaller), mode


def test_the_generated_tables_are_current():
    readme = (ROOT / "README.md").read_text()
    assert memory_needs.readme_block(GPU_TABLE) in readme, f"README.md: {FIX}"
    assert memory_needs.benchmarks_block() in (ROOT / "docs" / "benchmarks.md").read_text(), f"docs: {FIX}"


def test_every_registered_family_has_plans_at_its_default_max_tokens():
    assert memory_needs.families() == list(FAMILIES)
    for family in FAMILIES:
        assert memory_needs.peak_gib("quick_lora", family=family) > 0
        assert memory_needs.model_title(family) == reference_model(family).title


@pytest.mark.parametrize("family", list(FAMILIES))
def test_needs_grow_with_max_tokens_and_fall_with_checkpointing(family):
    def peak(mode: str, tokens: int | None = None, checkpointing: bool = False) -> float:
        return memory_needs.peak_gib(mode, tokens, checkpointing, family)

    for mode in ("quick_lora", "full"):
        peaks = [peak(mode, n) for n in (1024, 2048, 4096, 8192)]
        assert peaks == sorted(peaks) and peaks[0] < peaks[-1], mode
        assert peak(mode, checkpointing=True) < peak(mode)
    assert peak("two_phase") == max(peak(m) for m in ("full", "quick_lora"))


def test_a_missing_block_is_named():
    with pytest.raises(ValueError, match="README.md has no generated block"):
        memory_needs.replace_block("text", "b", memory_needs.README_BEGIN, memory_needs.README_END, "README.md")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["quick_lora", "full"])
def test_the_stored_plans_are_what_the_plan_traces_today(mode, family):
    from tts_lib.models import reference_shape
    from tts_lib.training.memory_plan import plan_memory

    traced = plan_memory(mode, default_max_tokens(family), shape=reference_shape(family)).peak_gib
    assert traced == pytest.approx(memory_needs.peak_gib(mode, family=family), abs=0.01), FIX
