"""Figures saved as PNG in the run folder and returned for inline display in notebooks."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from tts_lib.validate import ValidationReport


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
    fig.savefig(path, dpi=110)
    plt.close(fig)  # the caller displays it; closing keeps Jupyter from drawing it twice
    return fig
