"""The offline demo, runnable on a CPU with no downloads: python -m tts_lib demo

It runs the pipeline the way a real run does: prepare the bundled demo data (ingest, held-out
split, validation), plan length-bucketed batches, write the tiny-demo base model (random weights),
encode every clip to codec codes (cached), score one batch, then run the fine-tune entry point in
quick_lora mode for a few dozen steps: cost estimate, LoRA training with validation, EMA and
checkpoints, verified merge, lineage metadata and a download package in runs/demo/v1. Running it
again finds that version finished and changes nothing.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from tts_lib.codes_cache import extract_codes
from tts_lib.finetune import FinetuneConfig, run_finetune
from tts_lib.manifest import write_manifest
from tts_lib.models import load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
from tts_lib.padding_bench import padding_efficiency
from tts_lib.prepare import prepare_dataset
from tts_lib.sampler import LengthBucketedBatchSampler, frames_for_duration
from tts_lib.validation_report import format_report

DEMO_MAX_TOKENS = 512  # codec frames per batch (about 24 s of audio): small steps for a CPU
DEMO_STEPS = 40  # a few epochs of the demo data: seconds on a CPU


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = prepare_dataset(args.data, out)
    print(format_report(data.report, max_per_code=5))
    s = data.split
    print(f"\nManifest: {data.manifest} (split: {s.new_train} train and {s.new_val} val new, {s.kept} kept)")
    if data.report.errors:
        return 1

    train_items = [i for i in data.report.items if i.split == "train" and i.duration]
    lengths = [frames_for_duration(i.duration) for i in train_items]
    batches = list(LengthBucketedBatchSampler(lengths, max_tokens=DEMO_MAX_TOKENS, seed=0))
    print(
        f"Batch plan: {len(train_items)} training items -> {len(batches)} batches per epoch at "
        f"{DEMO_MAX_TOKENS} frames per batch, padding efficiency {padding_efficiency(batches, lengths):.3f}"
    )

    base = out / "tiny-demo"
    if not (base / "model.pth").exists():
        make_tiny_checkpoint(base)
    family = load_family(base)
    print(f"Base model: tiny-demo at {base} (random weights: it generates noise)")
    extraction = extract_codes(data.report.items, family.codec_spec(), out / "codes", log_every=30)
    print(
        f"Codes: {extraction.encoded} encoded, {extraction.cached} from the cache, "
        f"{len(extraction.failed)} failed, in {extraction.seconds:.1f} s"
    )
    write_manifest(data.manifest, data.report.items)  # now with each item's codes path
    if extraction.failed:
        for item_id, reason in extraction.failed:
            print(f"  {item_id}: {reason}")
        return 1

    model = family.load_model().eval()
    first = [train_items[k] for k in batches[0]]
    batch = family.collate([family.build_sample(i.text, torch.from_numpy(np.load(i.codes))) for i in first])
    with torch.no_grad():
        parts = family.loss_parts(model, batch)
    print(
        f"First batch ({len(first)} items): slow loss {parts.slow_sum.item() / parts.slow_count:.2f} "
        f"(chance {math.log(family.config.vocab_size):.2f}), fast loss {parts.fast_sum.item() / parts.fast_count:.2f} "
        f"(chance {math.log(family.config.codebook_size):.2f})"
    )
    # The product's entry point from here on: a quick LoRA with estimate, merge, lineage and package.
    config = FinetuneConfig(mode="quick_lora", base_model=str(base), data=args.data, out=str(out / "v1"),
                            max_steps=DEMO_STEPS, lora_lr=1e-3, codes_cache=str(out / "codes"))  # fmt: skip
    config.train.max_tokens, config.train.val_every, config.train.save_every = DEMO_MAX_TOKENS, 10, 10
    config.train.log_every_seconds = 2.0
    config.train.schedule.warmup_steps = 5
    # a random tiny model: a large step shows the loss move within seconds
    results = run_finetune(config)
    print(f"Fine-tuned tiny-demo: merged model {results['merged_dir']} (upstream layout; it still generates "
          f"noise), adapter {results['adapter_dir']}, package {results['package']}")  # fmt: skip
    return 0
