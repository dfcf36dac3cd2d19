"""The training run's settings, one YAML file: python -m tts_lib train --config run.yaml [--set key=value]

Every field has a default that suits a first fine-tune; the resolved config is saved in the run
folder and in every checkpoint, and a resume refuses settings that would change what the saved
batches and weights mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tts_lib.training.adapters import AdapterConfig
from tts_lib.training.optim import OptimConfig
from tts_lib.training.schedules import ScheduleConfig


@dataclass
class TrainConfig:
    base_model: str = ""  # checkpoint folder in upstream layout (config.json, model.pth, ...)
    manifest: str = ""  # prepared manifest (prepare_dataset + extract-codes): items with splits and codes
    run_dir: str = "runs/train"  # checkpoints, metrics.jsonl and the final model go here
    max_steps: int = 1000  # optimiser steps
    # padded training positions per micro-batch (the sampler's budget; Fish Speech: codec frames, VoxCPM2: latent
    # patches, text tokens included); None: the family's default (Fish Speech 4096, VoxCPM2 1024: a few minutes of
    # audio each); "auto": on a GPU the largest the free memory holds by the memory plan
    # (tts_lib.training.device.auto_max_tokens), on a CPU the family's default. The number is saved and resumed
    max_tokens: int | Literal["auto"] | None = None
    max_items: int | None = None  # cap on items per micro-batch; None = only the token budget
    grad_accum: int = 1  # micro-batches per optimiser step
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where supported, fp32 on CPU
    seed: int = 0  # batches, init and sampling all follow from it
    val_every: int = 100  # steps between validations (0 = never)
    save_every: int = 100  # steps between checkpoints (and at the end)
    keep_last: int = 3  # step checkpoints kept besides the best
    ema_decay: float | None = 0.999  # None = no EMA; validation and the final model use EMA weights
    early_stop_patience: int | None = None  # validations without improvement before stopping; None = off
    early_stop_min_delta: float = 0.0  # an improvement must beat the best by this much
    # what final/ (or final_adapter/) holds: "best" = the checkpoint with the lowest val_codebook_loss (the last
    # weights when nothing was validated), "last" = the weights at the last step; EMA-averaged either way
    final_weights: Literal["best", "last"] = "best"
    max_bad_steps: int = 5  # consecutive non-finite updates before the run stops
    log_every_seconds: float = 5.0  # plain progress lines at most this often
    gradient_checkpointing: bool = False  # less memory, about 30% more compute
    compile: bool = False  # torch.compile the forward: faster steps on GPU after a minute of compiling
    # several GPUs (torchrun), full fine-tunes only: shard weights, gradients, Adam state and EMA over the GPUs
    # (FSDP2) instead of a whole copy on each (DDP); for models whose optimiser state does not fit one GPU
    fsdp: bool = False
    adapter: AdapterConfig | None = None  # None = full fine-tune; else train only a LoRA/DoRA adapter
    init_adapter: str | None = None  # an adapter folder to continue (LoRA-on-LoRA; same adapter settings)
    resume_from: str | None = None  # a checkpoint folder to resume from; None = the run_dir's latest, if any
    device: str = "auto"  # auto: cuda if available, else cpu
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum < 1 or (isinstance(self.max_tokens, int) and self.max_tokens < 1):
            raise ValueError("max_steps, grad_accum and max_tokens must be at least 1 (max_tokens may be \"auto\")")
        if self.init_adapter and self.adapter is None:
            raise ValueError("init_adapter continues a LoRA adapter: set adapter (r, lora_alpha, ...) too")
        if self.fsdp and self.adapter is not None:
            raise ValueError("fsdp shards full fine-tunes, but this run trains an adapter, whose small state "
                             "every GPU can hold: set fsdp: false (DDP)")  # fmt: skip
        if self.fsdp and self.compile:
            raise ValueError("fsdp runs uncompiled (torch.compile with FSDP2 is untested in tts_lib): "
                             "set compile: false, or fsdp: false")  # fmt: skip


# Settings that change which batches a step sees or what the saved weights are: a resume refuses them.
RESUME_FIXED = ("base_model", "max_tokens", "max_items", "grad_accum", "seed", "adapter", "init_adapter")
# Settings whose change only matters to the run's bookkeeping: a resume takes them silently. Any other
# change (lr, schedule, EMA, steps, validation, early stopping) is safe and taken with a warning line.
RESUME_QUIET = ("run_dir", "resume_from", "device", "log_every_seconds", "manifest", "final_weights", "fsdp")
