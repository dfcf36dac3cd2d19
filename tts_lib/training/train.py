"""The training loop every fine-tuning mode runs through: python -m tts_lib train --config run.yaml

Read `train()` top to bottom: setup (device, precision, data, model, optimiser, schedule, EMA),
resume from the run folder's latest checkpoint if there is one, then the loop: gather the
micro-batches of one update, backward each with its loss divided by the update's supervised-token
totals (`backward_update`), unscale, clip, step (or skip a non-finite update), EMA, log, validate,
save. Under torchrun the same loop runs in every process, through DDP or FSDP2 (distributed.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tts_lib.common.config_io import config_to_dict, save_config
from tts_lib.data.manifest import read_manifest
from tts_lib.data.sampler import LengthBucketedBatchSampler
from tts_lib.models import load_family
from tts_lib.training import checkpoints as ckpt
from tts_lib.training import distributed
from tts_lib.training.adapters import (
    add_adapters,
    check_base,
    check_continuable,
    keep_autocast_inputs,
    load_adapter_weights,
    resolve_adapter,
    save_adapter,
)
from tts_lib.training.device import pick_device, resolve_max_tokens
from tts_lib.training.ema import EMA
from tts_lib.training.optim import clip_gradients, make_optimizer
from tts_lib.training.schedules import make_scheduler
from tts_lib.training.train_config import RESUME_FIXED, RESUME_QUIET, TrainConfig
from tts_lib.training.train_log import TrainLog

# fp16: GradScaler halves its scale at each overflow and skips that update, which is normal. A scale
# below 1 means the gradients overflow even unscaled: the run diverges, and those skips count as bad.
MIN_LOSS_SCALE = 1.0


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
        if requested in ("bf16", "fp16"):
            return {"bf16": torch.bfloat16, "fp16": torch.float16}[requested], (
                f"{requested} autocast on CPU: as configured (slower than fp32; for checks and tests)"
            )
        return None, "fp32: autocast on CPU is slower than it saves"
    if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16, "bf16 autocast: supported by this GPU, no loss scaling needed"
    if requested == "fp32":
        return None, "fp32: as configured"
    return torch.float16, "fp16 autocast with loss scaling: this GPU has no bf16"


def is_overflow_skip(loss_value: float, scaler: torch.amp.GradScaler) -> bool:
    """For an update with non-finite gradients, after `scaler.update()`: True when it is fp16 loss
    scaling at work (finite loss, the scaler skipped the step and lowered a still usable scale),
    False when the run is diverging (a non-finite loss, or the scale collapsed below MIN_LOSS_SCALE)."""
    return scaler.is_enabled() and math.isfinite(loss_value) and scaler.get_scale() >= MIN_LOSS_SCALE


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


class TrainingLoss(nn.Module):
    """The loss parts of a batch as one module's forward: what DDP and FSDP wrap, so every weight the
    loss touches (the fast transformer too, which the model's own forward does not run) is synchronised."""

    def __init__(self, family, model: nn.Module) -> None:
        super().__init__()
        self.family = family
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.family.loss_parts(self.model, batch)


def load_samples(family, items) -> list:
    """Each item's training sequence from its stored targets: integer codes as int64 (what embeddings index
    with), float latents exactly as stored; a family that trains with a voice reference gets the item's
    (`ref_codes`, its JSONL ref_audio) where it has one."""
    if not family.trains_with_reference:
        return [family.build_sample(i.text, targets(np.load(i.codes))) for i in items]
    return [family.build_sample(i.text, targets(np.load(i.codes)),
                                reference=targets(np.load(i.ref_codes)) if i.ref_codes else None)
            for i in items]  # fmt: skip


def targets(stored: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stored.astype(np.int64) if np.issubdtype(stored.dtype, np.integer) else stored)


@torch.no_grad()
def evaluate(model: nn.Module, family, samples, max_tokens: int, autocast) -> dict[str, float]:
    """The family's loss components and scores over the held-out samples: val_loss (the training loss),
    val_<component>_loss each, and val_<score>. `model`: the model, or its TrainingLoss (under FSDP the sharded
    one, which gathers the weights)."""
    loss_of = model if isinstance(model, TrainingLoss) else TrainingLoss(family, model)
    loss_of.eval()
    device = next(loss_of.parameters()).device
    lengths = [s.length for s in samples]
    sums, counts, scores, score_counts = defaultdict(float), defaultdict(int), defaultdict(float), defaultdict(int)
    for idx in LengthBucketedBatchSampler(lengths, max(max_tokens, max(lengths)), shuffle=False):
        with autocast():
            batch = family.collate([samples[i] for i in idx])
            parts = loss_of({k: v.to(device) for k, v in batch.items()})
        for name, value in parts.sums.items():
            sums[name] += value.item()
            counts[name] += parts.counts[name]
        for name, value in parts.scores.items():
            scores[name] += value.item()
            score_counts[name] += parts.score_counts[name]
    distributed.reshard(loss_of)
    loss_of.train()
    means = {f"val_{name}_loss": sums[name] / max(counts[name], 1) for name in sums}
    return {"val_loss": sum(means.values()), **means,
            **{f"val_{name}": scores[name] / max(score_counts[name], 1) for name in scores}}  # fmt: skip


def resolve_auto_tokens(config: TrainConfig, family, device, amp_dtype, state: dict | None, say) -> TrainConfig:
    """`max_tokens` unset (the family's default) or `auto` made a number: the resumed checkpoint's (its batches
    must not change), else the default, or the largest the GPU's free memory holds by the family's memory plan.
    The number is what checkpoints save."""
    if state is not None:
        tokens = state[ckpt.CONFIG]["max_tokens"]
        why = f"max_tokens {config.max_tokens or 'unset'}: {tokens}, as in the checkpoint resumed"
    else:
        adapter = config.adapter is not None
        tokens, why = resolve_max_tokens(config.max_tokens, family, adapter, device, config.gradient_checkpointing,
                                         amp_dtype)  # fmt: skip
    say(why)
    return dataclasses.replace(config, max_tokens=tokens)


def build_model(family, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> nn.Module:
    """The model to train, in train mode: fp32 for a full fine-tune; under adapters with bf16 autocast
    the frozen base is kept in bf16 (half its memory, and what autocast would compute in anyway), the
    adapter in fp32. An init_adapter is checked and continued."""
    frozen_bf16 = config.adapter is not None and amp_dtype == torch.bfloat16
    model = family.load_model(device=device, dtype=torch.bfloat16 if frozen_bf16 else torch.float32)
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.adapter is not None:  # from here on only the adapter (and maybe the text embeddings) trains
        if config.init_adapter:
            check_continuable(config.init_adapter, config.adapter)
            check_base(config.init_adapter, family.identity())
        model = add_adapters(model, config.adapter)
        if amp_dtype is not None:  # every forward of training and validation runs under autocast
            keep_autocast_inputs(model)
        if config.init_adapter:
            load_adapter_weights(model, config.init_adapter)
    return model.train()


def backward_update(family, step_module, model, batches, info, autocast, scaler) -> tuple[float, int]:
    """Backward every micro-batch of one update, each loss component divided by its supervised-token total
    over the whole update and all processes, so the gradient does not depend on how items fell into
    micro-batches or processes. Gradients are reduced once, in the last micro-batch's backward.
    Returns (the update's loss, its supervised tokens), both over all processes."""
    counts = [family.supervised_counts(model, b) for b in batches]
    names = sorted(counts[0])  # the same order on every process
    totals = dict(zip(names, distributed.all_sum(info, *(sum(c[name] for c in counts) for name in names))))
    loss_value = 0.0
    for i, batch in enumerate(batches):
        with distributed.sync_gradients(step_module, sync=i == len(batches) - 1):
            with autocast():
                loss = step_module(batch).loss(totals)  # per supervised token of the update
            # DDP and FSDP average gradients over processes; this loss is already the global mean.
            scaler.scale(loss * info.world_size).backward()
        loss_value += loss.item()
    return distributed.all_sum(info, loss_value)[0], int(sum(totals.values()))


def train(config: TrainConfig, on_metrics: Callable[[dict], None] | None = None) -> TrainResult:
    # ---- setup ------------------------------------------------------------------------------
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    info = distributed.setup(device)  # one process, or one of torchrun's
    device = info.device
    say = print if info.is_main else (lambda *args, **kwargs: None)  # only rank 0 talks and writes
    amp_dtype, why = choose_precision(config.precision, device)
    sharded = config.fsdp and info.enabled
    engine = "FSDP2" if sharded else "DDP" if info.enabled else "one process"
    say(f"device {device} x {info.world_size} process(es) ({engine}), precision: {why}")
    if sharded and amp_dtype == torch.float16:
        raise ValueError("fsdp runs in bf16 or fp32, but the precision here resolves to fp16 (no bf16 on this "
                         "GPU); set fsdp: false (DDP), or precision: fp32")  # fmt: skip

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    torch.manual_seed(config.seed)
    family = load_family(config.base_model)
    latest = Path(config.resume_from) if config.resume_from else ckpt.latest_checkpoint(run_dir)
    state = ckpt.load_checkpoint(latest) if latest is not None else None
    if not isinstance(config.max_tokens, int):
        config = resolve_auto_tokens(config, family, device, amp_dtype, state, say)
    if config.adapter is not None:  # the family's recipe for what is unset: checkpoints and the adapter record it
        config = dataclasses.replace(config, adapter=resolve_adapter(config.adapter, family.module_roles))
    items = read_manifest(config.manifest)
    missing = [i.id for i in items if not i.codes]
    if missing:
        raise ValueError(f"{config.manifest}: {len(missing)} items have no codes (e.g. {missing[:3]}); "
                         "run `python -m tts_lib extract-codes` first")  # fmt: skip
    train_items = [i for i in items if i.split == "train"]
    val_samples = load_samples(family, [i for i in items if i.split == "val"])
    train_samples = load_samples(family, train_items)
    sampler = LengthBucketedBatchSampler(
        [s.length for s in train_samples],
        config.max_tokens,
        config.max_items,
        seed=config.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    model = build_model(family, config, device, amp_dtype)
    # Steps run through the (compiled, DDP- or FSDP-wrapped) loss module; checkpoints save `model` itself.
    loss_module = TrainingLoss(family, torch.compile(model) if config.compile else model)
    step_module = distributed.wrap(loss_module, info, sharded)
    optimizer = make_optimizer(model, config.optim, device.type)  # after FSDP made the weights shards
    scheduler = make_scheduler(optimizer, config.schedule, config.max_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    fingerprint = ckpt.data_fingerprint(items)
    step, best, bad_validations, bad_steps = 0, None, 0, 0

    # ---- resume -----------------------------------------------------------------------------
    if state is not None:
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
        distributed.load_optimizer_state(model, optimizer, state[ckpt.OPTIMIZER])
        scheduler.load_state_dict(state[ckpt.SCHEDULER])
        scaler.load_state_dict(state[ckpt.SCALER])
        if ema is not None:
            ema = EMA.from_model_or_state(model, state[ckpt.EMA], config.ema_decay, log=say)
        sampler.load_state_dict(state[ckpt.SAMPLER])
        step = state[ckpt.STEP]
        best, bad_validations = state[ckpt.BEST_METRIC], state[ckpt.EARLY_STOP]["bad_validations"]
        ckpt.set_rng_state(state[ckpt.RNG], info.rank)
        dropped = ckpt.drop_best_after(run_dir, step) if info.is_main else None
        if dropped:
            say(f"the best weights of step {dropped['step']} lie after the resumed step: removed, validation "
                "finds the best again from here")  # fmt: skip
        say(f"resumed from {latest} at step {step}")
    if info.is_main:
        save_config(config, run_dir / "config.yaml")
        log = TrainLog(run_dir, step, config.log_every_seconds, on_metrics)

    def save() -> None:
        """The whole resumable state as a new step folder; only the newest keep_last folders stay."""
        rng = distributed.gather_to_main(info, ckpt.rng_state())  # every process's: dropout resumes exactly
        if not (info.is_main or sharded):  # under FSDP every rank helps gather the shards
            return
        payload = {
            ckpt.MODEL: ckpt.trainable_state(model), ckpt.OPTIMIZER: distributed.optimizer_state(model, optimizer),
            ckpt.SCHEDULER: scheduler.state_dict(), ckpt.SCALER: scaler.state_dict(),
            ckpt.EMA: ema.state_dict() if ema else None, ckpt.RNG: rng,
            ckpt.SAMPLER: sampler.state_dict(), ckpt.EPOCH: sampler.epoch, ckpt.BEST_METRIC: best,
            ckpt.EARLY_STOP: {"bad_validations": bad_validations}, ckpt.CONFIG: config_to_dict(config),
            ckpt.DATA_FINGERPRINT: fingerprint,
        }  # fmt: skip
        if info.is_main:
            ckpt.save_checkpoint(run_dir, step, payload)
            ckpt.keep_last(run_dir, config.keep_last)

    def save_best() -> None:
        """The weights `final_weights: best` exports (the EMA averages when EMA is on), weights only."""
        if info.is_main or sharded:
            weights = ema.averages() if ema else ckpt.trainable_state(model)
            if info.is_main:
                ckpt.save_best(run_dir, step, weights, best, family.selection_metric)

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
            micro = [sampler.next_batch() for _ in range(config.grad_accum)]
            batches = [
                {k: v.to(device) for k, v in family.collate([train_samples[i] for i in m]).items()} for m in micro
            ]
            loss_value, tokens = backward_update(family, step_module, model, batches, info, autocast, scaler)
            scaler.unscale_(optimizer)
            grad_norm = clip_gradients(model.parameters(), config.optim.max_grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                scaler.update()  # under fp16 this lowers the loss scale after an overflow
                if is_overflow_skip(loss_value, scaler):
                    say(f"fp16 overflow: update skipped, loss scale lowered to {scaler.get_scale():g}", flush=True)
                    continue
                bad_steps += 1
                ids = [train_items[i].id for m in micro for i in m]
                say(f"skipped a non-finite update ({bad_steps} in a row): loss {loss_value}, grad norm "
                    f"{grad_norm}, items {ids}", flush=True)  # fmt: skip
                if bad_steps >= config.max_bad_steps:
                    save()
                    scale = f" and the fp16 loss scale fell below {MIN_LOSS_SCALE:g}" if scaler.is_enabled() else ""
                    raise RuntimeError(
                        f"{bad_steps} non-finite updates in a row{scale}; last good state saved at step "
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
                "tokens_per_s": tokens / seconds,
                "items_per_s": sum(map(len, micro)) * info.world_size / seconds, "epoch": sampler.epoch,
            }  # fmt: skip
            improved = False
            if config.val_every and val_samples and (step % config.val_every == 0 or step == config.max_steps):
                with ema.swap_into(model) if ema else nullcontext():
                    metrics = evaluate(loss_module if sharded else model, family, val_samples, config.max_tokens,
                                       autocast)  # fmt: skip
                # Rank 0's numbers decide for every rank: sums on other ranks may differ in the last bit, and a
                # rank that decided otherwise would save or stop alone while the others wait for it.
                metrics = dict(zip(metrics, distributed.from_main(info, *metrics.values())))
                row.update(metrics)
                improved = best is None or metrics[family.selection_metric] < best - config.early_stop_min_delta
                if improved:
                    best, bad_validations = metrics[family.selection_metric], 0
                else:
                    bad_validations += 1
                    stopped_early = (
                        config.early_stop_patience is not None and bad_validations >= config.early_stop_patience
                    )
            # Log before saving: a kill in between then redoes this step after resume instead of
            # leaving a checkpoint whose step never reached metrics.jsonl.
            if info.is_main:
                log.write(row, config.max_steps)
            if improved:
                save_best()
            if stopped_early or step % config.save_every == 0 or step == config.max_steps:
                save()
        if interrupted:
            save()
            say(f"stopped by a signal at step {step}; the checkpoint resumes it", flush=True)
            return TrainResult(step, None, best, interrupted=True)

        # ---- the result ---------------------------------------------------------------------
        distributed.barrier(info)  # rank 0's last best weights are on disk before anyone reads them
        best_weights = None
        if config.final_weights == "best" and (info.is_main or sharded):
            best_weights = ckpt.load_best(run_dir)  # the weights that validated best, not the last ones
        if best_weights is not None:
            ckpt.load_trainable_state(model, best_weights)  # already the EMA averages when EMA is on
            found = ckpt.best_info(run_dir)
            say(f"final model: the best weights, step {found['step']} ({family.selection_metric} {found['value']:.4f})")
        with ema.swap_into(model) if ema is not None and best_weights is None else nullcontext():
            final = save_final(family, model, config, run_dir, info, sharded)
        say(f"done at step {step}: model in {final}" + (f", best {family.selection_metric} {best:.4f}" if best else ""))
        return TrainResult(step, final, best, stopped_early=stopped_early)
    finally:
        stop.restore()
        if info.is_main:
            log.close()
        del step_module  # DDP's reducer must go before its process group: destroyed after, it can hang the exit
        distributed.cleanup(info)


def save_final(family, model: nn.Module, config: TrainConfig, run_dir: Path, info, sharded: bool) -> Path | None:
    """final_adapter/ (adapters) or final/ (the whole model, upstream layout), written by rank 0."""
    if config.adapter is not None:
        out = run_dir / "final_adapter"
        return save_adapter(model, out, config.adapter, family.identity(), True) if info.is_main else None
    if not sharded:
        return family.save(model, run_dir / "final") if info.is_main else None
    whole = {k: distributed.full_tensor(v).cpu() for k, v in model.state_dict().items()}  # every rank gathers
    if not info.is_main:
        return None
    plain = family.load_model()  # an unsharded copy on the CPU to write from
    plain.load_state_dict(whole)
    return family.save(plain, run_dir / "final")
