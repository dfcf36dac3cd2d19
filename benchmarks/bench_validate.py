"""Validation speed on many files: python benchmarks/bench_validate.py [--files 10000] [--ext flac]

Writes N short audio files (1-8 s, 16-bit, tone + noise, a realistic spread of lengths; WAV at
22.05 kHz by default, `--ext flac --sample-rate 44100` for the costlier case) into a temporary
Fish Speech layout, then times `validate_path` on them: the header pass, the full decode in a
process pool, and the cross-item checks. Goal: 10,000 files in under 60 s on
2 cores. Prints the machine it ran on and the measured time.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from tts_lib.data.validate import ValidationConfig, validate_path


def write_dataset(root: Path, files: int, ext: str, sr: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    total = 0.0
    for k in range(files):
        seconds = float(rng.uniform(1.0, 8.0))
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + rng.normal(0, 0.02, t.shape)
        folder = root / f"speaker{k % 4}"
        folder.mkdir(exist_ok=True)
        sf.write(folder / f"utt{k:05d}.{ext}", x.astype(np.float32), sr, subtype="PCM_16")
        (folder / f"utt{k:05d}.lab").write_text("Tämä on testilause numero " + str(k), encoding="utf-8")
        total += seconds
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--ext", default="wav", choices=["wav", "flac"])
    parser.add_argument("--sample-rate", type=int, default=22050)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds = write_dataset(root, args.files, args.ext, args.sample_rate)
        print(f"wrote {args.files} {args.ext} files, {seconds / 3600:.1f} h at {args.sample_rate} Hz")
        for decode in (False, True):
            start = time.perf_counter()
            report = validate_path(
                root, ValidationConfig(decode=decode, workers=args.workers, sample_rate=args.sample_rate)
            )
            elapsed = time.perf_counter() - start
            mode = "headers + full decode" if decode else "headers only"
            print(f"{mode:22s} {elapsed:6.1f} s  ({len(report.items)} items, {len(report.problems)} problems)")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
