"""The GPU acceptance check: python -m tts_lib gpu-check [--smoke] [--max-tokens 4096]

What only a GPU instance runs, in a few minutes on one GPU: an S1-mini-shaped random model in bf16, one
quick_lora and one full training step at max_tokens 4096 (peak memory from torch.cuda.max_memory_allocated
beside the memory plan's figure, tokens/s, and MFU from the counted FLOPs), the codec's encoding speed
(seconds per hour of audio), the bf16 merge check, generation speed, and the real training loop for two
steps in two processes (NCCL) when there are two GPUs. Prints a table and one line `gpu_check={json}`.

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

from tts_lib.models import load_family
from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.generate import generate
from tts_lib.models.fish_speech.loss import loss_parts
from tts_lib.models.fish_speech.planning import FishPlanningShape, s1_mini_shape
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
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


def training_step(config: FishSpeechConfig, mode: str, max_tokens: int, precision: str, device, repeats: int) -> dict:
    """One optimiser step of `mode` on a random model of `config`'s shape, as the memory plan traces it."""
    shape = FishPlanningShape(config)
    model = memory_plan.build_model(shape, mode, precision, False, None).to(device)
    batch = {k: v.to(device) for k, v in shape.batch(max_tokens).items()}
    optimizer = make_optimizer(model, OptimConfig(), device.type)
    dtype = memory_plan.PRECISIONS[precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_parts(model, batch).loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(device, step, repeats)
    tokens = int(batch["labels"].numel())  # every position of the planned batch is supervised
    planned = memory_plan.plan_memory(mode, max_tokens, precision=precision, shape=shape).peak_gib
    measured = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {"seconds_per_step": seconds, "tokens_per_s": tokens / seconds, "planned_peak_gib": planned,
              "measured_peak_gib": measured}  # fmt: skip
    machine = cost.detect_machine(cost.GPU_TABLE)
    peak = cost.GPU_TABLE[machine.key].bf16_tflops if machine.key else None
    per_token = flops.flops_per_token(mode, shape=shape)
    result["mfu"] = per_token * result["tokens_per_s"] / (peak * 1e12) if peak and device.type == "cuda" else None
    return result  # the model and its optimiser go with `step`: the next mode starts from free memory


def codec_speed(codec_config: FishCodecConfig, device, seconds_of_audio: float, repeats: int) -> dict:
    """Seconds to encode an hour of audio with a random codec of this shape (weights do not change the speed)."""
    codec = FishCodec(codec_config).to(device).eval()
    waves = [torch.randn(int(seconds_of_audio * codec.sample_rate), device=device) * 0.1 for _ in range(4)]
    with torch.no_grad():
        seconds = timed(device, lambda: codec.encode_batch(waves), repeats)
    return {"seconds_per_hour_of_audio": seconds / (4 * seconds_of_audio / 3600)}


def generation_speed(config: FishSpeechConfig, device, precision: str, frames: int) -> dict:
    """Codec frames per second of KV-cached generation from a short prompt (random weights: the speed only)."""
    model = memory_plan.build_model(FishPlanningShape(config), "full", precision, False, None).to(device).eval()
    model = model.to(memory_plan.PRECISIONS[precision])
    begin = config.vocab_size - config.codebook_size
    prompt = torch.zeros(1 + config.num_codebooks, 16, dtype=torch.long, device=device)
    prompt[0] = torch.arange(16, device=device) % max(begin - 1, 1)
    options = dict(max_new_tokens=frames, im_end_id=begin - 1, semantic_begin_id=begin,
                   semantic_end_id=begin + config.codebook_size - 1, seed=0, residual_codebook_size=None)  # fmt: skip
    made = []
    seconds = timed(device, lambda: made.append(generate(model, prompt, **options)), 1)
    return {"frames_per_s": made[-1].shape[1] / seconds, "frames": made[-1].shape[1]}


def merge_check(folder: Path, out: Path) -> dict:
    """The bf16 merge check on the tiny model saved in bf16 (as S1-mini ships): a trained-looking adapter must
    survive the export, and the check must say by how much."""
    from tts_lib.models.fish_speech.checkpoint import MODEL_FILE, load_state_dict_file
    from tts_lib.versions.export import export_merged

    state = load_state_dict_file(folder / MODEL_FILE)
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, folder / MODEL_FILE)
    family = load_family(folder)
    model = add_adapters(family.load_model(), AdapterConfig(lora_dropout=0.0)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    report = export_merged(family, model, out)
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


def run_checks(smoke: bool, max_tokens: int) -> dict:
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("gpu-check needs a CUDA GPU; on a CPU run `gpu-check --smoke` (tiny shapes, figures "
                           "that mean nothing)")
    precision = "fp32" if smoke else "bf16"
    results: dict = {"smoke": smoke, "device": cost.detect_machine(cost.GPU_TABLE).name, "torch": torch.__version__,
                     "precision": precision}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        tiny = make_tiny_checkpoint(work / "tiny-demo")
        config = FishSpeechConfig.from_file(tiny / "config.json") if smoke else s1_mini_shape().config
        tokens = min(max_tokens, 256) if smoke else max_tokens
        for mode in ("quick_lora", "full"):
            results[f"train_{mode}"] = training_step(config, mode, tokens, precision, device, 1 if smoke else 3)
        codec_config = FishCodecConfig.tiny() if smoke else FishCodecConfig()
        results["codec"] = codec_speed(codec_config, device, 1.0 if smoke else 30.0, 1 if smoke else 2)
        results["generation"] = generation_speed(config, device, precision, 8 if smoke else 200)
        results["merge_bf16"] = merge_check(tiny, work / "merged")
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
        mfu = "n/a" if t["mfu"] is None else f"{t['mfu']:.1%}"
        lines.append(f"  {mode:<11} {t['tokens_per_s']:>10,.0f} tokens/s  peak {gib(t['measured_peak_gib'])} "
                     f"(plan {gib(t['planned_peak_gib'])})  MFU {mfu}")  # fmt: skip
    lines.append(f"  codec       {r['codec']['seconds_per_hour_of_audio']:>10,.1f} s per hour of audio")
    lines.append(f"  generation  {r['generation']['frames_per_s']:>10,.1f} frames/s")
    m = r["merge_bf16"]
    lines.append(f"  merge bf16  accepted: max diff {m['max_abs_diff']:.2e}, "
                 f"the adapter's effect {m['adapter_effect']:.2e}")
    two = r["two_process"]
    done = two.get("skipped") or "{steps} steps in {seconds:.0f} s".format(**two)
    lines.append(f"  2 processes {done}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = run_checks(args.smoke, args.max_tokens)
    print(format_table(results))
    print("gpu_check=" + json.dumps(results, default=float))
    return 0

