"""Multi-GPU (or multi-process CPU) training under torchrun: python -m torch.distributed.run
--nproc_per_node=N -m tts_lib train --config run.yaml

torch's own engines do the gradient work. `wrap()` puts the training-loss module into
DistributedDataParallel (adapters, and full fine-tunes whose optimiser state fits one GPU) or, with
`fsdp: true`, shards it with FSDP2's `fully_shard` (full fine-tunes too big for one GPU: weights,
gradients, Adam state and EMA are split over the GPUs). `sync_gradients()` keeps the accumulation
micro-batches local, so processes communicate once per update. Both engines average gradients over
processes, while the trainer divides each micro-batch's loss by the token totals of the whole global
update: it multiplies by `world_size` to undo the average, so the gradient equals what one process
would compute on the global batch.

Every collective runs on the process's training device (`Dist.device`): NCCL refuses CPU tensors
("No backend type associated with device type cpu"). Numbers all ranks must agree on (the stop
flag, token totals, validation results) are summed or broadcast from rank 0, so every rank takes the
same decisions and none waits forever for the others.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Dist:
    """Read torchrun's environment and start the process group; `device` is the requested training
    device, made `cuda:<local rank>` under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    info = Dist(int(os.environ["RANK"]), world_size, local_rank, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def cleanup(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(info: Dist, *values: float) -> list[float]:
    """Sum a few numbers (token counts, losses, flags) over all processes; exact for counts."""
    if not info.enabled:
        return [float(v) for v in values]
    summed = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(summed)
    return summed.tolist()


def from_main(info: Dist, *values: float) -> list[float]:
    """Rank 0's numbers on every rank: decisions (best weights, early stop) are taken once, from them."""
    if not info.enabled:
        return [float(v) for v in values]
    shared = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.broadcast(shared, src=0)
    return shared.tolist()


def barrier(info: Dist) -> None:
    """Wait until every process gets here (a sum on the training device: right for NCCL and gloo)."""
    all_sum(info, 0.0)


def gather_to_main(info: Dist, obj: Any) -> list[Any] | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere); e.g. each process's RNG state."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


# ---------------------------------------------------------------- the engines


def wrap(module: nn.Module, info: Dist, fsdp: bool) -> nn.Module:
    """The module to run training steps through: `module` itself (one process), DDP around it, or
    `module` sharded in place by FSDP2 (each entry of every nn.ModuleList, i.e. each transformer
    block, its own unit; the rest in the root unit)."""
    if not info.enabled:
        return module
    if fsdp:
        for blocks in [m for m in module.modules() if isinstance(m, nn.ModuleList)]:
            for block in blocks:
                fully_shard(block)
        fully_shard(module)
        return module
    ids = [info.device.index] if info.device.type == "cuda" else None
    # Gradients as views into DDP's communication buckets: no second copy of them. The buffers (rotary
    # tables) are derived data, the same everywhere: nothing to send before each forward.
    return DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True, forward_sync_buffers=False)


def sync_gradients(step_module: nn.Module, sync: bool):
    """Context for one micro-batch's forward and backward: `sync=False` keeps its gradients local
    (accumulation), True reduces the accumulated gradients over processes in this backward."""
    if isinstance(step_module, DistributedDataParallel):
        return nullcontext() if sync else step_module.no_sync()
    if isinstance(step_module, FSDPModule):
        step_module.set_requires_gradient_sync(sync)
    return nullcontext()


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def reshard(module: nn.Module) -> None:
    """Free the gathered weights after a forward without backward (validation): FSDP keeps the root's
    weights gathered until a backward, and the EMA swap must find shards again."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


# ---------------------------------------------------------------- sharded tensors and state


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP shard (a collective: every rank must call it), else `t`."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def copy_full_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole (unsharded) tensor into `target`, which may be this rank's FSDP shard of it."""
    if isinstance(target, DTensor):
        # Every rank holds the whole tensor (read from the same file): each keeps its own slice, no traffic.
        full = distribute_tensor(full.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    target.copy_(full)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint saves of the optimiser: its state_dict, or under FSDP the gathered whole
    state keyed by parameter name (a collective; complete on rank 0)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    keyed_by_name = any(isinstance(k, str) for k in state.get("state", {}))
    if not keyed_by_name and not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    if not keyed_by_name:
        raise ValueError(
            "this checkpoint's optimiser state was saved without fsdp and cannot be sharded; "
            "resume it with fsdp: false (or start a new run_dir)"
        )
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
