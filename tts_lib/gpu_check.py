"""The GPU acceptance check: python -m tts_lib gpu-check [--smoke] [--max-tokens N] [--family fish_speech]

What only a GPU instance runs, in a few minutes on one GPU: a random model of the family's reference shape
(Fish Speech: S1-mini) in bf16, one quick_lora and one full training step at the family's default max_tokens, or
the most the free memory holds by the memory plan where that is less (peak memory from
torch.cuda.max_memory_allocated beside the memory plan's figure, supervised tokens/s, and MFU from the counted
FLOPs), the family's own speeds (Fish Speech: the codec's seconds per hour of audio, generation frames/s), the
bf16 merge check, and the real training loop for two steps in two processes (NCCL) when there are two GPUs.
Prints a table and one line `gpu_check={json}`.

--smoke runs the same code paths at tiny shapes on the CPU (fp32, gloo for the two processes), so this
command cannot rot between GPU runs: CI runs it. Its figures mean nothing. Measured GPU figures belong in
docs/benchmarks.md, with the GPU they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tts_lib.models import (
    PlanningShape,
    default_max_tokens,
    family_module,
    load_family,
    make_tiny_checkpoint,
    reference_shape,
)
from tts_lib.training import flops, memory_plan
from tts_lib.training.adapters import AdapterConfig, add_adapters
from tts_lib.training.optim import OptimConfig, make_optimizer
from tts_lib.versions import cost

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, repeats: int) -> float:
    """Seconds per call of `fn` after one warm-up call (kernels compiled, allocator warm)."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def training_step(shape: PlanningShape, mode: str, max_tokens: int, precision: str, device, repeats: int) -> dict:
    """One optimiser step of `mode` on a random model of `shape`, as the memory plan traces it."""
    model = memory_plan.build_model(shape, mode, precision, False, None).to(device)
    batch = {k: v.to(device) for k, v in shape.batch(max_tokens).items()}
    optimizer = make_optimizer(model, OptimConfig(), device.type)
    dtype = memory_plan.PRECISIONS[precision]
    supervised = []

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            parts = shape.loss_parts(model, batch)
        parts.loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        supervised.append(parts.tokens)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(device, step, repeats)
    tokens = supervised[-1]  # the unit FLOPs are counted in (flops.flops_per_token) and the trainer logs
    planned = memory_plan.plan_memory(mode, max_tokens, precision=precision, shape=shape).peak_gib
    measured = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {"max_tokens": max_tokens, "seconds_per_step": seconds, "tokens_per_s": tokens / seconds,
              "planned_peak_gib": planned, "measured_peak_gib": measured}  # fmt: skip
    machine = cost.detect_machine(cost.GPU_TABLE)
    peak = cost.GPU_TABLE[machine.key].bf16_tflops if machine.key else None
    per_token = flops.flops_per_token(mode, shape=shape)
    result["mfu"] = per_token * result["tokens_per_s"] / (peak * 1e12) if peak and device.type == "cuda" else None
    return result  # the model and its optimiser go with `step`: the next mode starts from free memory


def fitting_tokens(shape: PlanningShape, mode: str, max_tokens: int, precision: str, device) -> int | None:
    """`max_tokens`, or less where the memory plan says the free memory cannot hold it (VoxCPM2's full step
    without checkpointing needs about 56 GiB at its default 1024); None when not even the smallest budget fits."""
    free = torch.cuda.mem_get_info(device)[0] / 2**30
    try:
        return memory_plan.max_tokens_for(mode, free, 0.1, False, precision, shape, cap=max_tokens)
    except ValueError:
        return None


def merge_check(tiny: Path, work: Path) -> dict:
    """The bf16 merge check on the tiny model saved in bf16 (as S1-mini ships): a trained-looking adapter must
    survive the export, and the check must say by how much."""
    from tts_lib.versions.export import export_merged

    bf16 = load_family(tiny)
    bf16 = load_family(bf16.save(bf16.load_model(dtype=torch.bfloat16), work / "tiny-bf16"))
    model = add_adapters(bf16.load_model(), AdapterConfig(lora_dropout=0.0)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    report = export_merged(bf16, model, work / "merged")
    return {"dtype": report.dtype, "max_abs_diff": report.max_abs_diff, "adapter_effect": report.adapter_effect,
            "accepted": True}  # fmt: skip


def two_process_training(folder: Path, work: Path, backend_device: str) -> dict:
    """The real loop (`python -m tts_lib train`) for two steps in two processes under torchrun."""
    from tts_lib.common.config_io import save_config
    from tts_lib.data.codes_cache import extract_codes
    from tts_lib.data.ingest import ingest
    from tts_lib.data.manifest import write_manifest
    from tts_lib.data.split import assign_splits
    from tts_lib.training.train_config import TrainConfig

    items = [i for i in ingest(DEMO).items if i.speaker == "fi_female"][:6]
    assign_splits(items)
    extract_codes(items, load_family(folder).codec_spec(backend_device), work / "codes", log_every=3600)
    manifest = write_manifest(work / "manifest.jsonl", items)
    config = TrainConfig(base_model=str(folder), manifest=str(manifest), run_dir=str(work / "run"), max_steps=2,
                         max_tokens=512, val_every=0, save_every=2, device=backend_device)  # fmt: skip
    save_config(config, work / "train.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "tts_lib", "train", "--config", str(work / "train.yaml")]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        log = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise RuntimeError(f"two-process training failed ({done.returncode}):\n{log}")
    return {"processes": 2, "steps": 2, "seconds": time.perf_counter() - start}


def run_checks(smoke: bool, max_tokens: int | None, family: str = "fish_speech") -> dict:
    """`family`: whose reference shape and tiny checkpoint are checked (tts_lib.models.FAMILIES); max_tokens None:
    the family's default."""
    max_tokens = max_tokens or default_max_tokens(family)
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("gpu-check needs a CUDA GPU; on a CPU run `gpu-check --smoke` (tiny shapes, figures "
                           "that mean nothing)")
    precision = "fp32" if smoke else "bf16"
    results: dict = {"smoke": smoke, "device": cost.detect_machine(cost.GPU_TABLE).name, "torch": torch.__version__,
                     "precision": precision, "family": family}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        tiny = make_tiny_checkpoint(work / "tiny-demo", family=family)
        shape = load_family(tiny).planning_shape() if smoke else reference_shape(family)
        tokens = min(max_tokens, 256) if smoke else max_tokens
        for mode in ("quick_lora", "full"):
            fitting = tokens if smoke else fitting_tokens(shape, mode, tokens, precision, device)
            if fitting is None:
                results[f"train_{mode}"] = {"skipped": f"not even max_tokens {memory_plan.TOKEN_STEP} fits this GPU "
                                            "by the memory plan"}  # fmt: skip
                continue
            results[f"train_{mode}"] = training_step(shape, mode, fitting, precision, device, 1 if smoke else 3)
        speeds = getattr(family_module(family), "gpu_speeds", None)  # the family's own figures, if it has any
        dtype = memory_plan.PRECISIONS[precision]
        results["family_speeds"] = speeds(device, dtype, smoke, work, timed) if speeds else {}
        results["merge_bf16"] = merge_check(tiny, work)
        if smoke or torch.cuda.device_count() >= 2:
            results["two_process"] = two_process_training(tiny, work / "ddp", "cpu" if smoke else "cuda")
        else:
            results["two_process"] = {"skipped": "needs two GPUs"}
    return results


def format_table(r: dict) -> str:
    def gib(v):
        return "n/a" if v is None else f"{v:.2f} GiB"

    smoke = ", SMOKE: tiny shapes, the figures mean nothing" if r["smoke"] else ""
    lines = [f"gpu-check on {r['device']} (torch {r['torch']}, {r['precision']}{smoke})"]
    for mode in ("quick_lora", "full"):
        t = r[f"train_{mode}"]
        if "skipped" in t:
            lines.append(f"  {mode:<11} skipped: {t['skipped']}")
            continue
        mfu = "n/a" if t["mfu"] is None else f"{t['mfu']:.1%}"
        lines.append(f"  {mode:<11} {t['tokens_per_s']:>10,.0f} tokens/s at max_tokens {t['max_tokens']}  peak "
                     f"{gib(t['measured_peak_gib'])} (plan {gib(t['planned_peak_gib'])})  MFU {mfu}")  # fmt: skip
    for name, figures in r["family_speeds"].items():
        lines.append(f"  {name:<11} " + ", ".join(f"{key} {value:,.1f}" for key, value in figures.items()))
    m = r["merge_bf16"]
    lines.append(f"  merge bf16  accepted: max diff {m['max_abs_diff']:.2e}, "
                 f"the adapter's effect {m['adapter_effect']:.2e}")
    two = r["two_process"]
    done = two.get("skipped") or "{steps} steps in {seconds:.0f} s".format(**two)
    lines.append(f"  2 processes {done}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = run_checks(args.smoke, args.max_tokens, args.family)
    print(format_table(results))
    print("gpu_check=" + json.dumps(results, default=float))
    return 0

