"""VoxCPM2's config.json, read into typed dataclasses: VoxCPM2Config.from_file("checkpoints/voxcpm2/config.json")

The file as the hub publishes it: the language model's settings (`lm_config`, a MiniCPM-4 transformer), the patch
size and latent width, the residual LM, the scalar quantiser, the local encoder and the local DiT with its
flow-matching settings, and the audio VAE's. Upstream validates it with pydantic and ignores keys it does not know;
here a key we do not know is kept (and written back unchanged by `to_dict`) and listed in `unknown_keys`, so a
newer checkpoint is not refused for a harmless addition, and a missing required key is one error naming it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURE = "voxcpm2"  # config.json's "architecture": what names a VoxCPM2 folder


@dataclass
class RopeScaling:
    type: str  # "longrope"
    long_factor: list[float]  # per rotary frequency: used when max_position_embeddings > the original
    short_factor: list[float]  # ... otherwise
    original_max_position_embeddings: int


@dataclass
class LMConfig:
    """A MiniCPM-4 transformer. The residual LM, the local encoder and the local DiT are copies of it with some
    fields replaced (`replace`), exactly as upstream derives them."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    num_key_value_heads: int
    vocab_size: int  # 0: no token embedding (the residual LM, the encoder, the DiT take vectors)
    rope_scaling: RopeScaling
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    scale_emb: float  # token embeddings are multiplied by it when use_mup
    scale_depth: float  # each residual branch is multiplied by scale_depth / sqrt(num_hidden_layers) when use_mup
    dim_model_base: int  # recorded (muP's base width); the forward does not use it
    bos_token_id: int
    eos_token_id: int
    use_mup: bool = True
    kv_channels: int | None = None  # the head dimension; None: hidden_size // num_attention_heads
    no_rope: bool = False  # True: no rotary position embedding at all

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


@dataclass
class EncoderConfig:
    hidden_dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_layers: int = 4
    kv_channels: int | None = None


@dataclass
class CfmConfig:
    """Flow matching: how training draws timesteps and drops conditioning, and how inference solves."""

    sigma_min: float = 1e-6
    solver: str = "euler"
    t_scheduler: str = "log-norm"  # timesteps: sigmoid of N(-0.4, 1) ("uniform": U(0, 1))
    training_cfg_rate: float = 0.1  # share of patches trained without the LM's conditioning (for guidance)
    inference_cfg_rate: float = 1.0
    reg_loss_type: str = "l1"
    ratio_r_neq_t_range: list[float] = field(default_factory=lambda: [0.25, 0.75])  # mean mode only
    noise_cond_prob_range: list[float] = field(default_factory=lambda: [0.0, 0.0])  # noisy previous patch
    noise_cond_scale: float = 0.0


@dataclass
class DitConfig(EncoderConfig):
    dit_mean_mode: bool = False  # mean-flow training (not used by VoxCPM2's released configs)
    cfm_config: CfmConfig = field(default_factory=CfmConfig)


@dataclass
class VoxCPM2Config:
    lm_config: LMConfig
    encoder_config: EncoderConfig
    dit_config: DitConfig
    patch_size: int = 4  # latent frames per LM position
    feat_dim: int = 64  # latent values per frame
    residual_lm_num_layers: int = 8
    residual_lm_no_rope: bool = False
    scalar_quantization_latent_dim: int = 512
    scalar_quantization_scale: int = 9
    audio_vae_config: dict[str, Any] | None = None  # the audio VAE's settings (tts_lib.models.voxcpm.vae)
    max_length: int = 8192  # upstream's KV-cache length for generation
    device: str = "cuda"  # upstream's runtime choices, kept for the file's sake
    dtype: str = "bfloat16"
    extra: dict[str, Any] = field(default_factory=dict)  # keys this reader does not know, kept as they were

    @property
    def unknown_keys(self) -> list[str]:
        return sorted(self.extra)

    def residual_lm(self) -> LMConfig:
        return dataclasses.replace(self.lm_config, num_hidden_layers=self.residual_lm_num_layers, vocab_size=0,
                                   no_rope=self.residual_lm_no_rope)  # fmt: skip

    def local(self, sub: EncoderConfig) -> LMConfig:
        """The LM config of the local encoder or DiT: upstream's copy of lm_config with the sub-config's sizes
        (num_key_value_heads stays the LM's)."""
        return dataclasses.replace(self.lm_config, hidden_size=sub.hidden_dim, intermediate_size=sub.ffn_dim,
                                   num_attention_heads=sub.num_heads, num_hidden_layers=sub.num_layers,
                                   kv_channels=sub.kv_channels, vocab_size=0)  # fmt: skip

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> VoxCPM2Config:
        extra: dict[str, Any] = {}
        try:
            top = _known(cls, raw, "", extra)
            lm = _known(LMConfig, top.pop("lm_config"), "lm_config.", extra)
            rope = _known(RopeScaling, lm["rope_scaling"], "lm_config.rope_scaling.", extra)
            lm["rope_scaling"] = RopeScaling(**rope)
            dit = _known(DitConfig, top.pop("dit_config"), "dit_config.", extra)
            cfm = _known(CfmConfig, dit.get("cfm_config", {}), "dit_config.cfm_config.", extra)
            dit["cfm_config"] = CfmConfig(**cfm)
            encoder = _known(EncoderConfig, top.pop("encoder_config"), "encoder_config.", extra)
            return cls(lm_config=LMConfig(**lm), encoder_config=EncoderConfig(**encoder), dit_config=DitConfig(**dit),
                       extra=extra, **top)  # fmt: skip
        except KeyError as e:
            raise ValueError(f"{source}: expected a VoxCPM2 config with {e.args[0]!r}, found none") from e
        except TypeError as e:  # a required field of a sub-config missing
            raise ValueError(f"{source}: not a VoxCPM2 config this reader knows: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path) -> VoxCPM2Config:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: expected a VoxCPM2 config.json, could not read it ({e})") from e
        if raw.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ValueError(f"{path}: expected architecture {ARCHITECTURE!r}, found {raw.get('architecture')!r}")
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json contents, unknown keys back where they were."""
        data = dataclasses.asdict(self)
        for part in ("lm_config", "encoder_config", "dit_config"):
            if data[part]["kv_channels"] is None:  # upstream's schema types it int: absent, never null
                del data[part]["kv_channels"]
        for key, value in data.pop("extra").items():
            *path, name = key.split(".")
            part = data
            for step in path:
                part = part[step]
            part[name] = value
        return data


def _known(cls, raw: dict[str, Any], prefix: str, extra: dict[str, Any]) -> dict[str, Any]:
    """`raw`'s keys that `cls` has; the others go to `extra` under `prefix` (kept, and written back by to_dict)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    extra.update({prefix + k: v for k, v in raw.items() if k not in names})
    return {k: v for k, v in raw.items() if k in names}
