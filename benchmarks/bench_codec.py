"""Codec speed: python benchmarks/bench_codec.py [--checkpoint codec.pth] [--device cuda] [--seconds 10]

Times FishCodec at S1-mini size (random weights unless --checkpoint is given; speed does not depend
on the values) encoding one clip, encoding a batch of clips of mixed lengths with encode_batch, and
decoding. Prints the machine and each time as a real-time factor (audio seconds per wall second).
Code extraction for a dataset is the encode_batch case.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from tts_lib.models.fish_speech.codec import FishCodec


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best of `repeats` wall times after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="codec.pth or a checkpoint folder; default: random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the single clip")
    parser.add_argument("--batch", type=int, default=8, help="clips in the batch case (1 to 2 x --seconds long)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    codec = FishCodec.from_pretrained(args.checkpoint, device=device) if args.checkpoint else FishCodec().to(device)
    sr = codec.sample_rate
    clip = 0.1 * torch.randn(int(args.seconds * sr), device=device)
    clips = [0.1 * torch.randn(int(args.seconds * sr * (1 + k / args.batch)), device=device) for k in range(args.batch)]
    batch_seconds = sum(len(c) for c in clips) / sr
    codes = codec.encode(clip)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{name}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    for label, audio_seconds, fn in (
        (f"encode {args.seconds:.0f} s", args.seconds, lambda: codec.encode(clip)),
        (f"encode_batch {args.batch} clips, {batch_seconds:.0f} s", batch_seconds, lambda: codec.encode_batch(clips)),
        (f"decode {codes.shape[-1]} frames", args.seconds, lambda: codec.decode(codes)),
    ):
        wall = timed(fn, device, args.repeats)
        print(f"{label}: {wall:.3f} s, {audio_seconds / wall:.1f}x real time")


if __name__ == "__main__":
    main()
