"""Time and cost of a fine-tune before it starts: a few real training steps timed on this machine, priced.

    estimate, text = estimate_run(config, out, start, train_items, steps, scratch, table, machine)

The measured tokens/s prices the planned tokens on every GPU of the table (scaled by spec TFLOPs); on a
CPU, where nothing measured scales to a GPU, the GPU rows come from the model's counted FLOPs at an assumed
MFU and say so. The result is kept in estimate.json, keyed by the settings: a rerun does not time again.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tts_lib.common.config_io import config_to_dict
from tts_lib.common.fileio import atomic_write_json, read_json
from tts_lib.data.manifest import Item
from tts_lib.data.sampler import LengthBucketedBatchSampler
from tts_lib.models import load_family
from tts_lib.training.adapters import add_adapters
from tts_lib.training.device import pick_device
from tts_lib.training.flops import flops_per_token
from tts_lib.training.train import choose_precision, load_samples
from tts_lib.versions import cost

if TYPE_CHECKING:  # finetune calls this module: its config type only for the annotations
    from tts_lib.versions.finetune import FinetuneConfig


def estimate_run(config, out, start, train_items, steps, scratch, table, machine) -> tuple[dict, str]:
    """Time a few real training steps (forward + backward) and price the planned tokens."""
    path = out / "estimate.json"
    settings = config_to_dict(config)
    saved = read_json(path) if path.is_file() else {}
    if saved.get("config") == settings:  # measured for these settings (a rerun, or a resumed run)
        return saved, saved.get("text", "")
    if config.estimate_steps <= 0 or not train_items:
        return {}, "no cost estimate (estimate_steps is 0)"
    lora = config.mode == "quick_lora"
    throughput, tokens_per_step = time_training_steps(config, start.weights, lora, train_items, config.estimate_steps)
    planned = int(steps * tokens_per_step)
    scratch_tokens = int(scratch * tokens_per_step) if scratch else None
    # nothing measured here scales to a GPU (a CPU, or a GPU not in the table): count the FLOPs instead
    counted = None
    if machine.key is None:
        mode, shape = "quick_lora" if lora else "full", load_family(start.weights).planning_shape()
        counted = flops_per_token(mode, config.train.gradient_checkpointing, shape)
    estimate = cost.estimate_cost(planned, throughput, machine.key, table, scratch_tokens, price_for=config.gpu,
                                  machine=machine.name, flops_per_token=counted)  # fmt: skip
    text = cost.format_estimate(estimate)
    first = estimate.rows[0] if estimate.rows else None
    # the first row is the GPU the plan is priced for (or this machine): its hours and dollars go into the metadata
    saved = {**estimate.to_json(), "hours": first.hours if first else None, "usd": first.usd if first else None,
             "text": text, "config": settings}  # fmt: skip
    atomic_write_json(path, saved)
    return saved, text


def time_training_steps(
    config: FinetuneConfig, weights: Path, lora: bool, items: list[Item], steps: int
) -> tuple[cost.Throughput, float]:
    """(throughput of `steps` timed forward+backward passes, supervised tokens per optimiser step).

    The model is a throwaway copy and no optimiser steps, so the run itself starts untouched; the
    optimiser's own step is left out, which makes the estimate a little optimistic for full runs."""
    family = load_family(weights)
    device = pick_device(config.train.device)  # the training device, as the run itself will use
    amp_dtype, _ = choose_precision(config.train.precision, device)
    model = family.load_model(device=device, dtype=torch.float32)
    if lora:
        model = add_adapters(model, config.adapter)
    model.train()
    samples = load_samples(family, items)
    lengths = [s.length for s in samples]
    batches = list(LengthBucketedBatchSampler(lengths, config.train.max_tokens, config.train.max_items, seed=0))
    collated = [family.collate([samples[i] for i in b]) for b in batches]
    tokens = [sum(family.supervised_counts(model, b).values()) for b in collated]
    order = itertools.cycle(range(len(collated)))

    def step() -> int:
        k = next(order)
        batch = {name: t.to(device) for name, t in collated[k].items()}
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            parts = family.loss_parts(model, batch)
            loss = parts.loss()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return tokens[k]

    throughput = cost.measure_training_throughput(step, warmup=1, steps=steps)
    return throughput, sum(tokens) / len(tokens) * config.train.grad_accum
