"""Merge an adapter into its base model and export it, verified: python -m tts_lib export ...

`export_merged` folds a LoRA/DoRA adapter into the base weights (peft's merge_and_unload), casts
them to the dtype the base checkpoint ships in (S1-mini: bf16), saves the folder in the family's upstream
layout (Fish Speech: config.json, model.pth, tokenizer files, codec.pth, codec_config.json; upstream's own
merge script forgets codec.pth) and then proves the export: it loads the saved folder back and checks,
on the family's fixed probe (Fish Speech: a batch through the text path, the codebook embeddings and the
fast transformer), that the adapter's effect survived the merge. Measured on the probe's outputs:

    d_merged = max |merged - (base+adapter)|     what the export got wrong
    d_base   = max |base   - (base+adapter)|     what the adapter does (the base alone is this far off)

The export is accepted only when d_merged is within the weights' dtype tolerance AND at most
MAX_RESIDUAL (a fifth) of d_base: the merged model must be far closer to base+adapter than the base
is. A tolerance alone is not enough in bf16, where it is 3% of the largest logit: an export that
drops the adapter would pass whenever the adapter moved the logits by less than that. An adapter
that changes nothing measurable (d_base within float32 rounding: a freshly initialised LoRA, whose
B is zero) has no effect to keep; its export is accepted when it reproduces the base within the
dtype tolerance, and the report says so (`adapter_changes_nothing`). An export that fails is
deleted and refused, so a folder at `out` is always a verified one.

`export_adapter` copies an adapter folder (peft files + tts_adapter.json naming its base model) for
people who load the adapter themselves with peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor

from tts_lib.common.fileio import atomic_copy, atomic_folder, refuse_overwrite
from tts_lib.models import ModelFamily, load_family
from tts_lib.training.adapters import PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR, check_base, load_adapted, merge, read_sidecar

# Tolerance = RELATIVE[dtype] * max|logits| + ABSOLUTE, by the dtype of the saved weights.
# fp32: the merge itself (W + B @ A * scale in fp32) and a different summation order differ from
# the unmerged computation only by float32 rounding, ~1e-6 relative; 1e-4 leaves room for depth.
# bf16 keeps 8 significant bits: every weight moves by up to 2^-9 (0.2%) of itself when cast, and
# those errors add up over the layers into logit errors of about 1% of the logits' scale on the
# tiny model (measured: 0.3-1%); 3e-2 is a few times that. fp16 keeps 11 bits, 8x finer than bf16.
# The tolerance bounds rounding only: an adapter that moved the logits by less than it could be
# dropped unnoticed, so whether its effect survived is MAX_RESIDUAL's to decide.
RELATIVE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}
ABSOLUTE = 1e-5
# d_merged may be at most this fraction of d_base. Correct bf16 merges on the tiny model measured
# 0.003-0.016 (bf16 rounding of the merged weights, about 0.3% of the logits' scale, whatever the
# adapter); a dropped adapter is 1.0 and one applied at half its scale 0.5. A fifth separates them
# with room on both sides; it refuses adapters whose whole effect is under about 5x the rounding of
# the export's dtype, which cannot survive that dtype anyway (dtype=torch.float32 keeps them).
MAX_RESIDUAL = 0.2


@dataclass
class MergeReport:
    out: Path
    max_abs_diff: float  # d_merged: largest |merged - (base + adapter)| over the probe's outputs
    tolerance: float  # the bound max_abs_diff met: min(dtype tolerance, MAX_RESIDUAL x adapter_effect), or the
    # dtype tolerance alone when the adapter changes nothing
    dtype: str  # of the saved weights, e.g. "bfloat16"
    adapter_effect: float = 0.0  # d_base: largest |base - (base + adapter)|, what the merge had to keep
    adapter_changes_nothing: bool = False  # adapter_effect within float32 rounding: checked against the base only


def export_merged(
    family: ModelFamily,
    model: PeftModel,
    out: str | Path,
    overwrite: bool = False,
    probe_seed: int = 0,
    dtype: torch.dtype | None = None,
) -> MergeReport:
    """Merge `model`'s active adapter into its base, save in upstream's layout at `out`, verified.

    `dtype` is the saved weights' (None: the dtype the base checkpoint ships in). `model` is consumed:
    it is cast to float32 and the adapter is folded into its base weights. Raises ValueError (and
    writes nothing) when the saved folder does not keep the adapter's effect (see the module's text)."""
    out = Path(out)
    if not overwrite:
        refuse_overwrite(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = dtype or family.weights_dtype()
    if dtype not in RELATIVE:
        raise ValueError(f"{family.folder}: weights are {dtype}; export supports float32, bfloat16 and float16")
    model = model.float().eval()  # the reference in fp32, so the check measures the export, not our arithmetic
    reference = family.probe(model, probe_seed)  # the family's fixed input through every part an adapter touches
    with model.disable_adapter():
        base = family.probe(model, probe_seed)
    effect = max_abs_diff(base, reference)
    scale = max(x.abs().max().item() for x in reference)
    dtype_tolerance = RELATIVE[dtype] * scale + ABSOLUTE
    changes_nothing = effect <= RELATIVE[torch.float32] * scale + ABSOLUTE
    tolerance = dtype_tolerance if changes_nothing else min(dtype_tolerance, MAX_RESIDUAL * effect)

    with atomic_folder(out, overwrite) as tmp:  # a refused export leaves nothing behind
        merged = merge(model)  # float32 still: its own error tells a broken merge from the dtype's rounding
        merge_error = max_abs_diff(family.probe(merged, probe_seed), reference)
        family.save(merged.to(dtype), tmp)
        reloaded = load_family(tmp).load_model(dtype=torch.float32).eval()  # what a user loads from the folder
        diff = max_abs_diff(family.probe(reloaded, probe_seed), reference)
        if not diff <= tolerance:  # `not <=` also refuses NaN
            measured = Measured(diff, effect, merge_error, dtype_tolerance, scale)
            raise ValueError(refusal(measured, dtype, changes_nothing, out))
    name = str(dtype).removeprefix("torch.")
    return MergeReport(out, diff, tolerance, name, adapter_effect=effect, adapter_changes_nothing=changes_nothing)


@dataclass
class Measured:
    """What a refused export's check found on the probe batch (largest |difference| of logits)."""

    diff: float  # saved export vs base+adapter
    effect: float  # base vs base+adapter
    merge_error: float  # the float32 merge in memory, before the cast, vs base+adapter
    dtype_tolerance: float
    scale: float  # largest |logit| of base+adapter


def max_abs_diff(outputs: tuple[Tensor, ...], reference: tuple[Tensor, ...]) -> float:
    """Largest |difference| over every output of the probe (Fish Speech: the slow and the fast logits)."""
    return max((a - b).abs().max().item() for a, b in zip(outputs, reference))


def refusal(m: Measured, dtype: torch.dtype, changes_nothing: bool, out: Path) -> str:
    """The error of a refused export: what was measured, what was needed, the likely cause, what to do."""
    found = (
        f"on the probe batch, max |merged - (base+adapter)| is {m.diff:.3g} and max |base - (base+adapter)| (the "
        f"adapter's effect) is {m.effect:.3g}"
    )
    if changes_nothing:
        needed = f"the adapter changes nothing, so the export had to reproduce the base within {m.dtype_tolerance:.3g}"
    else:
        needed = (
            f"needed: at most {MAX_RESIDUAL:g} x the adapter's effect ({MAX_RESIDUAL * m.effect:.3g}) and at most "
            f"the {dtype} tolerance {m.dtype_tolerance:.3g} ({RELATIVE[dtype]:g} x max |logit| {m.scale:.3g} + "
            f"{ABSOLUTE:g})"
        )
    fp32_tolerance = RELATIVE[torch.float32] * m.scale + ABSOLUTE
    merge_ok = m.merge_error <= (fp32_tolerance if changes_nothing else MAX_RESIDUAL * m.effect)
    before = f"before the cast to {dtype}, the merged model is off by {m.merge_error:.3g}"
    if not merge_ok and not changes_nothing and m.merge_error >= 0.8 * m.effect:
        cause = f"the adapter was dropped, not merged ({before}, as far as the base alone)"
    elif not merge_ok:
        cause = f"the merge itself is wrong ({before}); check that the adapter matches this base and peft's version"
    elif m.diff > m.dtype_tolerance:
        cause = f"the merge is right ({before}), but the saved folder does not load back to it: a save or load bug"
    else:
        cause = (
            f"the merge is right ({before}), but the adapter's effect is too small to survive {dtype} weights, "
            "whose rounding undoes it: train longer, export with dtype=torch.float32, or use the adapter unmerged "
            "(python -m tts_lib export --adapter-only)"
        )
    head = "the merged model does not reproduce base+adapter"
    return f"{head}: {found}; {needed}. Nothing was exported to {out}: {cause}"


def merge_adapter_folder(
    base_folder: str | Path,
    adapter_folder: str | Path,
    out: str | Path,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> MergeReport:
    """Load the base checkpoint folder, apply the saved adapter (refused when it was trained on other
    weights), and export the verified merge to `out` (in `dtype`; None: the base's)."""
    if not overwrite:
        refuse_overwrite(out)
    family = load_family(base_folder)
    check_base(adapter_folder, family.identity())
    model = load_adapted(family.load_model(dtype=torch.float32), adapter_folder)
    return export_merged(family, model, out, overwrite=overwrite, dtype=dtype)


def export_adapter(adapter_folder: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Copy the adapter (adapter_config.json, adapter_model.safetensors, tts_adapter.json with the
    base model's id and sha256) to `out`, through a temporary folder and a rename."""
    adapter_folder, out = Path(adapter_folder), Path(out)
    if not overwrite:
        refuse_overwrite(out)
    base = read_sidecar(adapter_folder).get("base_model")
    if not isinstance(base, dict) or not base.get("id") or not base.get("hash"):
        raise ValueError(
            f"{adapter_folder / SIDECAR}: expected base_model {{id, hash}} naming the weights the adapter applies "
            f"to, found {base!r}; re-save the adapter with tts_lib.training.adapters.save_adapter"
        )
    with atomic_folder(out, overwrite) as tmp:
        for name in (PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR):
            atomic_copy(adapter_folder / name, tmp / name)
    return out
