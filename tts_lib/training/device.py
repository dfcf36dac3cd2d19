"""The training device and what fits on it: from tts_lib.training.device import pick_device, auto_max_tokens

    device = pick_device("auto")  # the GPU when there is one
    tokens, why = auto_max_tokens(family, adapter=True, device=device, gradient_checkpointing=False,
                                  amp_dtype=torch.bfloat16)  # `max_tokens: auto`
    tokens, why = resolve_max_tokens(None, family, ...)  # any setting: a number, None (the family's) or auto
"""

from __future__ import annotations

import torch

from tts_lib.models import default_max_tokens


def pick_device(setting: str = "auto") -> torch.device:
    """The device a setting names; "auto" is the GPU when there is one. Training, code extraction and listening
    all use it, so a rented GPU never idles while the CPU encodes audio."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


# `max_tokens: auto` on a GPU: the largest budget the memory plan fits into the free memory, up to this. Past
# it a GPU is busy already, and larger micro-batches only mean fewer optimiser steps per epoch.
AUTO_MAX_TOKENS_CAP = 16384
AUTO_MARGIN = 0.1  # of the free memory kept back (allocator fragmentation, what the trace does not see)


def auto_max_tokens(family, adapter: bool, device: torch.device, gradient_checkpointing: bool, amp_dtype):
    """(max_tokens, why) for `max_tokens: auto`: on a GPU the largest budget whose planned peak fits the free
    memory less AUTO_MARGIN (the family's memory plan, its own shape), capped at AUTO_MAX_TOKENS_CAP; the smallest
    over the processes of a distributed run, so every rank batches alike. `amp_dtype`: the autocast dtype or None."""
    if device.type != "cuda":
        tokens = default_max_tokens(family.name)
        return tokens, f"max_tokens auto: {tokens}, the {family.name} default (no GPU to plan for)"
    free = torch.cuda.mem_get_info(device)[0] / 2**30
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        smallest = torch.tensor([free], device=device)
        torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        free = float(smallest.item())
    mode = "quick_lora" if adapter else "full"
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
    from tts_lib.training.memory_plan import max_tokens_for  # fake-tensor tracing: imported only on a GPU

    shape = family.planning_shape()
    tokens = max_tokens_for(mode, free, AUTO_MARGIN, gradient_checkpointing, precision, shape, AUTO_MAX_TOKENS_CAP)
    capped = " (the cap)" if tokens == AUTO_MAX_TOKENS_CAP else ""
    return tokens, (f"max_tokens auto: {tokens}{capped}: the largest the memory plan of {mode} fits in the "
                    f"{free:.1f} GiB free with {AUTO_MARGIN:.0%} kept back")  # fmt: skip


def resolve_max_tokens(setting, family, adapter: bool, device: torch.device, gradient_checkpointing: bool, amp_dtype):
    """(max_tokens, why) for a max_tokens setting: a number as it is, None the family's default, "auto" as
    `auto_max_tokens` plans it."""
    if setting == "auto":
        return auto_max_tokens(family, adapter, device, gradient_checkpointing, amp_dtype)
    if setting is None:
        tokens = default_max_tokens(family.name)
        return tokens, f"max_tokens {tokens}: the {family.name} default"
    return setting, f"max_tokens {setting}"
