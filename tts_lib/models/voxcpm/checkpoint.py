"""VoxCPM2's checkpoint folder, as the hub publishes it, read strictly and written in the same layout.

    from tts_lib.models.voxcpm.checkpoint import load_weights, save_folder
    state = load_weights(folder / "model.safetensors", expected=model.state_dict().keys())

The folder: `config.json`, `model.safetensors` (or `pytorch_model.bin`) with the LM stack, `audiovae.safetensors` (or
`audiovae.pth`) with the audio VAE, and the tokenizer files. Upstream loads the weights with `strict=False`, so a
checkpoint of another shape loads half-random without a word; here a missing or unexpected key is one error naming
the file and the keys. `.pth`/`.bin` files are read with weights_only=True.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from tts_lib.common.fileio import atomic_copy, atomic_write_bytes
from tts_lib.common.torch_files import torch_load_weights_only

CONFIG_FILE = "config.json"
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")  # the first present is read; we write the first
VAE_FILES = ("audiovae.safetensors", "audiovae.pth")
# copied as they are; the hub's tokenizer_config.json names its own class in tokenization_voxcpm2.py (read by
# transformers' AutoTokenizer with trust_remote_code only; we and upstream read tokenizer.json directly)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenization_voxcpm2.py")
VAE_PREFIX = "audio_vae."  # upstream's model keeps the VAE under this name; its weights live in their own file
SHOW = 6  # keys named in an error


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def find_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    has = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
    raise FileNotFoundError(f"{folder}: expected {what} ({' or '.join(names)}), found none; the folder has {has}")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors or torch file (a Lightning-style {"state_dict": ...} unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        obj = torch_load_weights_only(path)
    except (SafetensorError, RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"{path}: expected a weights file, could not read it ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors, found {type(obj).__name__}")
    return obj


def load_weights(path: Path, expected: Iterable[str], ignore_prefix: str | None = None) -> dict[str, Tensor]:
    """`path`'s tensors, checked to be exactly the `expected` keys (keys under `ignore_prefix` dropped)."""
    state = read_state_dict(path)
    if ignore_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefix)}
    expected = set(expected)
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: expected exactly the weights of the model config.json describes; missing "
            f"{_listing(missing) or 'none'}; unexpected {_listing(unexpected) or 'none'}: the file belongs to a "
            "model of another shape or version (check config.json beside it)"
        )
    return state


def check_shapes(path: Path, state: dict[str, Tensor], model: torch.nn.Module) -> None:
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (config: {tuple(own[k].shape)})" for k, v in state.items()
             if tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
    if wrong:
        raise ValueError(f"{path}: tensor shapes differ from what config.json describes: {_listing(wrong)}")


def save_weights(state: dict[str, Tensor], path: Path) -> Path:
    """safetensors, atomically; tensors made contiguous and unshared (safetensors refuses views)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return atomic_write_bytes(path, save(plain))


def copy_passthrough(source: Path, out: Path) -> None:
    """The VAE's weights and the tokenizer files, unchanged (fine-tuning changes neither)."""
    vae = find_file(source, VAE_FILES, "the audio VAE's weights")
    for path in (vae, *(source / name for name in TOKENIZER_FILES)):
        if path.is_file() and not (out / path.name).exists():
            atomic_copy(path, out / path.name)
