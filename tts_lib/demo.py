"""The offline demo, runnable on a CPU with no downloads: python -m tts_lib demo

Today it prepares the bundled demo data the way a real run does (ingest, held-out split,
validation) and shows the batch plan the trainer will use. The fine-tune itself joins this
command when the model and the training loop land.
"""

from __future__ import annotations

import argparse

from tts_lib.padding_bench import padding_efficiency
from tts_lib.prepare import prepare_dataset
from tts_lib.sampler import LengthBucketedBatchSampler, frames_for_duration
from tts_lib.validation_report import format_report

DEMO_MAX_TOKENS = 512  # codec frames per batch (about 24 s of audio): small steps for a CPU


def run(args: argparse.Namespace) -> int:
    data = prepare_dataset(args.data, args.out)
    print(format_report(data.report, max_per_code=5))
    s = data.split
    print(f"\nManifest: {data.manifest} (split: {s.new_train} train and {s.new_val} val new, {s.kept} kept)")

    train = [i for i in data.report.items if i.split == "train" and i.duration]
    lengths = [frames_for_duration(i.duration) for i in train]
    batches = list(LengthBucketedBatchSampler(lengths, max_tokens=DEMO_MAX_TOKENS, seed=0))
    print(
        f"Batch plan: {len(train)} training items -> {len(batches)} batches per epoch at "
        f"{DEMO_MAX_TOKENS} frames per batch, padding efficiency {padding_efficiency(batches, lengths):.3f}"
    )
    print("Training is not part of this build yet: the demo stops after data preparation.")
    return 1 if data.report.errors else 0
