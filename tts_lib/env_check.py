"""What this machine has, and whether it is enough for a mode: used by notebooks/finetune.ipynb.

    from tts_lib.env_check import check_environment, format_environment

    env = check_environment("quick_lora", base_model="checkpoints/openaudio-s1-mini")  # a dict
    print(format_environment(env))  # GPU, VRAM, CPU, RAM, disk, versions, bf16, and any warnings

The VRAM needs in `VRAM_NEEDS_GB` come from the memory plan (`tts_lib.memory_needs`: one training step
traced at S1-mini's shape, bf16, max_tokens 4096, 10% of the GPU left free); traced, not measured on a GPU.
Pass your own numbers as `needs_gb` once you have measured them (peak_memory_mb in metrics.jsonl).
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

import tts_lib
from tts_lib import memory_needs
from tts_lib.bundle import is_random_demo, shown

# GiB of GPU memory a mode needs with S1-mini at max_tokens 4096, by the memory plan (see the docstring).
# gradient_checkpointing or a smaller max_tokens lowers them; the tiny-demo model needs almost none.
VRAM_NEEDS_GB = {mode: memory_needs.need_gib(mode) for mode in memory_needs.MODES}
TINY_NEEDS_GB = 0.5
DISK_NEEDS_GB = 20.0  # base model (about 3.5 GB with the codec), merged copies, checkpoints, package


def pick_device(setting: str = "auto") -> torch.device:
    """The device a setting names; "auto" is the GPU when there is one. Training, code extraction and listening
    all use it, so a rented GPU never idles while the CPU encodes audio."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


# `max_tokens: auto` on a GPU: the largest budget the memory plan fits into the free memory, up to this. Past
# it a GPU is busy already, and larger micro-batches only mean fewer optimiser steps per epoch.
AUTO_MAX_TOKENS_CAP = 16384
AUTO_MAX_TOKENS_CPU = 4096  # no GPU memory to plan for: TrainConfig's default
AUTO_MARGIN = 0.1  # of the free memory kept back (allocator fragmentation, what the trace does not see)


def auto_max_tokens(family, adapter: bool, device: torch.device, gradient_checkpointing: bool, amp_dtype):
    """(max_tokens, why) for `max_tokens: auto`: on a GPU the largest budget whose planned peak fits the free
    memory less AUTO_MARGIN (the family's memory plan, its own shape), capped at AUTO_MAX_TOKENS_CAP; the smallest
    over the processes of a distributed run, so every rank batches alike. `amp_dtype`: the autocast dtype or None."""
    if device.type != "cuda":
        return AUTO_MAX_TOKENS_CPU, f"max_tokens auto: {AUTO_MAX_TOKENS_CPU} (no GPU to plan for)"
    free = torch.cuda.mem_get_info(device)[0] / 2**30
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        smallest = torch.tensor([free], device=device)
        torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        free = float(smallest.item())
    mode = "quick_lora" if adapter else "full"
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
    tokens = family.max_tokens_for(mode, free, AUTO_MARGIN, gradient_checkpointing, precision, AUTO_MAX_TOKENS_CAP)
    capped = " (the cap)" if tokens == AUTO_MAX_TOKENS_CAP else ""
    return tokens, (f"max_tokens auto: {tokens}{capped}: the largest the memory plan of {mode} fits in the "
                    f"{free:.1f} GiB free with {AUTO_MARGIN:.0%} kept back")  # fmt: skip


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
    needs = VRAM_NEEDS_GB if needs_gb is None else needs_gb
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
    warnings = []
    if env["gpu"] is None:
        if not tiny:
            warnings.append(f"no GPU: {mode} on {shown(base_model, Path.cwd())} needs an NVIDIA GPU with about "
                            f"{need:.0f} GiB; "
                            "only the tiny-demo model trains in reasonable time on a CPU")  # fmt: skip
    elif env["vram_gb"] < need:
        warnings.append(
            f"the GPU has {env['vram_gb']:.0f} GiB, {mode} needs about {need:.0f} GiB (memory plan, max_tokens 4096): "
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
        f"Needs:    about {env['vram_needed_gb']:g} GiB of GPU memory for this mode (memory plan, max_tokens 4096)",
    ]
    return "\n".join(lines + [f"WARNING: {w}" for w in env["warnings"]])
