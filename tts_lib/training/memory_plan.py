"""GPU memory of a fine-tune, traced from one real training step: python -m tts_lib memory-plan --mode quick_lora
--max-tokens 4096 [--family voxcpm | --base-model FOLDER] [--gradient-checkpointing] [--precision bf16]
[--free-gib 22]   (the CLI's `memory-plan`)

No hand arithmetic: the family's model (its PlanningShape; S1-mini by default) is built on fake tensors
(shapes, dtypes and autocast rules; no memory, no math), and the training loop's own pieces run on it:
`add_adapters`, the family's `loss_parts`
(chunked heads included), AdamW from `make_optimizer` (fused, as on a GPU), gradient clipping, the EMA
update, then a validation pass with the EMA weights swapped in. `LiveMemory` counts the bytes of every
tensor storage from the op that makes it to its release; the breakdown at the highest total is the plan.
About 15 s per plan on 2 CPU cores; plans are remembered per process. `tts_lib.training.flops` counts the FLOPs.

What the plan assumes, as the training loop does it on a GPU:
- quick_lora: the frozen base in bf16 (under bf16; fp32 otherwise), the adapter fp32, AdamW and EMA over
  the adapter only. full: fp32 weights under bf16 autocast, AdamW and EMA over every weight. two_phase:
  the larger of its two phases (the full one).
- A batch of max_tokens padded positions from the family, every position supervised (Fish Speech: items of
  256 positions, every one a frame: the most the fast transformer and the loss can cost per position).
- CPU kernels stand in for CUDA's: the same autocast casts for matmuls, a flash-attention kernel that keeps
  the same (output, logsumexp) for backward. Where a CPU kernel keeps more, the plan runs the CUDA way:
  dropout through the fused kernel with a bool mask (`FusedDropout`).
- Allocations rounded up to 512 bytes as CUDA's caching allocator does. Not counted: the CUDA context
  (about 0.5 GiB, outside torch's allocator), the allocator's fragmentation, the GradScaler's scalars (fp16),
  whose room `max_tokens_for`'s margin leaves.

Fake tensors cannot run what depends on tensor values: boolean-mask indexing (its size is data) and
`.item()`. The loss therefore selects positions by integer indices computed from the (real, tiny)
labels and reads its accuracy counts lazily; the GradScaler's inf check (`.item()`) is not traced, and
clipping is traced through `clip_grad_norm_` directly (the trainer's `clip_gradients` reads the norm).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from tts_lib.models import PlanningShape, reference_shape
from tts_lib.training.adapters import AdapterConfig, add_adapters, is_adapted, keep_autocast_inputs
from tts_lib.training.ema import EMA
from tts_lib.training.optim import OptimConfig, make_optimizer

MODES = ("quick_lora", "full", "two_phase")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CATEGORIES = ("weights", "gradients", "optimizer", "ema", "activations", "logits")
CUDA_ROUNDING = 512  # bytes: the smallest block CUDA's caching allocator hands out
TOKEN_STEP = 256  # max_tokens_for answers in multiples of this
GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    max_tokens: int
    gradient_checkpointing: bool
    precision: str
    # GiB held at the peak, by what holds them; they add up to peak_gib
    weights_gib: float  # parameters and buffers (rotary tables)
    gradients_gib: float  # .grad of the trainable parameters
    optimizer_gib: float  # AdamW's moments (and its step's temporaries)
    ema_gib: float  # the EMA's fp32 averages (and the live weights saved while they are swapped in)
    activations_gib: float  # everything the forward saves for backward, and backward's temporaries
    logits_gib: float  # full-vocabulary logits and their gradients
    peak_gib: float
    peak_during: str  # forward, backward, optimizer, ema or validation


class LiveMemory(TorchDispatchMode):
    """Bytes held by live tensor storages, by category, and the breakdown at the highest total.

    A storage is counted from the op that creates it until it is freed (a weak reference's callback);
    storages that exist before (weights, optimiser state, EMA) are added with `hold`. A new storage takes
    the current `phase`'s category, except full-vocabulary logits; gradients are relabelled by the hooks
    of `watch_gradients` when autograd accumulates them into `.grad`."""

    PHASE_CATEGORY = {"forward": "activations", "backward": "activations", "optimizer": "optimizer",
                      "ema": "ema", "validation": "activations"}  # fmt: skip

    def __init__(self, vocab_size: int, rounding: int = CUDA_ROUNDING) -> None:
        super().__init__()
        self.vocab_size, self.rounding = vocab_size, rounding
        self.phase = "forward"
        self.live = dict.fromkeys(CATEGORIES, 0)
        self.peak, self.at_peak, self.peak_phase = 0, dict(self.live), self.phase
        self._entries = WeakIdKeyDictionary()  # storage -> [category, bytes]

    def hold(self, tensors, category: str) -> None:
        for t in tensors:
            self._add(t, category)

    def watch_gradients(self, model: nn.Module) -> list:
        """Hooks that relabel each trainable parameter's `.grad` as gradients; remove them when done."""
        relabel = lambda p: self._relabel(p.grad, "gradients")  # noqa: E731
        return [p.register_post_accumulate_grad_hook(relabel) for p in model.parameters() if p.requires_grad]

    def _add(self, t: torch.Tensor, category: str) -> None:
        storage = t.untyped_storage()
        if storage in self._entries:
            return
        entry = [category, math.ceil(storage.nbytes() / self.rounding) * self.rounding]
        self._entries[storage] = entry
        weakref.finalize(storage, self._free, entry)
        self.live[category] += entry[1]
        total = sum(self.live.values())
        if total > self.peak:
            self.peak, self.at_peak, self.peak_phase = total, dict(self.live), self.phase

    def _free(self, entry: list) -> None:
        self.live[entry[0]] -= entry[1]

    def _relabel(self, t: torch.Tensor, category: str) -> None:
        entry = self._entries.get(t.untyped_storage())
        if entry is None:
            self._add(t, category)
        else:
            self.live[entry[0]] -= entry[1]
            entry[0] = category
            self.live[category] += entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                wide = t.ndim > 0 and t.shape[-1] == self.vocab_size
                self._add(t, "logits" if wide else self.PHASE_CATEGORY[self.phase])
        return out


def build_model(
    shape: PlanningShape,
    mode: str,
    precision: str,
    gradient_checkpointing: bool,
    fake: FakeTensorMode | None,
    device: str = "cpu",
) -> nn.Module:
    """The model as `tts_lib.training.train.build_model` makes it, on fake CPU tensors (`fake`), or on real random
    ones on `device` (None: to check the trace against real tensors; on a GPU, against
    torch.cuda.max_memory_allocated over `trace_step`)."""
    frozen_bf16 = mode == "quick_lora" and precision == "bf16"  # the loop's rule: a bf16 base only under bf16
    base = shape.meta_model().to(torch.bfloat16 if frozen_bf16 else torch.float32)
    base.gradient_checkpointing = gradient_checkpointing
    model = base
    if mode == "quick_lora":
        with torch.device("meta"):
            model = add_adapters(base, AdapterConfig())  # trainable weights fp32
        if precision != "fp32":  # the loop's rule: under autocast adapters take their inputs uncast
            keep_autocast_inputs(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):  # LoRA's dropout
                setattr(module, name, FusedDropout(child.p))
    device = "cpu" if fake is not None else device
    with fake or contextlib.nullcontext():
        model.to_empty(device=device)
        shape.materialize(model.get_base_model() if is_adapted(model) else model, device)
    if fake is None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
    return model.train()


class FusedDropout(nn.Module):
    """nn.Dropout as CUDA runs it: one fused kernel that keeps a bool mask for backward. On a CPU,
    nn.Dropout keeps its mask in the input's dtype (4 bytes an element for fp32), which would make
    the plan of LoRA, whose dropout runs on every adapted layer's fp32 input, gigabytes too high."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.native_dropout(x, self.p, self.training)[0] if self.training else x


def trace_step(
    model: nn.Module, batch: dict, precision: str, shape: PlanningShape, rounding: int = CUDA_ROUNDING
) -> LiveMemory:
    """One training step of `model` (the loop's second on: AdamW's moments exist, no gradients do) and one
    validation pass with the EMA swapped in, under LiveMemory, on the device of the model's weights."""
    device = next(model.parameters()).device
    autocast = autocast_for(precision, device.type)
    batch = {name: t.to(device) for name, t in batch.items()}
    optimizer = make_optimizer(model, OptimConfig(fused=True), "cuda")  # fused, as on a GPU: no temporaries
    # A step with zero gradients creates the moments, fake like the weights (a fake tensor's mode is its own)
    with getattr(next(model.parameters()), "fake_mode", None) or contextlib.nullcontext():
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    ema = EMA(model)

    tracker = LiveMemory(shape.logits_width, rounding)
    tracker.hold([*model.parameters(), *model.buffers()], "weights")
    tracker.hold([t for state in optimizer.state.values() for t in state.values()], "optimizer")
    tracker.hold(ema.shadow.values(), "ema")
    hooks = tracker.watch_gradients(model)
    with tracker:
        with autocast():
            loss = shape.loss_parts(model, batch).loss()
        tracker.phase = "backward"
        loss.backward()
        del loss
        for hook in hooks:
            hook.remove()
        tracker.phase = "optimizer"
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker.phase = "ema"
        ema.update(model)
        model.eval()
        with torch.no_grad(), ema.swap_into(model):
            tracker.phase = "validation"
            with autocast():
                shape.loss_parts(model, batch)
        model.train()
    return tracker


def autocast_for(precision: str, device_type: str = "cpu"):
    """The loop's autocast; on fake CPU tensors CPU autocast stands in for CUDA's (it casts matmuls the same way)."""
    dtype = PRECISIONS[precision]
    return lambda: torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


_plans: dict[tuple, MemoryPlan] = {}


def plan_memory(
    mode: str,
    max_tokens: int,
    gradient_checkpointing: bool = False,
    precision: str = "bf16",
    shape: PlanningShape | None = None,
) -> MemoryPlan:
    """The traced plan for one training setting of the model of `shape` (None: the reference model, S1-mini).
    Remembered per process."""
    if mode not in MODES:
        raise ValueError(f"memory plan: mode must be one of {', '.join(MODES)}, found {mode!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"memory plan: precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"memory plan: max_tokens must be a whole number >= 1, found {max_tokens!r}")
    shape = shape or reference_shape()
    if mode == "two_phase":  # phase one trains every weight, phase two an adapter: the run needs the larger
        phases = [plan_memory(m, max_tokens, gradient_checkpointing, precision, shape) for m in ("full", "quick_lora")]
        return dataclasses.replace(max(phases, key=lambda p: p.peak_gib), mode="two_phase")
    key = (mode, max_tokens, gradient_checkpointing, precision, shape.key)
    if key not in _plans:
        model = build_model(shape, mode, precision, gradient_checkpointing, FakeTensorMode(allow_non_fake_inputs=True))
        tracker = trace_step(model, shape.batch(max_tokens), precision, shape)
        parts = {f"{c}_gib": tracker.at_peak[c] / GIB for c in CATEGORIES}
        _plans[key] = MemoryPlan(
            mode, max_tokens, gradient_checkpointing, precision, **parts, peak_gib=tracker.peak / GIB,
            peak_during=tracker.peak_phase,
        )  # fmt: skip
    return _plans[key]


def format_plan(plan: MemoryPlan, model: str = "S1-mini") -> str:
    """`model`: whose shape was traced, for the reader."""
    checkpointing = "on" if plan.gradient_checkpointing else "off"
    lines = [
        f"memory plan: {plan.mode}, max_tokens {plan.max_tokens}, {plan.precision}, "
        f"gradient checkpointing {checkpointing} (traced, {model} shape)",
        *(f"  {c:<12} {getattr(plan, c + '_gib'):7.2f} GiB" for c in CATEGORIES),
        f"  {'peak':<12} {plan.peak_gib:7.2f} GiB, during {plan.peak_during}",
        "not counted: CUDA context (~0.5 GiB) and allocator fragmentation; leave 10% free",
        f"peak_gib={plan.peak_gib:.2f}",
    ]
    return "\n".join(lines)


def max_tokens_for(
    mode: str,
    free_gib: float,
    margin: float = 0.1,
    gradient_checkpointing: bool = False,
    precision: str = "bf16",
    shape: PlanningShape | None = None,
    cap: int | None = None,
) -> int:
    """The largest max_tokens (a multiple of TOKEN_STEP, at most `cap`) whose planned peak fits in `free_gib`
    less a `margin` fraction (allocator fragmentation, the CUDA context). Raises when not even TOKEN_STEP fits."""
    budget = free_gib * (1 - margin)

    def fits(tokens: int) -> bool:
        return plan_memory(mode, tokens, gradient_checkpointing, precision, shape).peak_gib <= budget

    if not fits(TOKEN_STEP):
        smallest = plan_memory(mode, TOKEN_STEP, gradient_checkpointing, precision, shape).peak_gib
        raise ValueError(
            f"{mode} needs {smallest:.1f} GiB at max_tokens {TOKEN_STEP} by the memory plan, but only "
            f"{free_gib:.1f} GiB are free ({budget:.1f} GiB after the {margin:.0%} margin); use a larger GPU"
            + ("" if gradient_checkpointing else " or turn on gradient_checkpointing")
        )
    # The peak grows about linearly with max_tokens: a line through two plans gives the guess, then
    # single steps settle it against the traced plans themselves.
    low = plan_memory(mode, TOKEN_STEP, gradient_checkpointing, precision, shape)
    high = plan_memory(mode, 4 * TOKEN_STEP, gradient_checkpointing, precision, shape)
    per_token = max((high.peak_gib - low.peak_gib) / (3 * TOKEN_STEP), 1e-9)
    most = cap // TOKEN_STEP * TOKEN_STEP if cap is not None else None
    guess = TOKEN_STEP * max(1, int((TOKEN_STEP + (budget - low.peak_gib) / per_token) // TOKEN_STEP))
    if most is not None and guess >= most:
        if fits(most):
            return most
        guess = most
    while guess > TOKEN_STEP and not fits(guess):
        guess -= TOKEN_STEP
    while (most is None or guess < most) and fits(guess + TOKEN_STEP):
        guess += TOKEN_STEP
    return guess


def run(args: argparse.Namespace) -> int:
    """`python -m tts_lib memory-plan` (its options are in tts_lib/cli.py): the reference model of `--family`, or
    the model of the `--base-model` folder."""
    from tts_lib.models import default_max_tokens, load_family, reference_model

    if args.base_model:
        family = load_family(args.base_model)
        shape, model, name = family.planning_shape(), str(args.base_model), family.name
    else:
        released = reference_model(args.family)
        shape, model, name = reference_shape(args.family), released.title if released else args.family, args.family
    tokens = args.max_tokens or default_max_tokens(name)
    plan = plan_memory(args.mode, tokens, args.gradient_checkpointing, args.precision, shape)
    if args.free_gib is not None:
        fitting = max_tokens_for(args.mode, args.free_gib, 0.1, args.gradient_checkpointing, args.precision, shape)
        print(f"largest max_tokens for {args.free_gib:g} GiB free (10% margin): {fitting}")
    print(format_plan(plan, model))
    return 0
