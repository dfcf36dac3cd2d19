"""Reading and writing the text-to-semantic model's weights, in every layout upstream produces.

Accepted by `load_state_dict_file`: a plain state dict (`model.pth` of a release or of upstream's
merge script) and a Lightning training checkpoint (`{"state_dict": {"model.<key>": ...}}`). Upstream
LoRA training (loralib) adds `<module>.lora_A` / `<module>.lora_B` next to the base weights, and its
Lightning checkpoints keep only those; `split_lora` separates them and `merge_loralib_lora` folds them
into the base weights. Every refusal is a ValueError that names the file, what was expected and what
was found.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tts_lib.common.fileio import atomic_write_with
from tts_lib.common.torch_files import torch_load_weights_only
from tts_lib.models.fish_speech.config import CONFIG_FILE, FishSpeechConfig

MODEL_FILE = "model.pth"
LIGHTNING_PREFIX = "model."
LORA_SUFFIXES = (".lora_A", ".lora_B")
# Top-level modules of the codec checkpoints (S1 `codec.pth`, 1.5's firefly generator).
CODEC_PREFIXES = ("encoder.", "quantizer.", "decoder.", "generator.", "backbone.", "head.")
SHOW = 8  # keys listed in an error before "and N more"


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def check_checkpoint_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a checkpoint folder with {CONFIG_FILE} and {MODEL_FILE}, found no folder")
    missing = [name for name in (CONFIG_FILE, MODEL_FILE) if not (folder / name).is_file()]
    if missing:
        has = sorted(p.name for p in folder.iterdir()) or "nothing"
        raise ValueError(
            f"{folder}: expected {CONFIG_FILE} and {MODEL_FILE} (a Fish Speech text-to-semantic checkpoint), "
            f"{' and '.join(missing)} missing; the folder has {has}"
        )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from `path`, memory-mapped: tensors are read from disk as they are touched.

    Unwraps Lightning checkpoints and their `model.` prefix, and drops `audio_*` weights as upstream's
    loader does (the dual_ar model has none)."""
    path = Path(path)
    try:
        obj = torch_load_weights_only(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{path}: expected a PyTorch state dict readable with weights_only=True, could not read it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors, found {type(obj).__name__}")
    if obj and all(k.startswith(LIGHTNING_PREFIX) for k in obj):
        obj = {k[len(LIGHTNING_PREFIX) :]: v for k, v in obj.items()}
    state = {k: v for k, v in obj.items() if "audio_" not in k}
    codec = [k for k in state if k.startswith(CODEC_PREFIXES)]
    if codec and "embeddings.weight" not in state:
        raise ValueError(
            f"{path}: expected the text-to-semantic model (keys like embeddings.weight, "
            f"layers.0.attention.wqkv.weight), found codec weights ({_listing(codec)}): "
            f"this is the codec checkpoint (codec.pth), not {MODEL_FILE}"
        )
    return state


def save_state_dict_file(state: Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename: never a half-written checkpoint."""
    path = Path(path)
    # A view into a bigger storage would save the whole storage: copy just those.
    plain = {
        k: v.detach().clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v.detach()
        for k, v in state.items()
    }
    return atomic_write_with(path, lambda f: torch.save(plain, f))


# ---- LoRA (loralib layout) ------------------------------------------------------------------


def split_lora(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(base weights, loralib `*.lora_A` / `*.lora_B` weights)."""
    lora = {k: v for k, v in state.items() if k.endswith(LORA_SUFFIXES)}
    return {k: v for k, v in state.items() if k not in lora}, lora


def merge_loralib_lora(
    base_state: Mapping[str, Tensor], lora_state: Mapping[str, Tensor], alpha: float, r: int
) -> dict[str, Tensor]:
    """Fold loralib adapters into a copy of the base weights, as loralib's eval-mode merge does.

    Linear: lora_A (r, in), lora_B (out, r), W (out, in) += B @ A * alpha / r.
    Embedding (names ending in `embeddings`): lora_A (r, num_embeddings), lora_B (dim, r),
    W (num_embeddings, dim) += (B @ A).T * alpha / r, since loralib looks rows up in A.T then
    multiplies by B.T. The sum is done in float32 and cast back to W's dtype."""
    merged = dict(base_state)
    modules = sorted({k.rsplit(".", 1)[0] for k in lora_state})
    for module in modules:
        a, b = lora_state.get(module + ".lora_A"), lora_state.get(module + ".lora_B")
        if a is None or b is None:
            raise ValueError(f"LoRA weights of {module}: expected lora_A and lora_B, found only one of them")
        weight = base_state.get(module + ".weight")
        if weight is None:
            raise ValueError(f"LoRA weights for {module}, but the base state dict has no {module}.weight")
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(
                f"{module}: expected rank r={r}, found lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}"
            )
        delta = b.float() @ a.float()  # (out, in) for a linear, (dim, num_embeddings) for an embedding
        if module.rsplit(".", 1)[-1].endswith("embeddings"):
            delta = delta.T
        if delta.shape != weight.shape:
            raise ValueError(
                f"{module}: LoRA update has shape {tuple(delta.shape)}, the base weight {tuple(weight.shape)}"
            )
        merged[module + ".weight"] = (weight.float() + delta * (alpha / r)).to(weight.dtype)
    return merged


# ---- consistency checks ---------------------------------------------------------------------

# Which config fields decide a parameter's shape, by key pattern (first match wins).
SHAPE_FIELDS = [
    (r"^embeddings\.", "vocab_size, dim"),
    (r"^codebook_embeddings\.", "codebook_size, num_codebooks, dim"),
    (r"^output\.", "vocab_size, dim"),
    (r"^fast_embeddings\.", "codebook_size, fast_dim"),
    (r"^fast_output\.", "codebook_size, fast_dim"),
    (r"^fast_project_in\.", "dim, fast_dim"),
    (r"^fast_layers\..*\.wqkv\.", "fast_n_head, fast_n_local_heads, fast_head_dim, fast_dim"),
    (r"^fast_layers\..*\.wo\.", "fast_n_head, fast_head_dim, fast_dim"),
    (r"^fast_layers\..*\.(q|k)_norm\.", "fast_head_dim"),
    (r"^fast_layers\..*\.feed_forward\.", "fast_intermediate_size, fast_dim"),
    (r"^fast_", "fast_dim"),
    (r"\.wqkv\.", "n_head, n_local_heads, head_dim, dim"),
    (r"\.wo\.", "n_head, head_dim, dim"),
    (r"\.(q|k)_norm\.", "head_dim"),
    (r"\.feed_forward\.", "intermediate_size, dim"),
    (r"", "dim"),
]
# Which config field decides whether a parameter exists at all.
PRESENCE_FIELDS = [
    (r"^output\.", "tie_word_embeddings"),
    (r"^fast_project_in\.", "fast_dim (fast_project_in exists only when fast_dim != dim)"),
    (r"^fast_layers\.\d+\.attention\.(q|k)_norm\.", "fast_attention_qk_norm"),
    (r"^layers\.\d+\.attention\.(q|k)_norm\.", "attention_qk_norm"),
    (r"^fast_layers\.\d+\.attention\.wqkv\.bias", "fast_attention_qkv_bias"),
    (r"^fast_layers\.\d+\.attention\.wo\.bias", "fast_attention_o_bias"),
    (r"^layers\.\d+\.attention\.wqkv\.bias", "attention_qkv_bias"),
    (r"^layers\.\d+\.attention\.wo\.bias", "attention_o_bias"),
    (r"^fast_layers\.", "n_fast_layer"),
    (r"^layers\.", "n_layer"),
]


def _field_for(key: str, table: list[tuple[str, str]]) -> str:
    return next((field for pattern, field in table if re.search(pattern, key)), "")


def check_state_dict(
    state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], config: FishSpeechConfig, source: str
) -> None:
    """Refuse LoRA leftovers, missing or unexpected keys, and shape mismatches, with the config
    fields to check."""
    _, lora = split_lora(state)
    if lora:
        only = "only LoRA weights" if len(lora) == len(state) else "LoRA weights"
        raise ValueError(
            f"{source}: expected a full model state dict, found {only} ({_listing(lora)}): an upstream LoRA "
            "checkpoint; load the base model's state, then split_lora() and merge_loralib_lora(base, lora, alpha, r)"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        fields = sorted({_field_for(k, PRESENCE_FIELDS) for k in missing + unexpected} - {""})
        parts = [f"missing {len(missing)} keys ({_listing(missing)})"] if missing else []
        parts += [f"unexpected {len(unexpected)} keys ({_listing(unexpected)})"] if unexpected else []
        raise ValueError(
            f"{source}: does not match its config: {'; '.join(parts)}. Check {', '.join(fields) or 'the config'} "
            f"(n_layer={config.n_layer}, n_fast_layer={config.n_fast_layer}, "
            f"tie_word_embeddings={config.tie_word_embeddings}, attention_qk_norm={config.attention_qk_norm})"
        )
    wrong = [k for k in sorted(expected) if state[k].shape != expected[k]]
    if wrong:
        lines = [
            f"{k}: expected {tuple(expected[k])}, found {tuple(state[k].shape)} (check {_field_for(k, SHAPE_FIELDS)})"
            for k in wrong[:SHOW]
        ]
        more = f"; and {len(wrong) - SHOW} more" if len(wrong) > SHOW else ""
        raise ValueError(f"{source}: shapes do not match its config: " + "; ".join(lines) + more)


def check_tokenizer(config: FishSpeechConfig, tokenizer: Any, source: str = "the tokenizer") -> None:
    """The tokenizer's ids must fit the model's vocabulary and its semantic tokens must be exactly the
    codec's codebook_size contiguous ids."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{source}: uses {tokenizer.vocab_size} token ids, but the model's vocab_size is {config.vocab_size}: "
            "tokenizer and model come from different checkpoints?"
        )
    n = len(tokenizer.semantic_ids)
    if n != config.codebook_size:
        raise ValueError(
            f"{source}: has {n} semantic tokens <|semantic:N|>, but the model's codebook_size is "
            f"{config.codebook_size}: tokenizer and model come from different checkpoints?"
        )
