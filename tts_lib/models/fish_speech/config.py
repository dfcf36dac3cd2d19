"""The text-to-semantic model's `config.json`, read and written exactly as upstream does.

Upstream (fish-speech 0.1.0, `BaseModelArgs.from_pretrained`) builds its dataclass with `cls(**data)`:
the accepted keys are its field names and nothing else, and `__post_init__` fills the derived
defaults. We accept the same key set, derive the same values, and write the resolved fields back the
way upstream's `save` does (all fields, sorted, indent 4), so upstream reads our file back to an
identical config. Only `model_type: dual_ar` (OpenAudio S1-mini, fish-speech-1.5) is supported.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_lib.common.fileio import atomic_write_text

CONFIG_FILE = "config.json"
SUPPORTED_MODEL_TYPE = "dual_ar"


def round_up(n: int, multiple: int) -> int:
    return n if n % multiple == 0 else n + multiple - n % multiple


@dataclass
class FishSpeechConfig:
    model_type: str = SUPPORTED_MODEL_TYPE

    # Slow transformer (one position per text token or codec frame)
    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    dim: int = 4096
    intermediate_size: int | None = None  # None: 2/3 * 4 * dim rounded up to a multiple of 256
    n_local_heads: int = -1  # key/value heads (GQA); -1: same as n_head
    head_dim: int | None = 64  # None: dim // n_head (the default really is 64, not derived)
    rope_base: float = 10000
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    dropout: float = 0.0  # on attention probabilities, training only
    tie_word_embeddings: bool = True
    attention_qkv_bias: bool = False
    attention_o_bias: bool = False
    attention_qk_norm: bool = False

    # Codebooks of the codec
    codebook_size: int = 160
    num_codebooks: int = 4

    # Kept for file compatibility; tts_lib turns checkpointing on with `model.gradient_checkpointing`.
    use_gradient_checkpointing: bool = True
    initializer_range: float = 0.02
    is_reward_model: bool = False
    scale_codebook_embeddings: bool = False

    # Fast transformer (one position per codebook of a frame); None: the slow counterpart
    n_fast_layer: int = 4
    fast_dim: int | None = None
    fast_n_head: int | None = None
    fast_n_local_heads: int | None = None
    fast_head_dim: int | None = None
    fast_intermediate_size: int | None = None
    fast_attention_qkv_bias: bool | None = None
    fast_attention_qk_norm: bool | None = None
    fast_attention_o_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.model_type != SUPPORTED_MODEL_TYPE:
            raise ValueError(unsupported_type_message(self.model_type, "the config"))
        if self.n_local_heads == -1:
            self.n_local_heads = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = round_up(int(2 * 4 * self.dim / 3), 256)
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_head
        # Upstream uses `or` for the sizes (0 also means "inherit") and `is None` for the flags.
        self.fast_dim = self.fast_dim or self.dim
        self.fast_n_head = self.fast_n_head or self.n_head
        self.fast_n_local_heads = self.fast_n_local_heads or self.n_local_heads
        if self.fast_n_local_heads == -1:
            # Upstream leaves -1 here and then fails building the layer; read it like n_local_heads.
            self.fast_n_local_heads = self.fast_n_head
        self.fast_head_dim = self.fast_head_dim or self.head_dim
        self.fast_intermediate_size = self.fast_intermediate_size or self.intermediate_size
        for flag in ("attention_qkv_bias", "attention_qk_norm", "attention_o_bias"):
            if getattr(self, "fast_" + flag) is None:
                setattr(self, "fast_" + flag, getattr(self, flag))
        self._check()

    def _check(self) -> None:
        if self.is_reward_model:
            raise ValueError("is_reward_model: true is not supported (upstream has no reward head for dual_ar)")
        for prefix in ("", "fast_"):
            dim, heads, kv_heads = (getattr(self, prefix + k) for k in ("dim", "n_head", "n_local_heads"))
            if dim % heads != 0:  # upstream asserts the same
                raise ValueError(f"{prefix}dim ({dim}) must be a multiple of {prefix}n_head ({heads})")
            if kv_heads <= 0 or heads % kv_heads != 0:
                raise ValueError(f"{prefix}n_head ({heads}) must be a multiple of {prefix}n_local_heads ({kv_heads})")
            if getattr(self, prefix + "head_dim") % 2 != 0:
                raise ValueError(f"{prefix}head_dim must be even: rotary embeddings rotate pairs of elements")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the config") -> FishSpeechConfig:
        if "model_type" not in data:
            raise ValueError(f"{source}: no model_type; {unsupported_type_message(None, source)}")
        if data["model_type"] != SUPPORTED_MODEL_TYPE:
            raise ValueError(unsupported_type_message(data["model_type"], source))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown keys {unknown}; a dual_ar config.json has only {sorted(known)} "
                "(upstream fish-speech refuses unknown keys too)"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FishSpeechConfig:
        """Read `config.json`, or `<folder>/config.json` when given a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a Fish Speech checkpoint folder has {CONFIG_FILE}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: expected a JSON object, could not parse it ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as upstream's `BaseModelArgs.save` does: every resolved field, sorted, indent 4."""
        text = json.dumps(self.to_dict(), indent=4, sort_keys=True, ensure_ascii=False)
        return atomic_write_text(path, text)


# OpenAudio S1-mini's config.json (as published on the hub; docs/fish-speech.md): the shape the memory plan and
# the benchmarks build with random weights.
S1_MINI_CONFIG = dict(
    vocab_size=155776, n_layer=28, n_head=16, n_local_heads=8, dim=1024, head_dim=128, intermediate_size=3072,
    rope_base=1e6, norm_eps=1e-6, max_seq_len=8192, tie_word_embeddings=False, attention_qk_norm=True,
    codebook_size=4096, num_codebooks=10, scale_codebook_embeddings=True, n_fast_layer=4, fast_dim=1024,
    fast_n_head=16, fast_n_local_heads=8, fast_head_dim=64, fast_intermediate_size=3072, fast_attention_qk_norm=False,
)  # fmt: skip


def unsupported_type_message(found: object, source: str) -> str:
    return (
        f"{source}: model_type {found!r} is not supported; tts_lib supports {SUPPORTED_MODEL_TYPE!r} "
        "(OpenAudio S1-mini, fish-speech-1.5)"
    )
