"""Figures saved as PNG in the run folder and returned for inline display in notebooks.

    plot_dataset(report, "runs/v1/dataset.png")                         # durations, minutes per speaker
    plot_training("runs/v1/train/metrics.jsonl", "runs/v1/train/training.png")  # losses, lr, grad norm, speed

Files are written atomically (a reader, or a second writer of the same plot, never sees half a PNG).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.pyplot as plt

from tts_lib.common.fileio import atomic_write_bytes
from tts_lib.data.validate import ValidationReport

TRAINING_PLOT = "training.png"
VAL_KEYS = ("val_loss", "val_slow_loss", "val_codebook_loss")


def save_png(fig, path: str | Path) -> Path:
    """`fig` as a PNG at `path`, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_dataset(report: ValidationReport, path: str | Path):
    """Duration histogram and minutes per speaker side by side; saves to `path`, returns the figure."""
    durations = [i.duration for i in report.items if i.duration]
    minutes = report.summary["minutes_per_speaker"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    left.hist(durations, bins=min(40, max(5, len(durations) // 3)), color="#4c72b0")
    left.set(title=f"Clip durations ({len(durations)} clips)", xlabel="seconds", ylabel="clips")
    speakers = list(minutes)[:30]  # the 30 largest; the rest would be unreadable
    right.barh(speakers[::-1], [minutes[s] for s in speakers][::-1], color="#55a868")
    right.set(title="Audio per speaker", xlabel="minutes")
    save_png(fig, path)
    plt.close(fig)  # the caller displays it; closing keeps Jupyter from drawing it twice
    return fig


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl; a line cut off by a crash is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that have a number for `key` (validation keys are on some rows only)."""
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_training(metrics_path: str | Path, out_png: str | Path):
    """Train and validation losses, learning rate, gradient norm and tokens/s over steps of one run
    folder's metrics.jsonl (a two-phase run has one per phase); saves to `out_png`, returns the figure."""
    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    loss, lr, grad, speed = axes.flat
    loss.plot(*_series(rows, "loss"), color="#4c72b0", alpha=0.6, label="train loss")
    for key, color in zip(VAL_KEYS, ("#c44e52", "#8172b2", "#55a868"), strict=True):
        steps, values = _series(rows, key)
        if steps:  # runs without a validation split have no val rows
            loss.plot(steps, values, "o-", color=color, markersize=3, label=key)
    loss.set(title="Loss", xlabel="step")
    loss.legend(fontsize=8)
    for ax, key, title in ((lr, "lr", "Learning rate"), (grad, "grad_norm", "Gradient norm"),
                           (speed, "tokens_per_s", "Tokens per second")):  # fmt: skip
        ax.plot(*_series(rows, key), color="#4c72b0")
        ax.set(title=title, xlabel="step")
    fig.suptitle(f"{Path(metrics_path).parent.name}: {len(rows)} steps")
    save_png(fig, out_png)
    plt.close(fig)  # as plot_dataset: the caller displays the returned figure
    return fig


def plot_run(run_dir: str | Path) -> Path:
    """`run_dir/training.png` from `run_dir/metrics.jsonl`; returns the PNG's path."""
    run_dir = Path(run_dir)
    plot_training(run_dir / "metrics.jsonl", run_dir / TRAINING_PLOT)
    return run_dir / TRAINING_PLOT
