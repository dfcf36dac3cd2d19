from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tts_lib.common.config_io import apply_overrides, config_to_dict, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    head_lr: float | None = None


@dataclass
class Train:
    max_steps: int = 1000
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    compile: bool = False
    milestones: tuple[int, ...] = ()
    tags: list[str] = field(default_factory=list)
    out_dir: Path = Path("runs")

    def __post_init__(self) -> None:
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, found {self.max_steps}")


@dataclass
class Root:
    name: str = "run"
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    extra: Optim | None = None


def test_defaults_and_nested_values():
    cfg = load_config(Root, {"optim": {"lr": 3, "betas": [0.8, 0.9]}, "train": {"milestones": [10, 20]}})
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.milestones == (10, 20)
    assert cfg.train.max_steps == 1000 and cfg.name == "run" and cfg.extra is None


def test_yaml_file_and_scientific_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4  # YAML 1.1 reads this as a string\nextra:\n  head_lr: 2.0e-5\n")
    cfg = load_config(Root, path)
    assert cfg.optim.lr == 1e-4 and cfg.extra == Optim(head_lr=2e-5)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Root, empty) == Root()


def test_unknown_key_names_file_path_and_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_step: 5\n")
    with pytest.raises(ValueError) as e:
        load_config(Root, path)
    msg = str(e.value)
    assert str(path) in msg and "'train.max_step'" in msg and "max_steps" in msg and "precision" in msg


@pytest.mark.parametrize(
    "data, key, found",
    [
        ({"train": {"max_steps": 1.5}}, "train.max_steps", "1.5"),
        ({"train": {"max_steps": True}}, "train.max_steps", "True"),  # a bool is not an int
        ({"train": {"compile": "yes"}}, "train.compile", "'yes'"),
        ({"optim": {"lr": False}}, "optim.lr", "False"),
        ({"optim": {"betas": [0.9]}}, "optim.betas", "[0.9]"),
        ({"name": 3}, "name", "3"),
        ({"optim": 3}, "optim", "3"),
        ({"train": {"tags": ["a", 1]}}, "train.tags[1]", "1"),
    ],
)
def test_wrong_types_name_the_key(data, key, found):
    with pytest.raises(ValueError) as e:
        load_config(Root, data, where="test.yaml")
    msg = str(e.value)
    assert msg.startswith("test.yaml:") and f"'{key}'" in msg and found in msg


def test_literal_choices():
    assert load_config(Root, {"train": {"precision": "fp16"}}).train.precision == "fp16"
    with pytest.raises(ValueError, match="must be one of 'bf16', 'fp16', 'fp32'"):
        load_config(Root, {"train": {"precision": "fp8"}})


def test_post_init_errors_say_where():
    with pytest.raises(ValueError, match=r"cfg.yaml: train: max_steps must be > 0"):
        load_config(Root, {"train": {"max_steps": 0}}, where="cfg.yaml")


def test_round_trip(tmp_path):
    cfg = Root(name="x", optim=Optim(lr=2e-4), train=Train(milestones=(5, 9), tags=["a"]), extra=Optim(head_lr=1.0))
    plain = config_to_dict(cfg)
    assert plain["train"]["milestones"] == [5, 9] and plain["train"]["out_dir"] == "runs"
    path = save_config(cfg, tmp_path / "sub" / "cfg.yaml")
    assert load_config(Root, path) == cfg
    assert load_config(Root, plain) == cfg


def test_overrides():
    cfg = apply_overrides(Root(), ["optim.lr=1e-4", "train.max_steps=100", "train.milestones=[1, 2]", "extra.lr=3"])
    assert cfg.optim.lr == 1e-4 and cfg.train.max_steps == 100 and cfg.train.milestones == (1, 2)
    assert cfg.extra == Optim(lr=3.0)
    assert Root().train.max_steps == 1000  # the original is untouched
    assert apply_overrides(cfg, ["extra=null"]).extra is None


def test_bad_overrides():
    with pytest.raises(ValueError, match=r"unknown key 'optim.lrr'.*valid keys here: lr, betas, head_lr"):
        apply_overrides(Root(), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides(Root(), ["optim.lr"])
    with pytest.raises(ValueError, match=r"'train.max_steps' expects int, found 'many'"):
        apply_overrides(Root(), ["train.max_steps=many"])
