"""What this machine has, and whether it is enough for a mode: used by notebooks/finetune.ipynb.

    from tts_lib.launch.env_check import check_environment, format_environment

    env = check_environment("quick_lora", base_model="checkpoints/openaudio-s1-mini")  # a dict
    print(format_environment(env))  # GPU, VRAM, CPU, RAM, disk, versions, bf16, and any warnings

The VRAM needs (`vram_needs_gb(family)`) come from the memory plan of the base model's family
(`tts_lib.training.memory_needs`: one training step traced at the family's reference shape, bf16, the family's
default max_tokens, 10% of the GPU left free); traced, not measured on a GPU. Pass your own numbers as
`needs_gb` once you have measured them (peak_memory_mb in metrics.jsonl).
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

import tts_lib
from tts_lib.launch.bundle import is_random_demo, shown
from tts_lib.models import default_max_tokens, family_name_of
from tts_lib.training import memory_needs

TINY_NEEDS_GB = 0.5  # the tiny random demo model needs almost none
DISK_NEEDS_GB = 20.0  # base model (about 3.5 GB with the codec), merged copies, checkpoints, package


def vram_needs_gb(family: str = memory_needs.DEFAULT_FAMILY) -> dict[str, float]:
    """GiB of GPU memory each mode needs with the family's reference model at its default max_tokens, by the plan
    (see the docstring); gradient_checkpointing or a smaller max_tokens lowers them."""
    return {mode: memory_needs.need_gib(mode, family=family) for mode in memory_needs.MODES}


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_environment(
    mode: str,
    base_model: str | Path,
    path: str | Path = ".",
    needs_gb: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The machine's GPU, memory, disk and versions, plus `warnings` (sentences) where it falls short
    of what `mode` needs with the checkpoint folder `base_model`. `path` is where outputs go (its disk is checked)."""
    family = family_name_of(base_model) or memory_needs.DEFAULT_FAMILY  # not downloaded yet: the default model's
    needs = vram_needs_gb(family) if needs_gb is None else needs_gb
    if mode not in needs:
        raise ValueError(f"training_mode {mode!r}: expected one of {', '.join(needs)}")
    env: dict[str, Any] = {
        "gpu": None, "vram_gb": None, "cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "ram_gb": _ram_gb(),
        "disk_free_gb": shutil.disk_usage(Path(path).resolve() if Path(path).exists() else ".").free / 2**30,
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "tts_lib": tts_lib.__version__, "bf16": False,
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, vram_gb=props.total_memory / 2**30, bf16=torch.cuda.is_bf16_supported())
    tiny = is_random_demo(base_model)
    need = TINY_NEEDS_GB if tiny else needs[mode]
    env["vram_needed_gb"] = need
    plan = f"memory plan of {memory_needs.model_title(family)}, max_tokens {default_max_tokens(family)}"
    env["needs_basis"] = "the tiny random demo model" if tiny else plan
    warnings = []
    if env["gpu"] is None:
        if not tiny:
            warnings.append(f"no GPU: {mode} on {shown(base_model, Path.cwd())} needs an NVIDIA GPU with about "
                            f"{need:.0f} GiB; "
                            "only the tiny-demo model trains in reasonable time on a CPU")  # fmt: skip
    elif env["vram_gb"] < need:
        warnings.append(
            f"the GPU has {env['vram_gb']:.0f} GiB, {mode} needs about {need:.0f} GiB ({plan}): "
            "expect out of memory; lower max_tokens, turn on gradient_checkpointing, use quick_lora, or rent a "
            "bigger GPU"
        )
    if env["gpu"] is not None and not env["bf16"]:
        warnings.append("this GPU has no bf16: training falls back to fp16 with loss scaling (slower, less stable)")
    if not tiny and env["disk_free_gb"] < DISK_NEEDS_GB:
        warnings.append(f"{env['disk_free_gb']:.0f} GiB free disk; a run needs about {DISK_NEEDS_GB:.0f} GiB")
    env["warnings"] = warnings
    return env


def format_environment(env: dict[str, Any]) -> str:
    """A few readable lines; warnings last, each starting with WARNING."""

    def gb(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.0f} GiB"

    gpu = f"{env['gpu']}, {gb(env['vram_gb'])} VRAM, bf16 {'yes' if env['bf16'] else 'no'}" if env["gpu"] else "none"
    lines = [
        f"GPU:      {gpu}",
        f"CPU:      {env['cpu']} ({env['cpu_cores']} cores), RAM {gb(env['ram_gb'])}",
        f"Disk:     {gb(env['disk_free_gb'])} free",
        f"Versions: tts_lib {env['tts_lib']}, torch {env['torch']}, CUDA {env['cuda'] or 'none'}, "
        f"Python {env['python']}",
        f"Needs:    about {env['vram_needed_gb']:g} GiB of GPU memory for this mode ({env['needs_basis']})",
    ]
    return "\n".join(lines + [f"WARNING: {w}" for w in env["warnings"]])
