"""What this machine has, and whether it is enough for a mode: used by notebooks/finetune.ipynb.

    from tts_lib.env_check import check_environment, format_environment, resolve_base_model

    env = check_environment("quick_lora", base_model="openaudio-s1-mini")  # a dict, also saved in results
    print(format_environment(env))  # GPU, VRAM, CPU, RAM, disk, versions, bf16, and any warnings
    base = resolve_base_model("tiny-demo", project="runs")  # a known name or a folder -> a checkpoint folder

The VRAM needs in `VRAM_NEEDS_GB` are rough estimates for S1-mini (0.5 B parameters) at the
default batch of 4096 codec frames, not measurements: AdamW over all weights keeps about 16 bytes
per parameter plus activations; a LoRA keeps the weights and activations only. Pass your own
numbers as `needs_gb` once you have measured them (peak_memory_mb in metrics.jsonl).
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

import tts_lib

# GiB of GPU memory a mode needs with S1-mini at max_tokens 4096 (estimates; see the docstring).
# gradient_checkpointing or a smaller max_tokens lowers them; the tiny-demo model needs almost none.
VRAM_NEEDS_GB = {"quick_lora": 12.0, "full": 24.0, "two_phase": 24.0}
TINY_NEEDS_GB = 0.5
DISK_NEEDS_GB = 20.0  # base model (about 3.5 GB with the codec), merged copies, checkpoints, package

# Names the notebook accepts for `base_model`; anything else is taken as a folder path.
S1_MINI_FOLDER = "checkpoints/openaudio-s1-mini"  # where setup.sh downloads OpenAudio S1-mini
KNOWN_MODELS = ("openaudio-s1-mini", "fish-speech-1.5", "tiny-demo")


def resolve_base_model(name: str, project: str | Path) -> Path:
    """The checkpoint folder for `name`: tiny-demo is written into `project/tiny-demo` when missing
    (random weights, seconds on a CPU); openaudio-s1-mini is the folder setup.sh downloads; anything
    else must be a folder with config.json."""
    if name == "tiny-demo":
        from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

        folder = Path(project) / "tiny-demo"
        if not (folder / "model.pth").is_file():
            make_tiny_checkpoint(folder, overwrite=True)
            print(f"wrote the tiny-demo base model to {folder} (random weights: it generates noise)")
        return folder
    if name == "fish-speech-1.5":
        raise ValueError(
            "fish-speech-1.5 is not supported yet: its tokenizer files and its codec (firefly GAN VQ) differ "
            "from S1-mini's and are not implemented or verified here; use base_model 'openaudio-s1-mini'"
        )
    folder = Path(S1_MINI_FOLDER if name == "openaudio-s1-mini" else name)
    if not (folder / "config.json").is_file():
        if name == "openaudio-s1-mini":
            raise FileNotFoundError(
                f"{folder} not found: OpenAudio S1-mini is gated on the Hugging Face hub. Accept its licence "
                "at https://huggingface.co/fishaudio/openaudio-s1-mini, then run `HF_TOKEN=hf_... ./setup.sh` "
                f"(it downloads the weights to {S1_MINI_FOLDER}), or set base_model to a folder you have"
            )
        raise FileNotFoundError(
            f"base_model {name!r}: expected one of {', '.join(KNOWN_MODELS)} or a checkpoint folder with "
            f"config.json, model.pth and the tokenizer files; {folder} has no config.json"
        )
    return folder


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
    base_model: str = "openaudio-s1-mini",
    path: str | Path = ".",
    needs_gb: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The machine's GPU, memory, disk and versions, plus `warnings` (sentences) where it falls short
    of what `mode` needs with `base_model`. `path` is where outputs go (its disk is checked)."""
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
    tiny = base_model == "tiny-demo"
    need = TINY_NEEDS_GB if tiny else needs[mode]
    env["vram_needed_gb"] = need
    warnings = []
    if env["gpu"] is None:
        if not tiny:
            warnings.append(f"no GPU: {mode} on {base_model} needs an NVIDIA GPU with about {need:.0f} GiB; "
                            "only the tiny-demo model trains in reasonable time on a CPU")  # fmt: skip
    elif env["vram_gb"] < need:
        warnings.append(
            f"the GPU has {env['vram_gb']:.0f} GiB, {mode} needs about {need:.0f} GiB (an estimate): expect out of "
            "memory; lower max_tokens, use quick_lora, or rent a bigger GPU"
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
        f"Needs:    about {env['vram_needed_gb']:g} GiB of GPU memory for this mode (an estimate)",
    ]
    return "\n".join(lines + [f"WARNING: {w}" for w in env["warnings"]])
