"""python benchmarks/train_throughput.py [--data demo|ljspeech-like] [--items N] [--steps N] [--max-tokens T]
                                        [--memory-steps M]

Training throughput of the engine (`tts_lib.training.train.train`) on CPU, tiny-demo model, on one of two data sets:

- demo (default): all of data/demo (35 clips), codes extracted with the tiny codec; max_tokens 1024.
- ljspeech-like: --items synthetic items (default 400) whose durations are drawn from
  benchmarks/durations_ljspeech_like.txt (1.11-10.10 s), frames = `frames_for_duration(duration, frame_rate)`,
  random codes within the tiny model's codebook sizes and random transcripts of about 15 characters
  per second, written as .npy files plus a manifest that `train()` reads like real data; max_tokens 4096.

(a) engine: `train()` with EMA on, no validation, no checkpoints until the end; tokens/s per step
    from its metrics.jsonl (median) and supervised tokens / wall time between step callbacks.
(b) plain-random: a bare PyTorch loop (same model, same AdamW, same clipping, same loss) on
    random batches packed under the same padded-token budget (`padding_bench.random_batches`).
(c) plain-bucketed: the same bare loop fed the engine's own `LengthBucketedBatchSampler` batches
    (same seed and budget), so engine vs plain-bucketed isolates the engine's own per-step work
    (collation bookkeeping, token counting, finiteness checks, scheduler, EMA, metrics logging).
(d) with --memory-steps M: RSS sampled every 50 steps of an M-step engine run (first vs last).

Ratios use supervised tokens / wall time over the timed steps (warm-up steps excluded), best of
--rounds interleaved repeats. The last
line printed is machine-readable: `engine_vs_plain=<engine tokens/s / plain-random tokens/s>`.
Goals: bucketing >= 1.3x over random batches, engine overhead <= 5%, no memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from tts_lib.data.codes_cache import extract_codes
from tts_lib.data.ingest import ingest
from tts_lib.data.manifest import Item, read_manifest, write_manifest
from tts_lib.data.padding_bench import padding_efficiency, random_batches, read_durations
from tts_lib.data.sampler import LengthBucketedBatchSampler, frames_for_duration
from tts_lib.data.split import assign_splits
from tts_lib.models import load_family
from tts_lib.models.fish_speech.codec import CODEC_CONFIG_FILE, FishCodecConfig
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint
from tts_lib.training.optim import OptimConfig, clip_gradients, make_optimizer
from tts_lib.training.train import load_samples, train
from tts_lib.training.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2  # fixed so runs on different machines (and variants within a run) are comparable
WARMUP = 5  # steps run before timing starts: first-call allocations and kernel selection
SEED = 0
RSS_EVERY = 50
DURATIONS = ROOT / "benchmarks" / "durations_ljspeech_like.txt"
CHARS_PER_SECOND = 15  # transcript length of the synthetic items: about read-speech pace
# Default padded-token budget per data set. Sequences (text prompt + codec frames) are 34-267 tokens on
# demo and 44-304 (mean ~200) on ljspeech-like at 400 items: 1024 fits 3 of the longest demo items,
# 4096 fits 13 of the longest synthetic ones, ~19 items per bucketed batch (the padding benchmark's budget).
MAX_TOKENS = {"demo": 1024, "ljspeech-like": 4096}


@dataclass
class Throughput:
    name: str
    steps: int
    tokens: int  # supervised tokens over the timed steps
    seconds: float  # wall time over the timed steps
    median_step_tokens_per_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def line(self) -> str:
        return (f"{self.name:<15} {self.tokens_per_s:9.1f} tok/s (total {self.tokens} tok / {self.seconds:.2f} s "
                f"over {self.steps} steps), median step {self.median_step_tokens_per_s:9.1f} tok/s")  # fmt: skip


def rss_bytes() -> int:
    """Current resident set size (not the peak, which resource.getrusage would give)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no psutil and no /proc/self/status: cannot read RSS") from None


def prepare(work: Path, data: str, n_items: int) -> tuple[Path, Path]:
    """tiny-demo and a manifest with codes, every item in train: data/demo or a synthetic LJSpeech-like set."""
    base = make_tiny_checkpoint(work / "tiny-demo")
    if data == "ljspeech-like":
        return base, write_synthetic(work, base, n_items)
    items = ingest(ROOT / "data" / "demo").items
    assign_splits(items)
    for item in items:  # validation is off here, so held-out items would only shrink the data
        item.split = "train"
    extract_codes(items, load_family(base).codec_spec(), work / "codes")
    return base, write_manifest(work / "manifest.jsonl", items)


def write_synthetic(work: Path, base: Path, n_items: int) -> Path:
    """n_items items with durations drawn from DURATIONS, random codes and transcripts, and no audio.

    Only the audio files are missing (train() never opens them): codes are .npy files of shape
    (num_codebooks, frames) with the semantic row below the model's codebook size and the residual
    rows below the codec's, exactly what code extraction writes.
    """
    rng = random.Random(SEED)
    durations = rng.sample(read_durations(DURATIONS), n_items)
    config = load_family(base).config
    codec = FishCodecConfig.from_file(base / CODEC_CONFIG_FILE)
    highs = [config.codebook_size] + [codec.residual_codebook_size] * (config.num_codebooks - 1)
    codes_rng = np.random.default_rng(SEED)
    (work / "codes").mkdir()
    items = []
    for i, seconds in enumerate(durations):
        frames = frames_for_duration(seconds, load_family(base).frame_rate)
        codes = np.stack([codes_rng.integers(0, high, frames, dtype=np.int16) for high in highs])
        np.save(codes_path := work / "codes" / f"{i:05d}.npy", codes)
        items.append(Item(id=f"synthetic/{i:05d}", audio=str(work / "audio" / f"{i:05d}.wav"),
                          text=random_text(rng, round(seconds * CHARS_PER_SECOND)), speaker="synthetic",
                          duration=seconds, sample_rate=44100, channels=1, split="train",
                          codes=str(codes_path)))  # fmt: skip
    return write_manifest(work / "manifest.jsonl", items)


def random_text(rng: random.Random, chars: int) -> str:
    """Random lower-case words of 2-9 letters joined by spaces, cut to `chars` characters (at least 2)."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))))
    return " ".join(words)[: max(chars, 2)].strip()


def engine_config(base: Path, manifest: Path, run_dir: Path, steps: int, max_tokens: int) -> TrainConfig:
    return TrainConfig(base_model=str(base), manifest=str(manifest), run_dir=str(run_dir), max_steps=steps,
                       max_tokens=max_tokens, seed=SEED, val_every=0, save_every=10**9, ema_decay=0.999,
                       log_every_seconds=3600.0, device="cpu")  # fmt: skip


def run_engine(base: Path, manifest: Path, run_dir: Path, steps: int, max_tokens: int) -> Throughput:
    # One extra step at the end: train() saves a checkpoint on the last step, which is not per-step work.
    total = WARMUP + steps + 1
    stamps: dict[int, float] = {}
    train(engine_config(base, manifest, run_dir, total, max_tokens),
          on_metrics=lambda row: stamps.__setitem__(row["step"], time.perf_counter()))  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if WARMUP < r["step"] <= WARMUP + steps]
    # tokens_per_s * seconds would only approximate the count: recompute it exactly from the same batches.
    tokens = engine_tokens(base, manifest, max_tokens, timed[0]["step"], timed[-1]["step"])
    return Throughput("engine", len(timed), tokens, stamps[WARMUP + steps] - stamps[WARMUP],
                      statistics.median(r["tokens_per_s"] for r in timed))  # fmt: skip


def engine_batches(lengths: list[int], max_tokens: int) -> Iterator[list[int]]:
    """The batches the engine sees, in order: its sampler's epochs back to back (grad_accum 1, one rank)."""
    sampler = LengthBucketedBatchSampler(lengths, max_tokens, seed=SEED)
    epoch = 0
    while True:
        yield from sampler.rank_batches(epoch)
        epoch += 1


def random_batch_stream(lengths: list[int], max_tokens: int) -> Iterator[list[int]]:
    epoch = 0
    while True:
        yield from random_batches(lengths, max_tokens, seed=SEED, epoch=epoch)
        epoch += 1


def engine_tokens(base: Path, manifest: Path, max_tokens: int, first: int, last: int) -> int:
    family, samples, model = setup(base, manifest)
    stream = engine_batches([s.tokens.shape[1] for s in samples], max_tokens)
    batches = [next(stream) for _ in range(last)][first - 1 :]
    return sum(sum(family.supervised_counts(model, family.collate([samples[i] for i in b])).values()) for b in batches)


def setup(base: Path, manifest: Path):
    family = load_family(base)
    samples = load_samples(family, [i for i in read_manifest(manifest) if i.split == "train"])
    return family, samples, family.load_model(device="cpu", dtype=torch.float32)


def run_plain(name: str, base: Path, manifest: Path, steps: int,
              make_stream: Callable[[list[int]], Iterator[list[int]]]) -> Throughput:  # fmt: skip
    """The bare loop: collate, forward, loss, backward, clip, AdamW step. Nothing else."""
    torch.manual_seed(SEED)
    family, samples, model = setup(base, manifest)
    model.train()
    optim = OptimConfig()
    optimizer = make_optimizer(model, optim, "cpu")
    stream = make_stream([s.tokens.shape[1] for s in samples])
    step_rates, tokens, started = [], 0, 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            started = time.perf_counter()
        t0 = time.perf_counter()
        batch = family.collate([samples[i] for i in next(stream)])
        family.loss_parts(model, batch).loss().backward()
        clip_gradients(model.parameters(), optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        if step >= WARMUP:
            # Counted after the step's clock stops: counting is measurement, not training work.
            n = sum(family.supervised_counts(model, batch).values())
            tokens += n
            step_rates.append(n / seconds)
    return Throughput(name, steps, tokens, time.perf_counter() - started, statistics.median(step_rates))


def memory_run(base: Path, manifest: Path, run_dir: Path, steps: int, max_tokens: int) -> list[tuple[int, int]]:
    samples: list[tuple[int, int]] = []

    def sample(row: dict) -> None:
        if row["step"] == 1 or row["step"] % RSS_EVERY == 0:
            samples.append((row["step"], rss_bytes()))

    train(engine_config(base, manifest, run_dir, steps, max_tokens), on_metrics=sample)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant (after warm-up)")
    parser.add_argument("--data", choices=sorted(MAX_TOKENS), default="demo", help="data set (see above)")
    parser.add_argument("--items", type=int, default=400, help="synthetic items for --data ljspeech-like")
    parser.add_argument("--max-tokens", type=int, help="padded-token budget per batch (demo 1024, ljspeech-like 4096)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of each variant; the best counts")
    parser.add_argument("--memory-steps", type=int, default=0, help="also sample RSS over an engine run this long")
    args = parser.parse_args()
    if args.max_tokens is None:
        args.max_tokens = MAX_TOKENS[args.data]
    torch.set_num_threads(THREADS)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{THREADS} threads, python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        base, manifest = prepare(work, args.data, args.items)
        items = read_manifest(manifest)
        family = load_family(base)
        lengths = [s.tokens.shape[1] for s in load_samples(family, items)]
        source = "data/demo" if args.data == "demo" else f"ljspeech-like synthetic ({DURATIONS.name})"
        print(f"data: {len(items)} items from {source}, {len({i.speaker for i in items})} speakers, "
              f"sequence length {min(lengths)}-{max(lengths)} (mean {statistics.mean(lengths):.0f}); "
              f"max_tokens {args.max_tokens}, {WARMUP} warm-up + {args.steps} timed steps per variant")  # fmt: skip
        n = WARMUP + args.steps
        bucketed = list(islice(engine_batches(lengths, args.max_tokens), n))
        shuffled = list(islice(random_batch_stream(lengths, args.max_tokens), n))
        print(f"padding efficiency over the first {n} batches: bucketed {padding_efficiency(bucketed, lengths):.3f}, "
              f"random {padding_efficiency(shuffled, lengths):.3f}")  # fmt: skip

        # Interleaved rounds, best round per variant: this machine's CPUs may be shared, and contention
        # only ever slows a round down, so the fastest round is the closest to the code's own speed.
        rounds: dict[str, list[Throughput]] = {"engine": [], "plain-random": [], "plain-bucketed": []}
        for r in range(args.rounds):
            rounds["plain-random"].append(run_plain("plain-random", base, manifest, args.steps,
                                                    lambda ls: random_batch_stream(ls, args.max_tokens)))  # fmt: skip
            rounds["plain-bucketed"].append(run_plain("plain-bucketed", base, manifest, args.steps,
                                                      lambda ls: engine_batches(ls, args.max_tokens)))  # fmt: skip
            rounds["engine"].append(run_engine(base, manifest, work / f"engine-{r}", args.steps, args.max_tokens))
        print()
        for name, results in rounds.items():
            print(f"{name} rounds (tok/s): " + " ".join(f"{t.tokens_per_s:.0f}" for t in results))
        engine, plain_random, plain_bucketed = (max(rounds[n], key=lambda t: t.tokens_per_s) for n in rounds)
        for result in (engine, plain_random, plain_bucketed):
            print(result.line() + f" [best of {args.rounds}]")
        bucketing = plain_bucketed.tokens_per_s / plain_random.tokens_per_s
        overhead = (plain_bucketed.tokens_per_s / engine.tokens_per_s - 1) * 100
        print(f"bucketing gain (plain-bucketed / plain-random): {bucketing:.2f}x (goal >= 1.3x)")
        print(f"engine overhead (plain-bucketed / engine - 1): {overhead:+.1f}% (goal <= 5%)")

        if args.memory_steps:
            rss = memory_run(base, manifest, work / "memory", args.memory_steps, args.max_tokens)
            (first_step, first), (last_step, last) = rss[0], rss[-1]
            print(f"memory: RSS every {RSS_EVERY} steps over {args.memory_steps} engine steps (MiB): "
                  + " ".join(f"{s}:{b / 2**20:.0f}" for s, b in rss))  # fmt: skip
            print(f"memory: first (step {first_step}) {first / 2**20:.1f} MiB, last (step {last_step}) "
                  f"{last / 2**20:.1f} MiB, growth {(last - first) / 2**20:+.1f} MiB (goal: none)")  # fmt: skip
        else:
            print("memory: skipped (pass --memory-steps 1000 to measure)")
    print(f"engine_vs_plain={engine.tokens_per_s / plain_random.tokens_per_s:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
