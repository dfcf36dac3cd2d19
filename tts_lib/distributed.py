"""Multi-GPU (or multi-process CPU) training under torchrun: python -m torch.distributed.run
--nproc_per_node=N -m tts_lib train --config run.yaml

One helper pair, as small as it can be: `setup()` reads torchrun's environment, starts the process
group (NCCL on GPUs, gloo on CPU) and says who this process is; `all_reduce_grads()` sums the
gradients of all processes once per update, in flat buckets, after the last micro-batch (so
accumulation micro-steps never communicate). The loss of each micro-batch is divided by the
update's token totals over all processes, so the summed gradient equals what one process would
compute on the whole global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BUCKET_BYTES = 32 * 2**20  # fewer, larger all-reduces: NCCL and gloo both prefer them


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    info = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def cleanup(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(info: Dist, *values: float) -> list[float]:
    """Sum a few numbers (token counts, losses, flags) over all processes; exact for counts."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def all_reduce_grads(info: Dist, model: nn.Module) -> None:
    """Sum every trainable parameter's gradient over all processes, in flat buckets."""
    if not info.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter this process did not use: it still takes part in the sum
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params + [None]:
        if p is not None:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
        if bucket and (p is None or size >= BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0
