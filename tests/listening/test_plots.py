import json

import numpy as np
import pytest
from conftest import write_audio
from PIL import Image

from tts_lib.data.manifest import Item
from tts_lib.data.validate import validate_items
from tts_lib.listening.plots import plot_dataset, plot_training


def test_dataset_plot_is_a_nonempty_image(tmp_path):
    items = [
        Item(f"{s}/{k}", str(write_audio(tmp_path / f"{s}{k}.wav", 0.5 + k * 0.3, seed=k)), "Hyvää päivää", s)
        for s in ("a", "b")
        for k in range(4)
    ]
    path = tmp_path / "dataset.png"
    plot_dataset(validate_items(items), path)
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[1] > 600 and image.std() > 10  # not a blank canvas


def write_metrics(path, validation: bool):
    rows = []
    for step in range(1, 11):
        row = {"step": step, "loss": 5.0 / step, "lr": 1e-4 * min(1, step / 3), "grad_norm": 1.0 + step % 3,
               "tokens_per_s": 900.0 + step, "items_per_s": 3.0, "epoch": 0, "peak_memory_mb": 100.0}  # fmt: skip
        if validation and step % 5 == 0:
            row |= {"val_loss": 6.0 / step, "val_slow_loss": 2.0 / step, "val_codebook_loss": 4.0 / step,
                    "val_top1": 0.1, "val_top5": 0.3}  # fmt: skip
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + '\n{"step": 11, "lo')  # a line cut off by a crash is skipped
    return path


@pytest.mark.parametrize("validation", [True, False])
def test_training_plot_has_four_panels_with_or_without_validation(tmp_path, validation):
    path = tmp_path / "training.png"
    fig = plot_training(write_metrics(tmp_path / "metrics.jsonl", validation), path)
    assert len(fig.axes) == 4
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == (
        ["train loss", "val_loss", "val_slow_loss", "val_codebook_loss"] if validation else ["train loss"]
    )
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[1] > 600 and image.std() > 10
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
