"""A live loss plot for Jupyter, fed by train()'s on_metrics hook: used by notebooks/finetune.ipynb.

    from tts_lib.training.live_plot import LossPlot

    plot = LossPlot()  # draws in the notebook; headless (TTS_LIB_PROGRESS=plain) it only collects
    results = run_plan(plan, on_metrics=plot)
    plot.save("runs/v1/loss.png")  # the whole curve, every phase

The figure is redrawn in place through one IPython display handle, at most every `every` seconds,
so a fast run does not spend its time drawing. A run with two phases (two_phase mode) restarts
its step count; each phase becomes its own pair of lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from tts_lib.training.train_log import detect_interactive


class LossPlot:
    """Call it with each metrics row ({"step", "loss", optional "val_loss", ...}); it keeps every
    phase's training and validation losses and, when interactive, redraws one figure in place."""

    def __init__(
        self, interactive: bool | None = None, every: float = 3.0, clock: Callable[[], float] = time.monotonic
    ):
        self.interactive = detect_interactive() if interactive is None else interactive
        self.every, self.clock = every, clock
        self.phases: list[dict[str, list[tuple[int, float]]]] = []
        self.last_draw: float | None = None
        self.handle = None  # IPython DisplayHandle, made at the first draw
        self.draws = 0

    def __call__(self, row: dict) -> None:
        step = int(row["step"])
        if not self.phases or step <= self._last_step():  # the step count restarted: a new phase
            self.phases.append({"loss": [], "val_loss": []})
        phase = self.phases[-1]
        for key in ("loss", "val_loss"):
            value = row.get(key)
            if isinstance(value, int | float):
                phase[key].append((step, float(value)))
        if not phase["loss"] or phase["loss"][-1][0] != step:  # keep the step order even without a loss
            phase["loss"].append((step, float("nan")))
        now = self.clock()
        if self.interactive and (self.last_draw is None or now - self.last_draw >= self.every):
            self.last_draw = now
            self.draw()

    def _last_step(self) -> int:
        return self.phases[-1]["loss"][-1][0] if self.phases and self.phases[-1]["loss"] else 0

    def figure(self):
        """The loss curves as a new matplotlib figure (closed: display or save it)."""
        fig, ax = plt.subplots(figsize=(8, 3.5), constrained_layout=True)
        several = len(self.phases) > 1
        for n, phase in enumerate(self.phases, start=1):
            label = f"phase {n} " if several else ""
            for key, style in (("loss", "-"), ("val_loss", "o--")):
                if phase[key]:
                    steps, values = zip(*phase[key])
                    ax.plot(steps, values, style, label=f"{label}{'train' if key == 'loss' else 'validation'}")
        ax.set(xlabel="step", ylabel="loss", title="Training loss")
        if self.phases:
            ax.legend(loc="upper right")
        plt.close(fig)  # shown through the display handle or saved; never drawn twice by the inline backend
        return fig

    def draw(self) -> None:
        """Redraw in place in the notebook (one output, updated); does nothing when headless."""
        if not self.interactive:
            return
        from IPython.display import display

        fig = self.figure()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        self.draws += 1

    def save(self, path: str | Path) -> Path:
        """Write the whole curve as a PNG (and draw it a last time when interactive); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=110)
        self.draw()
        return path
