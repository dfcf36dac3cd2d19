"""AdamW with named parameter groups, and gradient clipping.

Groups split trainable parameters by kind (adapter, embeddings, heads, other), by whether weight decay applies
(never on norms and biases: decaying a norm's gain towards 0 just shrinks activations), and, with layer-wise lr
decay on, by slow-transformer layer. Each group carries a `name` so logs can show its lr.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tts_lib.models import ModuleRoles, module_roles
from tts_lib.training.distributed import full_tensor


@dataclass
class OptimConfig:
    lr: float = 1e-4  # upstream Fish Speech fine-tuning recipe
    betas: tuple[float, float] = (0.9, 0.95)  # 0.95: the second moment follows recent, noisy LM gradients faster
    eps: float = 1e-5  # upstream recipe; larger than torch's 1e-8 so bf16 updates stay bounded
    weight_decay: float = 0.0  # upstream recipe uses 0: short fine-tunes gain little from it
    embedding_lr: float | None = None  # None = lr; a lower value protects token embeddings shared by all speakers
    embedding_weight_decay: float | None = None  # None = weight_decay
    head_lr: float | None = None  # None = lr
    # 1 = off; below 1 the lr of slow layer i is multiplied by decay ** (n_layer - 1 - i), so lower layers,
    # which hold the most general features, move least
    layer_lr_decay: float = 1.0
    max_grad_norm: float = 1.0  # clip the global grad norm; spikes from rare long utterances stay bounded
    fused: bool | None = None  # None = fused AdamW on CUDA, where it is fastest; the for-each kernel elsewhere

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, found {self.lr}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be within (0, 1], found {self.layer_lr_decay}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, found {self.betas}")


def param_kind(name: str, roles: ModuleRoles) -> str:
    """adapter, embeddings, heads or other: which learning rate a parameter takes (roles: the model's family's)."""
    if "lora_" in name:  # peft's lora_A, lora_B, lora_embedding_*, and DoRA's lora_magnitude_vector
        return "adapter"
    parts = set(name.split("."))
    if parts & roles.embeddings:
        return "embeddings"
    if parts & roles.heads:
        return "heads"
    return "other"


def layer_index(name: str, roles: ModuleRoles) -> int | None:
    """The main-stack layer a parameter belongs to, by the family's layer pattern; None outside the stack."""
    match = re.search(roles.layer_pattern, name) if roles.layer_pattern else None
    return int(match.group(1)) if match else None


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    return "norm" not in name and param.ndim >= 2


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW param groups with `params`, `lr`, `weight_decay` and `name`; frozen parameters left out."""
    roles = module_roles(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # count layers from all parameters, not only trainable ones, so freezing some layers keeps the same decay
    all_layers = [i for n, _ in model.named_parameters() if (i := layer_index(n, roles)) is not None]
    n_layer = max(all_layers, default=-1) + 1
    base_lr = {
        "embeddings": config.embedding_lr if config.embedding_lr is not None else config.lr,
        "heads": config.head_lr if config.head_lr is not None else config.lr,
    }
    wd = config.embedding_weight_decay if config.embedding_weight_decay is not None else config.weight_decay
    base_wd = {"embeddings": wd}

    groups: dict[str, dict] = {}
    for name, param in named:
        kind = param_kind(name, roles)
        decay = uses_weight_decay(name, param)
        lr = base_lr.get(kind, config.lr)
        label = kind
        layer = layer_index(name, roles)
        if config.layer_lr_decay != 1.0 and layer is not None:
            lr *= config.layer_lr_decay ** (n_layer - 1 - layer)
            label = f"layer{layer}" if kind == "other" else f"{kind}/layer{layer}"
        label += "/decay" if decay else "/no_decay"
        group = groups.setdefault(
            label, {"params": [], "lr": lr, "weight_decay": base_wd.get(kind, config.weight_decay) if decay else 0.0}
        )
        group["params"].append(param)
        group["name"] = label

    result = [g for g in groups.values() if g["params"]]
    grouped = sum(len(g["params"]) for g in result)
    assert grouped == len(named) == len({id(p) for g in result for p in g["params"]}), "a parameter is misgrouped"
    return result


def make_optimizer(model: nn.Module, config: OptimConfig, device_type: str) -> torch.optim.AdamW:
    fused = config.fused if config.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        param_groups(model, config),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        weight_decay=config.weight_decay,
        fused=fused,
    )


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global grad norm in place and return the norm before clipping (inf/nan pass through, for logs).

    `max_norm` None or <= 0 only measures. Under FSDP the norm is over the whole model, all shards.
    """
    limit = max_norm if max_norm is not None and max_norm > 0 else math.inf
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(params, limit, error_if_nonfinite=False)
    return float(full_tensor(total))
