import json
import sys
from pathlib import Path

import pytest

from tts_lib.training.train_log import PROGRESS_ENV, TrainLog, detect_interactive


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(step: int, **extra: float) -> dict:
    return {"step": step, "loss": 2.0 / step, "lr": 1e-4, **extra}


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_jsonl_rows_have_peak_memory_and_resume_drops_redone_steps(tmp_path):
    with TrainLog(tmp_path, 0, every=60, interactive=False) as log:
        for step in range(1, 6):
            log.write(row(step), total_steps=10)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == 2.0 and first["peak_memory_mb"] > 0

    # Resume from the checkpoint at step 3: steps 4 and 5 are redone and must appear once.
    with TrainLog(tmp_path, 3, every=60, interactive=False) as log:
        for step in range(4, 8):
            log.write(row(step), total_steps=10)
    assert steps_in(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]


def test_plain_lines_are_rate_limited_but_validation_and_last_step_always_show(tmp_path, capsys):
    clock = FakeClock()
    with TrainLog(tmp_path, 0, every=10, interactive=False, clock=clock) as log:
        for step in range(1, 9):
            clock.now += 3  # a line is due every fourth step
            extra = {"val_loss": 1.5} if step == 2 else {}
            log.write(row(step, **extra), total_steps=8)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/8", "2/8", "6/8", "8/8"]
    assert "val_loss 1.5" in lines[1]


def test_hook_gets_every_row(tmp_path):
    seen = []
    with TrainLog(tmp_path, 0, every=60, hook=seen.append, interactive=False) as log:
        for step in range(1, 4):
            log.write(row(step), total_steps=3)
    assert [r["step"] for r in seen] == [1, 2, 3]
    assert "peak_memory_mb" in seen[0]


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TrainLog(tmp_path, 0, every=60, interactive=False) as log:
        for step in range(1, 4):
            log.write(row(step), total_steps=3)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "peak_memory_mb"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert loss[1].value == pytest.approx(1.0)


def test_resumed_run_hides_the_redone_steps_in_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TrainLog(tmp_path, 0, every=60, interactive=False) as log:
        for step in range(1, 6):
            log.write(row(step), total_steps=6)
    with TrainLog(tmp_path, 3, every=60, interactive=False) as log:
        for step in range(4, 7):
            log.write(row(step, loss=9.0), total_steps=6)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")][2:] == [
        (3, pytest.approx(2 / 3)),
        (4, 9.0),
        (5, 9.0),
        (6, 9.0),
    ]


def test_missing_tensorboard_turns_it_off_quietly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with TrainLog(tmp_path, 0, every=60, interactive=False) as log:
        log.write(row(1), total_steps=1)
    assert "TensorBoard" not in capsys.readouterr().out  # optional: not worth a line in every run's log
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "metrics.jsonl").is_file()


def test_interactive_mode_draws_a_bar_and_prints_validation_through_tqdm(tmp_path, capsys):
    with TrainLog(tmp_path, 2, every=60, interactive=True) as log:
        for step in range(3, 6):
            extra = {"val_loss": 0.75} if step == 4 else {}
            log.write(row(step, **extra), total_steps=5)
    out, err = capsys.readouterr()
    assert "5/5" in err  # the bar, on stderr
    assert "step 4/5" in out and "val_loss 0.75" in out  # tqdm.write goes to stdout
    assert "step 3/5" not in out  # no per-step lines under the bar


def test_detect_interactive_follows_the_environment_override(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "plain")
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert detect_interactive() is False
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    assert detect_interactive() is True
    monkeypatch.delenv(PROGRESS_ENV)
    assert detect_interactive() is True
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed: tqdm's notebook bar would not draw
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "ipywidgets" else object())
    assert detect_interactive() is False
