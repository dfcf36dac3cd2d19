"""FLOPs of a training step, counted, and the time they take: from tts_lib.training.flops import estimate_hours

    hours = estimate_hours(planned_tokens, "quick_lora", gpu_bf16_tflops=989.0)  # MFU: ASSUMED_MFU

torch's FlopCounterMode counts the FLOPs of one forward + backward of a family's model (its PlanningShape;
S1-mini by default) at its full shape on fake tensors: the model, batch and loss `tts_lib.training.memory_plan`
traces (Fish Speech: items of 256 positions, every position a frame), recomputation included (gradient
checkpointing, the chunked slow head). Attention is counted as torch counts it, the whole square, causal
masking not subtracted (the usual MFU convention). The result is per supervised token, the unit the
trainer's tokens/s and the cost estimate count: slow positions plus frames x codebooks (11 per frame for
S1-mini). Real batches also hold text positions, which cost
slow-transformer FLOPs but supervise nothing: about a tenth more per supervised token.
"""

from __future__ import annotations

import torch
from torch._subclasses import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tts_lib.models import PlanningShape, reference_shape
from tts_lib.training.memory_plan import autocast_for, build_model

# Model FLOPs utilisation assumed where a time is computed from counted FLOPs rather than measured: what eager
# PyTorch in bf16 typically reaches on A100/H100 for a model of S1-mini's width (dim 1024). `gpu-check` measures
# it; until then every figure made with it says so.
ASSUMED_MFU = 0.3
COUNT_TOKENS = 4096  # the batch the count is made at; per supervised token it barely depends on it
TRAINING_MODES = ("quick_lora", "full")


def cpu_flash_flops() -> dict:
    """FLOP formulas for the CPU flash-attention kernels fake CPU tensors dispatch to (torch's table
    knows the CUDA ones only), with torch's own counting functions."""
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            lambda grad, q, k, v, *a, **kw: sdpa_backward_flop_count(grad, q, k, v)
        ),
    }


def count_step_flops(
    mode: str,
    gradient_checkpointing: bool = False,
    max_tokens: int = COUNT_TOKENS,
    precision: str = "bf16",
    shape: PlanningShape | None = None,
) -> tuple[int, int]:
    """(FLOPs of one forward + backward, supervised tokens of its batch), counted on fake tensors."""
    if mode not in TRAINING_MODES:
        raise ValueError(
            f"FLOPs are counted per training phase: mode must be one of {', '.join(TRAINING_MODES)}, found "
            f"{mode!r} (two_phase runs a full phase, then a quick_lora one: count each)"
        )
    shape = shape or reference_shape()
    model = build_model(shape, mode, precision, gradient_checkpointing, FakeTensorMode(allow_non_fake_inputs=True))
    batch = shape.batch(max_tokens)
    with FlopCounterMode(display=False, custom_mapping=cpu_flash_flops()) as counter:
        with autocast_for(precision)():
            parts = shape.loss_parts(model, batch)
        parts.loss().backward()
    return counter.get_total_flops(), parts.tokens


_counts: dict[tuple, float] = {}


def flops_per_token(mode: str, gradient_checkpointing: bool = False, shape: PlanningShape | None = None) -> float:
    """Forward + backward FLOPs per supervised token of the model of `shape` (None: the reference model,
    S1-mini), remembered per process."""
    shape = shape or reference_shape()
    key = (mode, gradient_checkpointing, shape.key)
    if key not in _counts:
        flops, tokens = count_step_flops(mode, gradient_checkpointing, shape=shape)
        _counts[key] = flops / tokens
    return _counts[key]


def estimate_hours(
    tokens: int, mode: str, gpu_bf16_tflops: float, mfu: float = ASSUMED_MFU, gradient_checkpointing: bool = False
) -> float:
    """Hours to train `tokens` supervised tokens in `mode` on a GPU of `gpu_bf16_tflops` dense bf16 TFLOPs
    running at `mfu` of them. State the MFU beside any figure made with it: it is an assumption."""
    if gpu_bf16_tflops <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"expected gpu_bf16_tflops > 0 and 0 < mfu <= 1, found {gpu_bf16_tflops} and {mfu}")
    seconds = tokens * flops_per_token(mode, gradient_checkpointing) / (gpu_bf16_tflops * 1e12 * mfu)
    return seconds / 3600
