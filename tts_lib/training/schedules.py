"""Learning-rate schedules as pure functions of the optimiser step.

`lr_multiplier` scales each param group's base lr, so groups with their own lr (embeddings, heads, layer decay)
keep their ratios through warmup and decay. `make_scheduler` wraps it in a LambdaLR whose state_dict is only the
step counter, which is all a resume needs: the schedule itself is rebuilt from the saved config.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class ScheduleConfig:
    # cosine decay is the usual choice for fine-tuning runs of known length, and what upstream Fish Speech uses
    kind: Literal["cosine", "constant", "multistep"] = "cosine"
    # a short warmup keeps AdamW's first, poorly estimated updates from knocking a pretrained model off course
    warmup_steps: int = 100
    # ending at 10% of the peak rather than 0 keeps the last steps learning without undoing earlier progress
    min_lr_ratio: float = 0.1
    # multistep only: no milestones means a constant lr after warmup until some are given
    milestones: tuple[int, ...] = ()
    # multistep only: halving at each milestone, as the XTTS recipes do
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, found {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be within [0, 1], found {self.min_lr_ratio}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, found {self.gamma}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be in increasing order, found {list(self.milestones)}")


def warmup_factor(step: int, warmup_steps: int) -> float:
    # (step + 1) / (warmup + 1): step 0 already trains a little (an lr of 0 would waste the step) and the ramp
    # reaches exactly 1 at step == warmup_steps
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / (warmup_steps + 1)


def lr_multiplier(config: ScheduleConfig, step: int, total_steps: int) -> float:
    """Factor on the base lr at optimiser step `step` (0-based) of a run of `total_steps` steps."""
    warm = warmup_factor(step, config.warmup_steps)
    if config.kind == "constant":
        return warm
    if config.kind == "multistep":
        passed = sum(1 for m in config.milestones if m <= step)
        return warm * config.gamma**passed
    if config.kind == "cosine":
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, max(0.0, (step - config.warmup_steps) / span))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)
    raise ValueError(f"unknown schedule kind {config.kind!r}; expected cosine, constant or multistep")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR to be stepped once per optimiser step (not per micro-batch, not per epoch)."""
    # a partial, not a lambda or closure: LambdaLR.state_dict then stays picklable
    fn = functools.partial(lr_multiplier, config, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)
