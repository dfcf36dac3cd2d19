"""Training metrics: metrics.jsonl, TensorBoard, a progress bar or plain lines, and a per-row hook.

`TrainLog` is written once per optimiser step by `train()`. Only rank 0 should make one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Set to "plain" to force plain lines (e.g. papermill runs), or "bar" to force the tqdm bar.
PROGRESS_ENV = "TTS_LIB_PROGRESS"


def detect_interactive() -> bool:
    """True when a person is likely watching a Jupyter notebook, so a live progress bar is worth drawing.

    Rule: an IPython kernel is loaded (`"ipykernel" in sys.modules`) and ipywidgets is installed (the bar is a
    widget), unless $TTS_LIB_PROGRESS says otherwise.
    Papermill cannot be told apart from inside the kernel (it starts an ordinary ipykernel and sets no variable,
    and the kernel's stdout is a ZMQ stream, never a TTY), so headless papermill runs should export
    TTS_LIB_PROGRESS=plain; the kernel inherits it and `--log-output` then gets readable lines, not widget state.
    """
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("plain", "bar"):
        return forced == "bar"
    # Without ipywidgets tqdm.auto's notebook bar is red stderr text under an "IProgress not found" warning.
    return "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None


@contextmanager
def progress_bar(desc: str, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A `progress(done, total)` callback drawing a tqdm bar when a person watches a notebook (detect_interactive),
    else None: headless logs get the caller's plain lines instead."""
    if not detect_interactive():
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def peak_memory_mb() -> float:
    """Peak CUDA memory allocated by torch when CUDA is in use, else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _open_tensorboard(log_dir: Path, resume_step: int) -> Any:
    """A SummaryWriter, or None when the optional tensorboard package is missing (metrics.jsonl has every row
    anyway; the README says how to turn TensorBoard on, so a run does not print it every time)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # purge_step hides the old events of steps a resumed run redoes, as the jsonl truncation does.
    return SummaryWriter(log_dir=str(log_dir), purge_step=resume_step + 1 if resume_step > 0 else None)


def _floats(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, float)}


class TrainLog:
    """metrics.jsonl (every step), TensorBoard scalars, progress display and a hook called with every row.

    Headless: a plain line at most every `every` seconds, and always for validation rows and the last step.
    Interactive: a tqdm bar with loss and lr, and validation rows as lines above it.
    """

    def __init__(
        self,
        run_dir: Path,
        resume_step: int,
        every: float,
        hook: Callable[[dict], None] | None = None,
        interactive: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        # Steps after the checkpoint we resume from are redone: drop their old lines so each step appears once.
        kept = [line for line in self._lines() if json.loads(line).get("step", 0) <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.every, self.hook, self.clock = every, hook, clock
        self.last_print: float | None = None
        self.interactive = detect_interactive() if interactive is None else interactive
        self.writer = _open_tensorboard(run_dir / "tensorboard", resume_step)
        self.bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(initial=resume_step, unit="step", dynamic_ncols=True)

    def _lines(self) -> list[str]:
        return [ln for ln in self.path.read_text().splitlines() if ln.strip()] if self.path.exists() else []

    def write(self, row: dict, total_steps: int) -> None:
        row = {**row, "peak_memory_mb": peak_memory_mb()}
        step = row["step"]
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for name, value in _floats(row).items():
                self.writer.add_scalar(name, value, step)
        if self.hook:
            self.hook(row)
        if self.bar is not None:
            self._show_bar(row, total_steps)
        else:
            self._show_line(row, total_steps)

    def _show_bar(self, row: dict, total_steps: int) -> None:
        from tqdm.auto import tqdm

        self.bar.total = total_steps  # known only here; setting it each step is cheap
        self.bar.update(row["step"] - self.bar.n)
        loss, lr = row.get("loss", float("nan")), row.get("lr", 0.0)
        self.bar.set_postfix_str(f"loss {loss:.4g} lr {lr:.3g}", refresh=False)
        if "val_loss" in row:
            tqdm.write(self._format(row, total_steps))

    def _show_line(self, row: dict, total_steps: int) -> None:
        now = self.clock()
        due = self.last_print is None or now - self.last_print >= self.every
        if due or "val_loss" in row or row["step"] == total_steps:
            self.last_print = now
            print(self._format(row, total_steps), flush=True)

    @staticmethod
    def _format(row: dict, total_steps: int) -> str:
        shown = " ".join(f"{k} {v:.4g}" for k, v in _floats(row).items())
        return f"step {row['step']}/{total_steps} {shown}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()  # flushes pending events
            self.writer = None

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
