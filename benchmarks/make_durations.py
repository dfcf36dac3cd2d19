"""Write the synthetic duration list: python benchmarks/make_durations.py [--out FILE]

The padding benchmark needs a realistic spread of clip lengths without shipping a dataset. This
draws 13,100 durations matched to LJSpeech's published summary statistics (13,100 clips, shortest
1.11 s, longest 10.10 s, mean 6.57 s, about 23.9 h): a beta distribution skewed to the long side,
stretched so its extremes land exactly on the published ones, then bent by a power so the mean
matches too. Fixed seed: the output is the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

COUNT = 13_100
SHORTEST = 1.11  # seconds
LONGEST = 10.10
MEAN = 6.57
SEED = 20240611
DEFAULT_OUT = Path(__file__).with_name("durations_ljspeech_like.txt")


def synthetic_durations(count: int = COUNT, seed: int = SEED) -> np.ndarray:
    """`count` durations in seconds with exactly the target minimum, maximum and (about) mean."""
    target = (MEAN - SHORTEST) / (LONGEST - SHORTEST)  # mean on the unit interval, ~0.61
    rng = np.random.default_rng(seed)
    a = 2.5  # shape: few very short clips, a broad hump from ~5 s up to the maximum
    u = rng.beta(a, a * (1 - target) / target, size=count)
    u = (u - u.min()) / (u.max() - u.min())  # the extremes become exactly 0 and 1
    # u ** p keeps 0 and 1 in place and lowers the mean as p grows: bisect p onto the target mean.
    low, high = 0.2, 5.0
    for _ in range(60):
        p = (low + high) / 2
        if (u**p).mean() > target:
            low = p
        else:
            high = p
    return SHORTEST + (LONGEST - SHORTEST) * u ** ((low + high) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    seconds = np.round(synthetic_durations(), 2)
    header = [
        "# Synthetic clip durations in seconds, one per line; not real data.",
        f"# Matched to LJSpeech's published summary statistics: {COUNT:,} clips, min {SHORTEST:.2f} s,",
        f"# max {LONGEST:.2f} s, mean {MEAN:.2f} s, about 23.9 h (beta distribution, fixed seed {SEED}).",
        "# Made by: python benchmarks/make_durations.py",
    ]
    lines = header + [f"{s:.2f}" for s in seconds]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(
        f"{len(seconds)} durations -> {args.out}: min {seconds.min():.2f} s, max {seconds.max():.2f} s, "
        f"mean {seconds.mean():.3f} s, total {seconds.sum() / 3600:.2f} h, "
        f"between 4 and 10 s: {np.mean((seconds >= 4) & (seconds <= 10)):.0%}"
    )


if __name__ == "__main__":
    main()
