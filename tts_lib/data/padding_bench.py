"""Padding benchmark: python -m tts_lib bench padding --durations FILE [--max-tokens N] [--epochs E]

Compares the length-bucketed batches of `LengthBucketedBatchSampler` with random batches packed
under the same padded-token budget, on a list of clip durations (a text file with one duration in
seconds per line, or a JSONL manifest). Efficiency is real tokens / padded tokens, pooled over all
batches of all epochs. The last line printed is machine-readable:
`bucketed_efficiency=<x> random_efficiency=<y>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path

from tts_lib.data.sampler import LengthBucketedBatchSampler, frames_for_duration

S1_MINI_FRAME_RATE = 44100 / 2048  # the default: Fish Speech S1-mini's codec, about 21.5 frames per second


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Real tokens over padded tokens (each batch costs len(batch) * its longest item)."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    if padded == 0:
        raise ValueError("no tokens: there are no non-empty batches")
    return real / padded


def random_batches(
    lengths: Sequence[int], max_tokens: int, max_items: int | None = None, seed: int = 0, epoch: int = 0
) -> list[list[int]]:
    """The baseline: shuffle all items, then fill each batch in turn until the next item would
    break the budget (padded cost len * max <= max_tokens, at most max_items items)."""
    order = list(range(len(lengths)))
    random.Random(f"random-batches:{seed}:{epoch}").shuffle(order)
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for i in order:
        if lengths[i] > max_tokens:
            raise ValueError(f"item {i} has {lengths[i]} tokens, more than max_tokens={max_tokens}")
        grown = max(longest, lengths[i])
        full = max_items is not None and len(batch) >= max_items
        if batch and (full or (len(batch) + 1) * grown > max_tokens):
            batches.append(batch)
            batch, grown = [], lengths[i]
        batch.append(i)
        longest = grown
    if batch:
        batches.append(batch)
    return batches


def _duration_from_json(text: str, where: str) -> float:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}): {text[:80]!r}") from None
    if not isinstance(row, dict) or "duration" not in row:
        raise ValueError(f"{where}: expected a JSON object with a 'duration' field, found {text[:80]!r}")
    value = row["duration"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: 'duration' should be a number of seconds, found {value!r}")
    return float(value)


def read_durations(path: str | os.PathLike) -> list[float]:
    """Durations in seconds from a text file (one number per line; blank lines and # comments
    skipped) or a JSONL manifest (a `duration` field per line). Bad lines raise ValueError."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((s.strip() for s in lines if s.strip() and not s.strip().startswith("#")), "")
    jsonl = path.suffix == ".jsonl" or first.startswith("{")
    durations = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or (not jsonl and text.startswith("#")):
            continue
        where = f"{path}, line {number}"
        if jsonl:
            seconds = _duration_from_json(text, where)
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{where}: expected a duration in seconds, found {text[:80]!r}") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"{where}: a duration must be a positive number of seconds, found {text[:80]!r}")
        durations.append(seconds)
    if not durations:
        raise ValueError(f"{path}: no durations found")
    return durations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--durations", required=True, help="text file (seconds per line) or JSONL manifest")
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded audio tokens per batch")
    parser.add_argument("--max-items", type=int, default=None, help="items per batch at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs to pool the efficiency over")
    parser.add_argument("--frame-rate", type=float, default=S1_MINI_FRAME_RATE,
                        help="codec frames per second of audio (default: S1-mini's, 44100/2048)")


def run(args: argparse.Namespace) -> int:
    durations = read_durations(args.durations)
    lengths = [frames_for_duration(s, args.frame_rate) for s in durations]
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    sampler = LengthBucketedBatchSampler(lengths, args.max_tokens, args.max_items, seed=args.seed)
    bucketed: list[list[int]] = []
    shuffled: list[list[int]] = []
    for epoch in range(args.epochs):
        bucketed += sampler.global_batches(epoch)
        shuffled += random_batches(lengths, args.max_tokens, args.max_items, args.seed, epoch)
    items_cap = "no item cap" if args.max_items is None else f"at most {args.max_items} items"
    hours = sum(durations) / 3600
    print(f"items: {len(lengths)}, {hours:.2f} h, {sum(lengths)} audio tokens at {args.frame_rate:.2f} per second")
    print(f"budget: {args.max_tokens} padded tokens per batch, {items_cap}; {args.epochs} epoch(s)")
    print(f"bucketed: {len(bucketed) / args.epochs:.1f} batches per epoch")
    print(f"random:   {len(shuffled) / args.epochs:.1f} batches per epoch")
    print(
        f"bucketed_efficiency={padding_efficiency(bucketed, lengths):.4f} "
        f"random_efficiency={padding_efficiency(shuffled, lengths):.4f}"
    )
    return 0
