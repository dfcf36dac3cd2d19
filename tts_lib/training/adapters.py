"""LoRA and DoRA adapters on a loaded model, through peft: python -m tts_lib finetune --mode quick_lora ...

`add_adapters` wraps a model that already holds its pretrained weights (peft only adds the small
A/B matrices and starts B at zero, so the wrapped model computes exactly what the base did: the
upstream bug of LoRA layers re-initialising the loaded weights cannot happen here; a test checks
it). Norms are never adapted and stay frozen. An adapter folder is peft's own format
(`adapter_config.json`, `adapter_model.safetensors`) plus `tts_adapter.json`, which names the base
model the adapter was trained on (id and sha256 of its weights) so it is never applied to another.

The adapted model may keep its frozen base in bf16 (half the memory of fp32; the trainer does so
under bf16 autocast): whatever the base's dtype, every trainable weight is fp32, because an Adam
step of lr 1e-4 on a bf16 weight would mostly round to nothing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from tts_lib.common.fileio import atomic_folder, atomic_write_json
from tts_lib.models import ModuleRoles, module_roles

SIDECAR = "tts_adapter.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass
class AdapterConfig:
    """r, lora_alpha, lora_dropout and targets left unset (None) are the model family's recipe (its
    ModuleRoles.adapter_defaults): Fish Speech r 8, alpha 16, dropout 0.01 on attention_mlp; VoxCPM2 r 32,
    alpha 32, dropout 0 on upstream, as upstream's recipes. A run records the values it trained with."""

    kind: Literal["lora", "dora"] = "lora"  # dora: weight-decomposed LoRA, a little slower, often closer to full
    r: int | None = None  # rank; None: the family's recipe
    lora_alpha: int | None = None  # scale = lora_alpha / r; None: the family's recipe
    lora_dropout: float | None = None  # None: the family's recipe
    # a preset of the model's family (ModuleRoles.adapter_presets); None: the family's recipe. Fish Speech:
    # attention_mlp (attention + MLP of both transformers), upstream (also embeddings and heads, as upstream's
    # r_8_alpha_16), fast_only; VoxCPM2: upstream (q/k/v/o of both LMs and the DiT), attention_mlp
    targets: str | None = None
    train_embeddings: bool = False  # also fully train the text token embeddings (new-language tokens); own lr in optim

    def __post_init__(self) -> None:
        if (self.r is not None and self.r < 1) or (self.lora_alpha is not None and self.lora_alpha <= 0):
            raise ValueError(f"adapter r must be >= 1 and lora_alpha > 0, found r={self.r}, alpha={self.lora_alpha}")
        if self.lora_dropout is not None and not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"adapter lora_dropout must be in [0, 1), found {self.lora_dropout}")


def resolve_adapter(config: AdapterConfig, roles: ModuleRoles) -> AdapterConfig:
    """`config` with each unset field taken from the family's recipe (`roles` of the model it adapts)."""
    unset = {k: v for k, v in roles.adapter_defaults.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **unset)


def peft_config(config: AdapterConfig, roles: ModuleRoles) -> LoraConfig:
    """peft's LoraConfig for `config` on a model with `roles` (its family's presets, recipe and text embeddings)."""
    config = resolve_adapter(config, roles)
    if config.targets not in roles.adapter_presets:
        raise ValueError(f"adapter targets {config.targets!r} is not a preset of this model; its presets: "
                         f"{', '.join(roles.adapter_presets) or 'none'}")  # fmt: skip
    targets = roles.adapter_presets[config.targets]
    if config.train_embeddings:
        if roles.text_embeddings is None:
            raise ValueError("adapter train_embeddings: this model names no text embedding table to train")
        if isinstance(targets, list) and roles.text_embeddings in targets:
            raise ValueError(
                f"adapter train_embeddings trains the token embeddings fully, but the {config.targets!r} preset "
                "already puts a LoRA on them; pick one (another preset, or train_embeddings: false)"
            )
    return LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        use_dora=config.kind == "dora",
        modules_to_save=[roles.text_embeddings] if config.train_embeddings else None,
    )


def add_adapters(model: nn.Module, config: AdapterConfig) -> PeftModel:
    """`model` (with its weights loaded, in any dtype) wrapped with a fresh adapter on the modules its family's
    preset names; only adapter weights (and the text token embeddings with train_embeddings) have requires_grad,
    all of them fp32."""
    roles = module_roles(model)
    adapted = get_peft_model(model, peft_config(config, roles))
    if config.train_embeddings:
        _train_only_text_embeddings(adapted.get_base_model(), roles.text_embeddings)
    for p in adapted.parameters():
        if p.requires_grad and p.dtype != torch.float32:  # peft copies modules_to_save in the base's dtype
            p.data = p.data.float()
    return adapted


def keep_autocast_inputs(model: nn.Module) -> None:
    """For training under autocast: adapter layers take their input as it comes instead of casting it to the
    adapter's fp32 (peft's default). Autocast computes the adapter's matmuls in bf16/fp16 anyway, so the cast
    only kept an fp32 copy of every adapted layer's input alive for backward: about 0.8 GiB of S1-mini's
    quick_lora at max_tokens 4096 (the memory plan). Outside autocast a bf16 base would then meet fp32
    adapter weights: do not call it for fp32 training or inference."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False  # the switch peft.helpers.disable_input_dtype_casting flips


def _train_only_text_embeddings(model: nn.Module, text_embeddings: str) -> None:
    """peft matches modules_to_save by name suffix, so Fish Speech's "embeddings" also makes trainable copies of
    codebook_embeddings and fast_embeddings; put every table but the text one back as it was (frozen, shared)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper) and name != text_embeddings:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.original_module)


def is_adapted(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def adapter_config_of(folder: str | Path) -> AdapterConfig:
    """Our AdapterConfig for a saved adapter folder (ours, or imported from upstream)."""
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    saved = sidecar.get("adapter")
    if not isinstance(saved, dict):
        raise ValueError(f"{folder / SIDECAR}: expected an 'adapter' entry with r, lora_alpha, ..., found {saved!r}")
    return AdapterConfig(**saved)


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    missing = [n for n in (PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR) if not (folder / n).is_file()]
    if missing:
        has = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise ValueError(
            f"{folder}: expected an adapter folder ({PEFT_CONFIG}, {PEFT_WEIGHTS}, {SIDECAR}); "
            f"missing {', '.join(missing)}; found {has}"
        )
    return json.loads((folder / SIDECAR).read_text(encoding="utf-8"))


def check_continuable(folder: str | Path, config: AdapterConfig) -> None:
    """LoRA-on-LoRA continues the saved adapter: its shape-deciding settings must be the same."""
    saved = adapter_config_of(folder)
    fixed = ("kind", "r", "lora_alpha", "targets", "train_embeddings")
    changed = [
        f"{k} {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in fixed if getattr(saved, k) != getattr(config, k)
    ]
    if changed:
        raise ValueError(
            f"cannot continue the adapter in {folder}: {'; '.join(changed)}. Continue with the same "
            "settings, or merge the parent first (incremental: merge_then_lora) to train a new adapter"
        )


def load_adapter_weights(model: PeftModel, folder: str | Path) -> None:
    """Start `model`'s adapter from a saved one (same settings; see check_continuable)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / PEFT_WEIGHTS))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k or "modules_to_save" in k]
    if unexpected or missing:
        raise ValueError(
            f"{folder}: adapter weights do not fit the model: unexpected {unexpected[:3]}, missing {missing[:3]}"
        )


def save_adapter(
    model: PeftModel, out: str | Path, config: AdapterConfig, base: dict[str, str], overwrite: bool = False
) -> Path:
    """Write the adapter (peft format + sidecar) to `out` through a temporary folder and a rename,
    so `out` either does not exist or is complete. `base`: {"id": ..., "hash": ...} of the weights
    the adapter applies to."""
    with atomic_folder(out, overwrite) as tmp:
        model.save_pretrained(str(tmp))
        atomic_write_json(tmp / SIDECAR, {"adapter": config.__dict__, "base_model": base, "format": 1})
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty card; the package writes the real one
    return Path(out)


def check_base(folder: str | Path, base: dict[str, str]) -> None:
    """Refuse an adapter trained on other weights than `base` ({"id", "hash"})."""
    saved = read_sidecar(folder).get("base_model", {})
    if saved.get("hash") != base.get("hash"):
        raise ValueError(
            f"{folder}: this adapter was trained on base model {saved.get('id')!r} (sha256 "
            f"{str(saved.get('hash'))[:12]}...), not on {base.get('id')!r} (sha256 {str(base.get('hash'))[:12]}...); "
            "load it on the base it was trained on"
        )


def load_adapted(model: nn.Module, folder: str | Path, name: str = "default", trainable: bool = False) -> PeftModel:
    """`model` wrapped with the saved adapter `folder` as adapter `name`."""
    return PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=trainable)


@torch.no_grad()
def merge(model: PeftModel) -> nn.Module:
    """The base model with the active adapter folded into its weights (peft's merge_and_unload)."""
    return model.merge_and_unload()
