import numpy as np
from conftest import write_audio
from PIL import Image

from tts_lib.manifest import Item
from tts_lib.plots import plot_dataset
from tts_lib.validate import validate_items


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
