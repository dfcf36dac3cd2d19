"""Merge an adapter into its base model and export it, verified: python -m tts_lib export ...

`export_merged` folds a LoRA/DoRA adapter into the base weights (peft's merge_and_unload), casts
them to the dtype the base checkpoint ships in (S1-mini: bf16), saves the folder in upstream's
layout (config.json, model.pth, tokenizer files, codec.pth, codec_config.json; upstream's own merge
script forgets codec.pth) and then proves the export: it loads the saved folder back and checks
that it computes the logits base+adapter computed, on a fixed probe batch that goes through the
text path, the codebook embeddings and the fast transformer. An export that does not reproduce the
adapted model is deleted and refused, so a folder at `out` is always a verified one.

`export_adapter` copies an adapter folder (peft files + tts_adapter.json naming its base model) for
people who load the adapter themselves with peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor

from tts_lib.adapters import PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR, check_base, load_adapted, merge, read_sidecar
from tts_lib.fileio import atomic_copy, atomic_folder, refuse_overwrite
from tts_lib.models import ModelFamily, load_family
from tts_lib.models.fish_speech.checkpoint import MODEL_FILE, load_state_dict_file
from tts_lib.models.fish_speech.lm import FishSpeechLM

PROBE_BATCH = 2
PROBE_TEXT = 6  # text positions before the frames
PROBE_FRAMES = 9  # semantic positions: exercise codebook embeddings and the fast transformer
# Tolerance = RELATIVE[dtype] * max|logits| + ABSOLUTE, by the dtype of the saved weights.
# fp32: the merge itself (W + B @ A * scale in fp32) and a different summation order differ from
# the unmerged computation only by float32 rounding, ~1e-6 relative; 1e-4 leaves room for depth.
# bf16 keeps 8 significant bits: every weight moves by up to 2^-9 (0.2%) of itself when cast, and
# those errors add up over the layers into logit errors of about 1% of the logits' scale on the
# tiny model (measured: 0.3-1%); 3e-2 is a few times that, still well under what a dropped or
# mis-scaled adapter changes. fp16 keeps 11 bits, 8x finer than bf16.
RELATIVE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}
ABSOLUTE = 1e-5


@dataclass
class MergeReport:
    out: Path
    max_abs_diff: float  # largest |merged - (base + adapter)| over the probe's slow and fast logits
    tolerance: float
    dtype: str  # of the saved weights, e.g. "bfloat16"


def probe_tokens(model: FishSpeechLM, seed: int = 0) -> Tensor:
    """A fixed batch (B, 1 + num_codebooks, T): text ids, then frames (semantic id + codes), then text."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    t = PROBE_TEXT + PROBE_FRAMES + 1
    codes = torch.randint(0, c.codebook_size, (PROBE_BATCH, c.num_codebooks, t), generator=g)
    row0 = torch.randint(0, model.semantic_begin_id, (PROBE_BATCH, t), generator=g)
    frames = slice(PROBE_TEXT, PROBE_TEXT + PROBE_FRAMES)
    semantic = torch.randint(
        model.semantic_begin_id, model.semantic_end_id + 1, (PROBE_BATCH, PROBE_FRAMES), generator=g
    )
    row0[:, frames] = semantic
    # A frame's first code is its semantic token's index, as in real training sequences.
    codes[:, 0, frames] = (semantic - model.semantic_begin_id) % c.codebook_size
    return torch.cat([row0[:, None], codes], dim=1)


@torch.no_grad()
def probe_logits(model: torch.nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(slow logits (B, T, vocab), fast logits (N, nc, codebook_size)) in float32.

    As in training (loss.py), the fast transformer of a frame reads the slow hidden state of the
    position just before it, teacher-forced with the frame's codes."""
    core = model.get_base_model() if isinstance(model, PeftModel) else model
    logits, hidden = model(tokens)
    ids = tokens[:, 0]
    is_frame = (ids[:, 1:] >= core.semantic_begin_id) & (ids[:, 1:] <= core.semantic_end_id)  # (B, T - 1)
    frame_codes = tokens[:, 1:, 1:].transpose(1, 2)[is_frame]  # (N, nc)
    # peft's wrapper forwards only __call__; fast_logits runs on the (adapted) inner modules.
    fast = core.fast_logits(hidden[:, :-1][is_frame], frame_codes)
    return logits.float(), fast.float()


def base_weights_dtype(folder: str | Path) -> torch.dtype:
    """The dtype the base checkpoint ships its weights in: its first floating tensor's."""
    path = Path(folder) / MODEL_FILE
    for tensor in load_state_dict_file(path).values():
        if tensor.is_floating_point():
            return tensor.dtype
    raise ValueError(f"{path}: expected floating-point weights, found none; is this a model checkpoint?")


def export_merged(
    family: ModelFamily, model: PeftModel, out: str | Path, overwrite: bool = False, probe_seed: int = 0
) -> MergeReport:
    """Merge `model`'s active adapter into its base, save in upstream's layout at `out`, verified.

    `model` is consumed: it is cast to float32 and the adapter is folded into its base weights.
    Raises ValueError (and writes nothing) when the saved folder does not reproduce base+adapter."""
    out = Path(out)
    if not overwrite:
        refuse_overwrite(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = base_weights_dtype(family.folder)
    if dtype not in RELATIVE:
        raise ValueError(
            f"{family.folder / MODEL_FILE}: weights are {dtype}; export supports float32, bfloat16 and float16"
        )
    model = model.float().eval()  # the reference in fp32, so the check measures the export, not our arithmetic
    tokens = probe_tokens(model.get_base_model(), probe_seed)
    slow_ref, fast_ref = probe_logits(model, tokens)
    if fast_ref.numel() == 0:
        raise ValueError("the probe batch has no semantic positions: the fast transformer would go unchecked")

    with atomic_folder(out, overwrite) as tmp:  # a refused export leaves nothing behind
        merged = merge(model).to(dtype)
        family.save(merged, tmp)
        reloaded = FishSpeechLM.from_pretrained(tmp, dtype=torch.float32).eval()
        slow, fast = probe_logits(reloaded, tokens)
        diff = max((slow - slow_ref).abs().max().item(), (fast - fast_ref).abs().max().item())
        scale = max(slow_ref.abs().max().item(), fast_ref.abs().max().item())
        tolerance = RELATIVE[dtype] * scale + ABSOLUTE
        if not diff <= tolerance:  # `not <=` also refuses NaN
            raise ValueError(
                f"the merged model does not reproduce base+adapter: max |logit difference| {diff:.3g} > tolerance "
                f"{tolerance:.3g} ({RELATIVE[dtype]:g} x max |logit| {scale:.3g} + {ABSOLUTE:g}, {dtype} weights); "
                f"nothing was exported to {out}. Check that the adapter matches this base model and peft's version"
            )
    return MergeReport(out=out, max_abs_diff=diff, tolerance=tolerance, dtype=str(dtype).removeprefix("torch."))


def merge_adapter_folder(
    base_folder: str | Path, adapter_folder: str | Path, out: str | Path, overwrite: bool = False
) -> MergeReport:
    """Load the base checkpoint folder, apply the saved adapter (refused when it was trained on other
    weights), and export the verified merge to `out`."""
    if not overwrite:
        refuse_overwrite(out)
    family = load_family(base_folder)
    check_base(adapter_folder, family.identity())
    model = load_adapted(family.load_model(dtype=torch.float32), adapter_folder)
    return export_merged(family, model, out, overwrite=overwrite)


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
            f"to, found {base!r}; re-save the adapter with tts_lib.adapters.save_adapter"
        )
    with atomic_folder(out, overwrite) as tmp:
        for name in (PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR):
            atomic_copy(adapter_folder / name, tmp / name)
    return out
