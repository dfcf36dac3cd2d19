"""The live loss plot: phases, throttled in-place redraws when interactive, nothing shown headless, the PNG."""

import pytest

from tts_lib.training.live_plot import LossPlot


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeHandle:
    def __init__(self):
        self.updates = 0

    def update(self, fig):
        self.updates += 1


@pytest.fixture
def displayed(monkeypatch):
    """Every IPython display() call, recorded; returns one handle so updates can be counted."""
    calls, handle = [], FakeHandle()

    def display(obj, display_id=False):
        calls.append(obj)
        return handle if display_id else None

    monkeypatch.setattr("IPython.display.display", display)
    return calls, handle


def test_rows_are_split_into_phases_when_the_step_count_restarts():
    plot = LossPlot(interactive=False)
    for step in (1, 2):
        plot({"step": step, "loss": 3.0 - step, "lr": 1e-4})
    plot({"step": 3, "loss": 0.0, "val_loss": 0.7})  # train() puts validation in the step's own row
    for step in (1, 2):  # phase two (two_phase mode) counts from 1 again
        plot({"step": step, "loss": 1.0})
    assert len(plot.phases) == 2
    assert plot.phases[0]["loss"][:3] == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert plot.phases[0]["val_loss"] == [(3, 0.7)]
    assert plot.phases[1]["loss"] == [(1, 1.0), (2, 1.0)]


def test_interactive_redraws_in_place_at_most_every_few_seconds(displayed):
    calls, handle = displayed
    clock = FakeClock()
    plot = LossPlot(interactive=True, every=3.0, clock=clock)
    for step in range(1, 11):  # ten rows one second apart: draws at t=1, 4, 7, 10
        clock.now = float(step)
        plot({"step": step, "loss": 1.0 / step})
    assert len(calls) == 1  # one output cell, created once
    assert handle.updates == 3  # then updated in place
    assert plot.draws == 4


def test_headless_shows_nothing_but_saves_the_curve(displayed, tmp_path):
    calls, handle = displayed
    plot = LossPlot(interactive=False)
    for step in range(1, 6):
        plot({"step": step, "loss": 5.0 - step, "val_loss": 5.5 - step})
    path = plot.save(tmp_path / "run" / "loss.png")
    assert calls == [] and handle.updates == 0 and plot.draws == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_default_follows_the_progress_setting(monkeypatch):
    monkeypatch.setenv("TTS_LIB_PROGRESS", "plain")
    assert LossPlot().interactive is False
    monkeypatch.setenv("TTS_LIB_PROGRESS", "bar")
    assert LossPlot().interactive is True


def test_figure_has_a_line_per_phase_and_metric():
    plot = LossPlot(interactive=False)
    for phase in range(2):
        for step in (1, 2):
            plot({"step": step, "loss": 1.0 + phase, **({"val_loss": 2.0} if step == 2 else {})})
    labels = [line.get_label() for line in plot.figure().axes[0].lines]
    assert labels == ["phase 1 train", "phase 1 validation", "phase 2 train", "phase 2 validation"]
