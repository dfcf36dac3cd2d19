"""Reading and writing the codec's `codec.pth`.

Upstream's loader (`fish_speech/models/dac/inference.py`, load_model) accepts a plain state dict, or
one nested under "state_dict"; when any key contains "generator" it keeps only the `generator.` keys,
prefix removed (a GAN training checkpoint). It then loads with strict=False, which silently ignores a
wrong file. We accept the same wrappers but check strictly, and say what is wrong."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tts_lib.common.fileio import atomic_write_with
from tts_lib.common.torch_files import torch_load_weights_only
from tts_lib.models.fish_speech.codec_transformer import CodecTransformer

if TYPE_CHECKING:
    from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig

CODEC_FILENAME = "codec.pth"
# Buffers computed from the config; a checkpoint saved without them still loads.
DERIVED_BUFFERS = ("freqs_cis", "causal_mask")
# Keys of the text-to-semantic model (model.pth), the file most easily passed by mistake.
TEXT_MODEL_KEYS = ("layers.0.attention.wqkv.weight", "embeddings.weight", "codebook_embeddings.weight")
MAX_LISTED = 5


def resolve_codec_path(path: Path) -> Path:
    """A checkpoint folder means the codec.pth inside it."""
    return path / CODEC_FILENAME if path.is_dir() else path


def read_codec_state(path: Path) -> dict[str, Tensor]:
    """Load `path` (weights only, memory-mapped) and unwrap it the way upstream's loader does."""
    if not path.is_file():
        raise FileNotFoundError(f"codec checkpoint {path} not found (expected codec.pth from openaudio-s1-mini)")
    try:
        obj = torch_load_weights_only(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path} could not be read as a weights-only PyTorch checkpoint: {err}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors (found {type(obj).__name__}); expected codec.pth")
    if any("generator" in k for k in obj):
        obj = {k.removeprefix("generator."): v for k, v in obj.items() if k.startswith("generator.")}
    return obj


def check_codec_state(path: Path, found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """One ValueError naming everything that keeps `found` from loading into the model."""
    keys = set(found)
    if any(k in keys or f"model.{k}" in keys for k in TEXT_MODEL_KEYS):
        raise ValueError(
            f"{path} is a Fish Speech text-to-semantic model (keys like layers.0.attention.wqkv.weight), "
            f"not the codec; pass the {CODEC_FILENAME} from the same checkpoint folder"
        )
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys):
        raise ValueError(
            f"{path} looks like fish-speech-1.5's firefly-gan-vq codec (backbone.*, head.* keys); "
            "FishCodec implements the S1-mini codec (codec.pth)"
        )
    missing = sorted(k for k in expected.keys() - keys if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS)
    unexpected = sorted(keys - expected.keys())
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
        for k in sorted(keys & expected.keys())
        if found[k].shape != expected[k].shape
    ]
    problems = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            problems.append(f"{len(items)} {what}: {', '.join(items[:MAX_LISTED])}{more}")
    if problems:
        raise ValueError(
            f"{path} does not match the codec config (expected {len(expected)} tensors, found {len(found)}); "
            + "; ".join(problems)
            + ". Is it an S1-mini codec.pth, and is the FishCodecConfig right?"
        )


def load_codec(cls: type[FishCodec], path: Path, config: FishCodecConfig, device: str | torch.device) -> FishCodec:
    path = resolve_codec_path(path)
    state = read_codec_state(path)
    # Built on the meta device: no memory or random init for weights that are replaced at once.
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()
    check_codec_state(path, state, expected)
    # assign=True keeps the memory-mapped tensors instead of copying; dtypes follow the model's.
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)  # strictness checked above
    for module in model.modules():
        if isinstance(module, CodecTransformer):
            module.rebuild_tables()
    return model.to(device).eval()


def save_codec(model: FishCodec, path: Path) -> Path:
    """Atomically write the state dict; a path without a suffix (or a folder) gets codec.pth inside."""
    if path.is_dir() or not path.suffix:
        path = path / CODEC_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_write_with(path, lambda f: torch.save(state, f))
