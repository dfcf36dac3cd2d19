"""Exponential moving average of a model's trainable weights, for validation and export.

Only parameters with `requires_grad` are tracked: with LoRA or a frozen codec the rest never
changes, so averaging it would only cost memory. The averages are fp32 copies whatever the model's
dtype, because `decay * ema + (1 - decay) * p` with decay 0.999 moves each weight by a thousandth
of the difference, which bf16 (8 bits of mantissa) would round away. Under FSDP each average is a
shard like its parameter; `averages()` and `state_dict()` gather whole CPU tensors (every rank calls them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tts_lib.training.checkpoints import differences_text
from tts_lib.training.distributed import copy_full_into, full_tensor

# Keys of EMA.state_dict().
DECAY = "decay"
NUM_UPDATES = "num_updates"
WARMUP = "warmup"
SHADOW = "shadow"


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def decay_at(step: int, decay: float) -> float:
    """Decay for the `step`-th update (0-based) with warm-up.

    The average starts at the initial weights. With a fixed 0.999 it would take thousands of
    steps to forget them, so a short fine-tune would validate and export weights close to the
    untrained ones. (1 + step) / (10 + step) starts at 0.1, reaches 0.9 at step 80 and 0.99 at
    step 890, so early on the average follows the live weights and only later smooths them.
    """
    return min(decay, (1 + step) / (10 + step))


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(dtype=torch.float32).clone() for name, p in trainable_parameters(model).items()
        }
        if not self.shadow:
            raise ValueError("EMA needs at least one parameter with requires_grad=True; the model has none")

    def current_decay(self) -> float:
        return decay_at(self.num_updates, self.decay) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current trainable weights into the average; call after optimizer.step()."""
        d = self.current_decay()
        params = trainable_parameters(model)
        self._check_names(params, "the model")
        for name, p in params.items():
            ema = self.shadow[name]
            ema.mul_(d).add_(p.detach().to(device=ema.device, dtype=torch.float32), alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable weights with the averages (cast to each parameter's dtype)."""
        params = trainable_parameters(model)
        self._check_names(params, "the model")
        for name, p in params.items():
            p.copy_(self.shadow[name])

    @contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Use the averaged weights inside the block, then put the live weights back bit for bit, even on error.
        Where a weight has the average's dtype (fp32: full fine-tunes, adapters) the two are exchanged in place,
        one tensor's temporary at a time, rather than the live weights copied whole (a full S1-mini: 3.2 GiB)."""
        params = trainable_parameters(model)
        self._check_names(params, "the model")
        exchanged = {name for name, p in params.items() if p.dtype == self.shadow[name].dtype
                     and p.device == self.shadow[name].device}  # fmt: skip
        # Any other weight keeps an exact copy in its own dtype and device, so restoring is bit-exact.
        live = {name: p.detach().clone() for name, p in params.items() if name not in exchanged}
        swapped: list[str] = []  # in order, so an error halfway undoes exactly what was done
        try:
            with torch.no_grad():
                for name, p in params.items():
                    if name in exchanged:
                        self._exchange(p, self.shadow[name])
                    else:
                        p.copy_(self.shadow[name])
                    swapped.append(name)
            yield model  # meanwhile self.shadow holds the live values of the exchanged weights
        finally:
            with torch.no_grad():
                for name in swapped:
                    if name in exchanged:
                        self._exchange(params[name], self.shadow[name])
                    else:
                        params[name].copy_(live[name])

    @staticmethod
    def _exchange(a: torch.Tensor, b: torch.Tensor) -> None:
        held = a.detach().clone()
        a.copy_(b)
        b.copy_(held)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def averages(self) -> dict[str, torch.Tensor]:
        """The averaged weights as whole fp32 CPU tensors (no second copy on the GPU)."""
        return {name: full_tensor(t.detach()).cpu().clone() for name, t in self.shadow.items()}

    def state_dict(self) -> dict[str, Any]:
        return {DECAY: self.decay, WARMUP: self.warmup, NUM_UPDATES: self.num_updates, SHADOW: self.averages()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore averages saved by `state_dict`; refuse one made for other parameters."""
        shadow = state[SHADOW]
        self._check_names(shadow, "the saved EMA state")
        for name, t in shadow.items():
            copy_full_into(self.shadow[name], t.detach().to(torch.float32))
        self.decay = float(state[DECAY])
        self.warmup = bool(state.get(WARMUP, True))
        self.num_updates = int(state[NUM_UPDATES])

    def _check_names(self, other: dict[str, torch.Tensor], what: str) -> None:
        labels = ("missing ", "unexpected ", "shape differs (given vs EMA) ")
        problems = differences_text(other, self.shadow, labels, "{name} {found} vs {expected}")
        if problems:
            raise ValueError(
                f"EMA parameters do not match {what}: {problems}. The EMA must be made from the same "
                "model with the same trainable parameters (same LoRA settings and frozen parts)."
            )

    @classmethod
    def from_model_or_state(
        cls,
        model: nn.Module,
        state: dict[str, Any] | None,
        decay: float = 0.999,
        log: Callable[[str], None] = print,
    ) -> EMA:
        """EMA for a resumed run: `state` is the checkpoint's EMA entry, None when it was saved without EMA.

        Without a saved state the average starts from the current (resumed) weights, and `log` says so,
        because validation numbers will then differ from what the earlier run would have reported.
        A fresh run needs no state: use `EMA(model, decay)`.
        """
        ema = cls(model, decay=decay)
        if state is None:
            log("EMA: checkpoint has no EMA state; starting the average from the current (resumed) weights")
            return ema
        ema.load_state_dict(state)
        if ema.decay != decay:
            # The config is what the user asked for now; the saved averages stay valid either way.
            log(f"EMA: checkpoint used decay {ema.decay}, continuing with configured decay {decay}")
            ema.decay = decay
        return ema
