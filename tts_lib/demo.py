"""The offline demo, runnable on a CPU with no downloads: python -m tts_lib demo

It runs the pipeline the way a real run does: prepare the bundled demo data (ingest, held-out
split, validation), plan length-bucketed batches, write the tiny-demo base model (random weights),
encode every clip to codec codes (cached), score one batch, then fully fine-tune for a few dozen
steps with validation, EMA and checkpoints. Running it again resumes the same run folder, which is
then already finished. LoRA modes, merging and export join this command with the modes work.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from tts_lib.codes_cache import extract_codes
from tts_lib.manifest import write_manifest
from tts_lib.models import load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
from tts_lib.padding_bench import padding_efficiency
from tts_lib.prepare import prepare_dataset
from tts_lib.sampler import LengthBucketedBatchSampler, frames_for_duration
from tts_lib.train import train
from tts_lib.train_config import TrainConfig
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
    config = TrainConfig(
        base_model=str(base), manifest=str(data.manifest), run_dir=str(out / "train"), max_steps=DEMO_STEPS,
        max_tokens=DEMO_MAX_TOKENS, val_every=10, save_every=10, log_every_seconds=2.0,
    )  # fmt: skip
    config.optim.lr = 1e-3  # a random tiny model: a large step shows the loss move within seconds
    config.schedule.warmup_steps = 5
    result = train(config)
    print(f"Fine-tuned tiny-demo: {result.final_model} (upstream layout; it still generates noise)")
    return 0
