"""import_upstream_lora(CKPT, BASE_DIR, OUT_DIR): an upstream (Lightning + loralib) LoRA as our peft adapter.

    from tts_lib.versions.upstream_lora import import_upstream_lora
    import_upstream_lora("results/my_voice/checkpoints/step_000001000.ckpt", "checkpoints/openaudio-s1-mini",
                         "adapters/my_voice", lora_alpha=16)

The result is an ordinary adapter folder (peft's `adapter_config.json` + `adapter_model.safetensors`
plus `tts_adapter.json` naming the base), so it loads with tts_lib.training.adapters.load_adapted, hot-swaps
with tts_lib.versions.hotswap.AdapterBank, continues training or merges like one trained here.

Upstream's `setup_lora` (loralib) and peft compute the same update with the same tensor layout:
Linear: lora_A [r, in], lora_B [out, r], W + B @ A * alpha / r (peft: `lora_A.weight`,
`lora_B.weight`); Embedding: lora_A [r, num_embeddings], lora_B [dim, r], W + (B @ A).T * alpha / r,
rows looked up in A.T then multiplied by B.T (peft: `lora_embedding_A`, `lora_embedding_B`). So an
import is a rename; the tests check the logits against upstream's own LoRA model.

lora_alpha is not stored in upstream checkpoints (only the tensors are, and r is their shape): it
is the `lora_alpha` of the run's Hydra config. The default 16 is that of upstream's only shipped
config, `r_8_alpha_16`; a wrong alpha scales the adapter's effect by the wrong factor.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tts_lib.common.fileio import refuse_overwrite
from tts_lib.common.torch_files import torch_load_weights_only
from tts_lib.models import load_family, module_roles
from tts_lib.training.adapters import AdapterConfig, add_adapters, save_adapter

ALPHA_HINT = (
    "upstream checkpoints do not store lora_alpha: pass the lora_alpha of the run's config "
    "(upstream's shipped r_8_alpha_16 config: 16)"
)
SHOW = 5  # keys named in an error
LORA_SUFFIXES = (".lora_A", ".lora_B")  # loralib's names


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def is_upstream_lora(path: str | os.PathLike) -> bool:
    """True for a file readable with weights_only=True whose state dict has loralib `.lora_A` keys
    (plain or Lightning-wrapped). Memory-mapped where the format allows: no tensor is read."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        obj = torch_load_weights_only(path)
    except Exception:  # not a torch file, or one weights_only refuses: not an upstream LoRA checkpoint
        return False
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return isinstance(obj, Mapping) and any(isinstance(k, str) and k.endswith(".lora_A") for k in obj)


def split_lora(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(base weights, loralib `*.lora_A` / `*.lora_B` weights)."""
    lora = {k: v for k, v in state.items() if k.endswith(LORA_SUFFIXES)}
    return {k: v for k, v in state.items() if k not in lora}, lora


def _lora_modules(
    checkpoint: Path, lora: Mapping[str, Tensor], upstream_targets: list[str]
) -> dict[str, tuple[Tensor, Tensor]]:
    """{module: (lora_A, lora_B)}, refusing unpaired tensors and modules the upstream preset does not adapt."""
    modules = sorted({k.rsplit(".", 1)[0] for k in lora})
    unpaired = [m for m in modules if m + ".lora_A" not in lora or m + ".lora_B" not in lora]
    if unpaired:
        raise ValueError(
            f"{checkpoint}: expected a lora_A and a lora_B for every LoRA module, found only one of them for "
            f"{_listing(unpaired)}: the checkpoint is incomplete; use another step's checkpoint"
        )
    foreign = [m for m in modules if m.rsplit(".", 1)[-1] not in upstream_targets]
    if foreign:
        raise ValueError(
            f"{checkpoint}: expected LoRA only on the modules upstream's setup_lora adapts "
            f"({', '.join(upstream_targets)}), found LoRA on {_listing(foreign)}: this checkpoint comes from a "
            "modified LoRA setup that tts_lib cannot represent; merge it upstream (tools/llama/merge_lora.py) instead"
        )
    return {m: (lora[m + ".lora_A"], lora[m + ".lora_B"]) for m in modules}


def _rank(checkpoint: Path, pairs: Mapping[str, tuple[Tensor, Tensor]]) -> int:
    by_rank: dict[int, list[str]] = {}
    for module, (a, b) in pairs.items():
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{checkpoint}: {module}: expected lora_A [r, in] and lora_B [out, r], "
                f"found {tuple(a.shape)} and {tuple(b.shape)}"
            )
        by_rank.setdefault(a.shape[0], []).append(module)
    if len(by_rank) != 1:
        found = "; ".join(f"r={r}: {_listing(ms)}" for r, ms in sorted(by_rank.items()))
        raise ValueError(
            f"{checkpoint}: expected one LoRA rank r for all modules (upstream's setup_lora uses one), "
            f"found several ({found}); {ALPHA_HINT}, and r is read from the tensors"
        )
    return next(iter(by_rank))


def _check_same_base(
    checkpoint: Path, carried: Mapping[str, Tensor], base: Mapping[str, Tensor], base_folder: Path
) -> None:
    """The base weights a Lightning checkpoint carries must be the base folder's, tensor for tensor."""
    differing = []
    for key in sorted(carried):
        ours, theirs = base.get(key), carried[key]
        if ours is None or ours.shape != theirs.shape:
            differing.append(key)
            continue
        common = torch.promote_types(ours.dtype, theirs.dtype)
        if not torch.equal(ours.to(common), theirs.to(common)):
            differing.append(key)
    if differing:
        raise ValueError(
            f"{checkpoint}: this LoRA was trained on other base weights than {base_folder}: "
            f"{len(differing)} of the {len(carried)} base tensors it carries differ ({_listing(differing)}); "
            "import it with the base checkpoint the run fine-tuned"
        )


def import_upstream_lora(
    checkpoint: str | os.PathLike,
    base_folder: str | os.PathLike,
    out: str | os.PathLike,
    lora_alpha: float = 16,
    lora_dropout: float = 0.01,
    overwrite: bool = False,
) -> Path:
    """Write the upstream LoRA `checkpoint` as our adapter folder `out` for the base in `base_folder`.

    r is read from the lora_A shapes; `lora_alpha` is not stored upstream and must be the run's
    (default 16: upstream's only shipped config, r_8_alpha_16). `lora_dropout` matters only if the
    adapter is trained further (upstream's 0.01 by default). When the checkpoint carries base
    weights (Lightning saves the whole model), they must equal `base_folder`'s."""
    checkpoint, base_folder, out = Path(checkpoint), Path(base_folder), Path(out)
    if not overwrite:
        refuse_overwrite(out)  # before the slow part
    if lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be > 0, found {lora_alpha}; {ALPHA_HINT}")
    family = load_family(base_folder)
    base_model = family.load_model()
    upstream_targets = module_roles(base_model).adapter_presets.get("upstream")
    if not hasattr(family, "read_weights") or upstream_targets is None:
        raise ValueError(f"{checkpoint}: tts_lib imports upstream LoRA checkpoints for families with an upstream "
                         f"LoRA format (Fish Speech); {base_folder} is a {family.name} model")  # fmt: skip
    try:
        carried, lora = split_lora(family.read_weights(checkpoint))
    except (pickle.UnpicklingError, OSError) as e:
        raise ValueError(f"{checkpoint}: expected an upstream LoRA checkpoint, could not read it ({e})") from e
    if not lora:
        raise ValueError(
            f"{checkpoint}: expected an upstream LoRA checkpoint (keys ending in .lora_A / .lora_B), found "
            f"{len(carried)} plain weights and no LoRA ones: this is a full model; load it as a base model instead"
        )
    pairs = _lora_modules(checkpoint, lora, upstream_targets)
    r = _rank(checkpoint, pairs)
    if carried:
        _check_same_base(checkpoint, carried, base_model.state_dict(), base_folder)

    config = AdapterConfig(targets="upstream", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)
    model = add_adapters(base_model, config)
    inner = model.get_base_model()
    adapted = {name for name, module in inner.named_modules() if hasattr(module, "lora_A")}
    missing, extra = sorted(adapted - set(pairs)), sorted(set(pairs) - adapted)
    if missing or extra:
        raise ValueError(
            f"{checkpoint}: expected LoRA weights for exactly the modules the 'upstream' preset adapts in "
            f"{base_folder}; missing for {_listing(missing) or 'none'}, unknown modules {_listing(extra) or 'none'}: "
            "the checkpoint belongs to a model of another shape (check n_layer, n_fast_layer, tie_word_embeddings)"
        )
    with torch.no_grad():
        for module_name, (a, b) in pairs.items():
            module = inner.get_submodule(module_name)
            if "default" in module.lora_embedding_A:  # an Embedding: peft keeps plain parameters
                targets = module.lora_embedding_A["default"], module.lora_embedding_B["default"]
            else:
                targets = module.lora_A["default"].weight, module.lora_B["default"].weight
            for target, source, which in zip(targets, (a, b), ("lora_A", "lora_B")):
                if target.shape != source.shape:
                    raise ValueError(
                        f"{checkpoint}: {module_name}.{which} has shape {tuple(source.shape)}, "
                        f"{base_folder} needs {tuple(target.shape)}: the LoRA belongs to a model of another size"
                    )
                target.copy_(source.to(target.dtype))
    return save_adapter(model, out, config, family.identity(), overwrite=overwrite)
