"""The training loop every fine-tuning mode runs through: python -m tts_lib train --config run.yaml

Read `train()` top to bottom: setup (device, precision, data, model, optimiser, schedule, EMA),
resume from the run folder's latest checkpoint if there is one, then the loop: gather the
micro-batches of one update, backward each with its loss divided by the update's supervised-token
totals, unscale, clip, step (or skip a non-finite update), EMA, log, validate, save.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tts_lib import checkpoints as ckpt
from tts_lib import distributed
from tts_lib.adapters import add_adapters, check_base, check_continuable, load_adapter_weights, save_adapter
from tts_lib.config_io import config_to_dict, save_config
from tts_lib.ema import EMA
from tts_lib.manifest import read_manifest
from tts_lib.models import load_family
from tts_lib.models.fish_speech.loss import supervised_counts
from tts_lib.optim import clip_gradients, make_optimizer
from tts_lib.sampler import LengthBucketedBatchSampler
from tts_lib.schedules import make_scheduler
from tts_lib.train_config import RESUME_FIXED, RESUME_QUIET, TrainConfig
from tts_lib.train_log import TrainLog


@dataclass
class TrainResult:
    step: int
    final_model: Path | None  # upstream-layout folder (adapter folder for LoRA); None when interrupted
    best_metric: float | None
    stopped_early: bool = False
    interrupted: bool = False


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None = fp32) and a sentence saying why."""
    if device.type != "cuda":
        return None, "fp32: autocast on CPU is slower than it saves"
    if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "bf16 autocast: supported by this GPU, no loss scaling needed"
    if requested == "fp32":
        return None, "fp32: as configured"
    return torch.float16, "fp16 autocast with loss scaling: this GPU has no bf16"


class StopFlag:
    """SIGTERM/SIGINT ask the loop to save and stop after the current update."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def load_samples(family, items) -> list:
    return [family.build_sample(i.text, torch.from_numpy(np.load(i.codes).astype(np.int64))) for i in items]


@torch.no_grad()
def evaluate(model, family, samples, max_tokens: int, autocast) -> dict[str, float]:
    """Loss components and semantic accuracy over the held-out samples."""
    model.eval()
    device = next(model.parameters()).device
    lengths = [s.tokens.shape[1] for s in samples]
    sums = {"slow": 0.0, "fast": 0.0, "slow_n": 0, "fast_n": 0, "top1": 0, "top5": 0, "frames": 0}
    for idx in LengthBucketedBatchSampler(lengths, max(max_tokens, max(lengths)), shuffle=False):
        with autocast():
            batch = family.collate([samples[i] for i in idx])
            p = family.loss_parts(model, {k: v.to(device) for k, v in batch.items()})
        sums["slow"] += p.slow_sum.item()
        sums["fast"] += p.fast_sum.item()
        sums["slow_n"] += p.slow_count
        sums["fast_n"] += p.fast_count
        sums["top1"] += p.top1
        sums["top5"] += p.top5
        sums["frames"] += p.semantic_count
    model.train()
    slow, fast = sums["slow"] / max(sums["slow_n"], 1), sums["fast"] / max(sums["fast_n"], 1)
    frames = max(sums["frames"], 1)
    return {"val_loss": slow + fast, "val_slow_loss": slow, "val_codebook_loss": fast,
            "val_top1": sums["top1"] / frames, "val_top5": sums["top5"] / frames}  # fmt: skip


def train(config: TrainConfig, on_metrics: Callable[[dict], None] | None = None) -> TrainResult:
    # ---- setup ------------------------------------------------------------------------------
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    )
    info = distributed.setup(device.type)  # one process, or one of torchrun's
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    say = print if info.is_main else (lambda *args, **kwargs: None)  # only rank 0 talks and writes
    amp_dtype, why = choose_precision(config.precision, device)
    say(f"device {device} x {info.world_size} process(es), precision: {why}")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    torch.manual_seed(config.seed)
    family = load_family(config.base_model)
    items = read_manifest(config.manifest)
    missing = [i.id for i in items if not i.codes]
    if missing:
        raise ValueError(f"{config.manifest}: {len(missing)} items have no codes (e.g. {missing[:3]}); "
                         "run `python -m tts_lib extract-codes` first")  # fmt: skip
    train_items = [i for i in items if i.split == "train"]
    val_samples = load_samples(family, [i for i in items if i.split == "val"])
    train_samples = load_samples(family, train_items)
    sampler = LengthBucketedBatchSampler(
        [s.tokens.shape[1] for s in train_samples],
        config.max_tokens,
        config.max_items,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    model = family.load_model(device=device, dtype=torch.float32)  # trainable weights stay fp32
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.adapter is not None:  # from here on only the adapter (and maybe embeddings) trains
        if config.init_adapter:
            check_continuable(config.init_adapter, config.adapter)
            check_base(config.init_adapter, family.identity())
        model = add_adapters(model, config.adapter)
        if config.init_adapter:
            load_adapter_weights(model, config.init_adapter)
    # Steps run through the compiled wrapper; checkpoints and the export save `model` itself.
    step_model = torch.compile(model) if config.compile else model
    model.train()
    optimizer = make_optimizer(model, config.optim, device.type)
    scheduler = make_scheduler(optimizer, config.schedule, config.max_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    fingerprint = ckpt.data_fingerprint(items)
    step, epoch, position, best, bad_validations, bad_steps = 0, 0, 0, None, 0, 0

    # ---- resume -----------------------------------------------------------------------------
    latest = Path(config.resume_from) if config.resume_from else ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        state = ckpt.load_checkpoint(latest)
        changed = ckpt.check_resume_compatible(state[ckpt.CONFIG], config_to_dict(config), list(RESUME_FIXED))
        if changed:
            raise ValueError(f"cannot resume {latest}: " + "; ".join(changed) + " (use a new run_dir to start over)")
        for line in ckpt.changed_settings(state[ckpt.CONFIG], config_to_dict(config)):
            if line.split(".")[0].split(":")[0] not in RESUME_QUIET:
                say(f"warning: resuming with a changed setting, {line}; the saved optimiser state and "
                    "schedule position are kept")  # fmt: skip
        if state[ckpt.DATA_FINGERPRINT] != fingerprint:
            raise ValueError(f"cannot resume {latest}: the manifest's items changed since it was saved "
                             "(use a new run_dir, or train incrementally from this run's model)")  # fmt: skip
        ckpt.load_trainable_state(model, state[ckpt.MODEL])
        optimizer.load_state_dict(state[ckpt.OPTIMIZER])
        scheduler.load_state_dict(state[ckpt.SCHEDULER])
        scaler.load_state_dict(state[ckpt.SCALER])
        if ema is not None:
            ema = EMA.from_model_or_state(model, state[ckpt.EMA], config.ema_decay)
        sampler.load_state_dict(state[ckpt.SAMPLER])
        step, epoch, position = state[ckpt.STEP], sampler.epoch, sampler.position
        best, bad_validations = state[ckpt.BEST_METRIC], state[ckpt.EARLY_STOP]["bad_validations"]
        ckpt.set_rng_state(state[ckpt.RNG])
        say(f"resumed from {latest} at step {step}")
    if info.is_main:
        save_config(config, run_dir / "config.yaml")
        log = TrainLog(run_dir, step, config.log_every_seconds, on_metrics)

    def save() -> None:
        if not info.is_main:
            return
        sampler.set_epoch(epoch)
        ckpt.save_checkpoint(run_dir, step, {
            ckpt.MODEL: ckpt.trainable_state(model), ckpt.OPTIMIZER: optimizer.state_dict(),
            ckpt.SCHEDULER: scheduler.state_dict(), ckpt.SCALER: scaler.state_dict(),
            ckpt.EMA: ema.state_dict() if ema else None, ckpt.RNG: ckpt.rng_state(),
            ckpt.SAMPLER: sampler.state_dict(position=position), ckpt.EPOCH: epoch, ckpt.BEST_METRIC: best,
            ckpt.EARLY_STOP: {"bad_validations": bad_validations}, ckpt.CONFIG: config_to_dict(config),
            ckpt.DATA_FINGERPRINT: fingerprint,
        })  # fmt: skip
        best_folder = ckpt.best_checkpoint(run_dir)
        ckpt.keep_last(run_dir, config.keep_last, protect=[best_folder] if best_folder else [])

    def next_batch() -> list[int]:
        nonlocal epoch, position
        if position == len(sampler.rank_batches(epoch)):
            epoch, position = epoch + 1, 0
        position += 1
        return sampler.rank_batches(epoch)[position - 1]

    # ---- the loop ---------------------------------------------------------------------------
    stop = StopFlag()
    stopped_early = interrupted = False
    try:
        while step < config.max_steps and not stopped_early:
            # Every process must agree to stop at the same update, or the others wait forever.
            interrupted = distributed.all_sum(info, float(stop.requested))[0] > 0
            if interrupted:
                break
            started = time.monotonic()
            micro = [next_batch() for _ in range(config.grad_accum)]
            batches = [
                {k: v.to(device) for k, v in family.collate([train_samples[i] for i in m]).items()} for m in micro
            ]
            counts = [supervised_counts(model, b) for b in batches]
            slow_total, fast_total = distributed.all_sum(info, sum(c[0] for c in counts), sum(c[1] for c in counts))
            loss_value = 0.0
            for batch in batches:
                with autocast():
                    parts = family.loss_parts(step_model, batch)
                    loss = parts.loss(slow_total, fast_total)  # per supervised token of the whole update
                scaler.scale(loss).backward()
                loss_value += loss.item()
            loss_value = distributed.all_sum(info, loss_value)[0]
            distributed.all_reduce_grads(info, model)  # once per update, never per micro-batch
            scaler.unscale_(optimizer)
            grad_norm = clip_gradients(model.parameters(), config.optim.max_grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                bad_steps += 1
                ids = [train_items[i].id for m in micro for i in m]
                say(f"skipped a non-finite update ({bad_steps} in a row): loss {loss_value}, grad norm "
                    f"{grad_norm}, items {ids}", flush=True)  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                scaler.update()
                if bad_steps >= config.max_bad_steps:
                    save()
                    raise RuntimeError(
                        f"{bad_steps} non-finite updates in a row; last good state saved at step "
                        f"{step} in {run_dir}. Lower optim.lr or check the items named above."
                    )
                continue
            bad_steps = 0
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1

            seconds = time.monotonic() - started
            row = {
                "step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                "tokens_per_s": (slow_total + fast_total) / seconds,
                "items_per_s": sum(map(len, micro)) * info.world_size / seconds, "epoch": epoch,
            }  # fmt: skip
            improved = False
            if config.val_every and val_samples and (step % config.val_every == 0 or step == config.max_steps):
                with ema.swap_into(model) if ema else nullcontext():
                    metrics = evaluate(model, family, val_samples, config.max_tokens, autocast)
                row.update(metrics)
                improved = best is None or metrics["val_codebook_loss"] < best - config.early_stop_min_delta
                if improved:
                    best, bad_validations = metrics["val_codebook_loss"], 0
                else:
                    bad_validations += 1
                    stopped_early = (
                        config.early_stop_patience is not None and bad_validations >= config.early_stop_patience
                    )
            # Log before saving: a kill in between then redoes this step after resume instead of
            # leaving a checkpoint whose step never reached metrics.jsonl.
            if info.is_main:
                log.write(row, config.max_steps)
            if improved or stopped_early or step % config.save_every == 0 or step == config.max_steps:
                save()
            if improved and info.is_main:
                ckpt.mark_best(run_dir, step, best, name="val_codebook_loss")
        if interrupted:
            save()
            say(f"stopped by a signal at step {step}; the checkpoint resumes it", flush=True)
            return TrainResult(step, None, best, interrupted=True)

        # ---- the result ---------------------------------------------------------------------
        final = None
        best_folder = ckpt.best_checkpoint(run_dir) if config.final_weights == "best" else None
        if info.is_main and best_folder is not None:  # the weights that validated best, not the last ones
            state = ckpt.load_checkpoint(best_folder)
            ckpt.load_trainable_state(model, state[ckpt.MODEL])
            if ema is not None:
                ema = EMA.from_model_or_state(model, state[ckpt.EMA], config.ema_decay)
            say(f"final model: the best checkpoint, step {state[ckpt.STEP]} (val_codebook_loss {best:.4f})")
        if info.is_main:
            with ema.swap_into(model) if ema else nullcontext():
                if config.adapter is not None:
                    final = save_adapter(model, run_dir / "final_adapter", config.adapter, family.identity(), True)
                else:
                    final = family.save(model, run_dir / "final")
        say(f"done at step {step}: model in {final}" + (f", best val_codebook_loss {best:.4f}" if best else ""))
        return TrainResult(step, final, best, stopped_early=stopped_early)
    finally:
        stop.restore()
        if info.is_main:
            log.close()
        distributed.cleanup(info)
