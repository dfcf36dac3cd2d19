"""One fine-tune, start to finish: python -m tts_lib finetune --mode quick_lora --base-model M --data D --out runs/v1

The steps, in the order `run_finetune` takes them: find what to start from (the base, or a
`--parent` version, adapter or upstream LoRA checkpoint), prepare the data (the parent's held-out
items stay held out), encode audio to codes (cached), estimate time and cost from a short timed
warm-up, train (quick_lora: one adapter; full: all weights; two_phase: all weights on all speakers,
then an adapter for one speaker on top), merge and verify, check forgetting (incremental runs: the
parent's model and the new one on old and new held-out items), write lineage metadata and model cards, package. The
outputs, all inside `out` (one version; its parent folder is the project of versions):

    results.json   version, merged_dir, adapter_dir, language_base_dir, metrics, cost, package, plots, forgetting
    metadata.json  the lineage record (tts_lib.versions.lineage)
    merged/        the model in upstream layout (LoRA modes; a full run's is train/final), README.md = model card
    forgetting.json incremental runs: the parent's model and the new one on old and new held-out items
    dataset.png, train/training.png (two_phase: phase1_full/ and phase2_lora/ each have one)
    data/, estimate.json, train/ or phase1_full/ + phase2_lora/, MODEL_CARD.md, <version>.tar.gz

Running the same command again resumes an interrupted run and ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tts_lib.common.config_io import config_to_dict
from tts_lib.common.errors import DataError
from tts_lib.common.fileio import atomic_folder, atomic_write_json, default_cache_dir, read_json
from tts_lib.data.codes_cache import extract_codes, extract_reference_codes
from tts_lib.data.manifest import Item, read_manifest, write_manifest
from tts_lib.data.prepare import prepare_dataset
from tts_lib.data.sampler import frames_for_duration
from tts_lib.data.validate import ValidationReport
from tts_lib.data.validation_report import format_report
from tts_lib.launch.bundle import is_random_demo, resolve_base_model
from tts_lib.listening.forgetting import check_forgetting, format_forgetting
from tts_lib.listening.plots import plot_dataset, plot_run
from tts_lib.models import load_family
from tts_lib.training.adapters import AdapterConfig, resolve_adapter
from tts_lib.training.checkpoints import data_fingerprint
from tts_lib.training.device import pick_device, resolve_max_tokens
from tts_lib.training.train import choose_precision, train
from tts_lib.training.train_config import TrainConfig
from tts_lib.training.train_log import progress_bar
from tts_lib.versions import cost, lineage, parents
from tts_lib.versions.estimate import estimate_run

MODE_LR = {"full": 1e-5, "lora": 1e-4}  # upstream's LoRA recipe; full fine-tunes move all weights, so 10x lower
EPOCHS = {"full": 5, "lora": 20}  # recommended passes over the data when max_steps is not given
MIN_STEPS = {"fresh": 100, "incremental": 20}
RUN_FILE = "run.json"


@dataclass
class FinetuneConfig:
    mode: Literal["quick_lora", "full", "two_phase"] = "quick_lora"  # see the README's table
    base_model: str = ""  # upstream-layout folder of the pretrained model (with --parent: the parent's base)
    data: str = ""  # dataset in any supported format (fish folders, LJSpeech, CSV, JSONL, parquet)
    out: str = "runs/v1"  # this version's folder; its parent folder holds all versions (the project)
    parent: str | None = None  # earlier version (name or folder), adapter folder or upstream LoRA checkpoint
    incremental: parents.Incremental = "auto"  # LoRA parent: continue it if settings match, else merge first
    speaker: str | None = None  # two_phase: the speaker of phase two; None = the one with most audio
    max_steps: int | None = None  # None = recommended from the data (incremental: from the new samples)
    speaker_max_steps: int | None = None  # two_phase phase two; None = recommended from that speaker's data
    lr: float | None = None  # full-weight training; None = 1e-5, or a tenth of the parent's
    lora_lr: float | None = None  # adapter training; None = 1e-4, or a tenth of the parent's
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # rank, alpha, targets, DoRA; unset: the family's
    train: TrainConfig = field(default_factory=TrainConfig)  # engine settings; paths and steps are set per phase
    codes_cache: str | None = None  # where encoded audio is cached; None = $TTS_LIB_CACHE/codes (shared by runs)
    gpu: str | None = None  # the GPU to price the plan for: H100, A100-40GB, NAME@TFLOPS; None = the GPU this runs on
    gpu_prices: str | None = None  # YAML file that overrides the built-in $/hour table
    estimate_steps: int = 3  # timed warm-up steps for the estimate; 0 = no estimate
    package: bool = True  # write <version>.tar.gz with the merged model, adapter and model card
    forgetting_margin: float = 0.05  # incremental runs: flag a rise of the old held-out codebook loss above 5%


@dataclass
class Plan:
    """Everything decided before training: what to start from, the data, steps, learning rates, cost."""

    config: FinetuneConfig
    out: Path
    number: int  # the version's number in the project
    base: Path
    identity: dict[str, str]  # the base model's id and sha256
    start: parents.Start
    report: ValidationReport  # the data check, for printing and plots
    items: list[Item]  # with splits and codes; the parent's held-out items included
    new: list[Item]  # items the parent never saw
    steps: int
    lr: float  # full-weight phases
    lora_lr: float  # adapter phases
    speaker_data: tuple[Path, int] | None  # two_phase: (speaker manifest, steps)
    gpu: str | None
    table: dict[str, cost.GpuInfo]
    estimate: dict  # estimate.json: cost.CostEstimate.to_json() + hours/usd of this machine's row
    estimate_text: str
    out_setting: str = "--out"  # what the user calls `out` where they are (the notebook: output_dir)


def run_finetune(config: FinetuneConfig, on_metrics=None) -> dict:
    """Plan, then train, merge, record and package; a finished `out` is returned as it is.
    Paths in the results are relative to `config.out` (so they stay right after a download)."""
    done = finished(config.out)
    if done is not None:
        print(f"{config.out} is already finished (results.json); use another --out for a new version")
        return done
    plan = plan_finetune(config)
    print(plan.estimate_text)
    return run_plan(plan, on_metrics)


def finished(out: str | Path) -> dict | None:
    """The results of a finished version folder, or None."""
    path = Path(out) / "results.json"
    return read_json(path) if path.is_file() else None


def plan_finetune(config: FinetuneConfig, out_setting: str = "--out") -> Plan:
    """Start point, data (prepared and encoded), recommended steps and learning rates, cost estimate.
    A finished version folder is refused: it is never prepared or trained again. Planning locks nothing:
    the settings are pinned (run.json) only when training starts, so a failed plan can be corrected.
    `out_setting` names the output folder's setting in messages (`--out`, or the notebook's `output_dir`)."""
    out = Path(config.out)
    if finished(out) is not None:
        raise FileExistsError(f"{out} is a finished version (results.json); set {out_setting} to a new folder")
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_base_model(config.base_model) if config.base_model else parents.base_of(config.parent, out.parent)
    family = load_family(base)
    # The family's LoRA recipe for what is unset, before run.json is compared (it pins the values trained with)
    config = dataclasses.replace(config, adapter=resolve_adapter(config.adapter, family.module_roles))
    run = unfinished_run(config, out, out_setting)
    config = resolve_auto_tokens(config, run, family)
    identity = family.identity()
    start = parents.resolve_start(
        config.parent, out.parent, base, identity, config.mode, config.adapter, config.incremental, out
    )
    print(f"version {out.name} (#{run['number']}): {config.mode}; {start.note}")
    report, items = prepare(config, out, start, family)
    new = parents.new_items(items, start.manifest)
    frames = {i.id: frames_for_duration(i.duration or 0, family.frame_rate) for i in items}
    train_items = [i for i in items if i.split == "train"]
    new_frames = sum(frames[i.id] for i in new if i.split == "train")
    total_frames = sum(frames[i.id] for i in train_items)
    budget = config.train.max_tokens * config.train.grad_accum
    epochs = EPOCHS["lora"] if config.mode == "quick_lora" else EPOCHS["full"]
    minimum = MIN_STEPS["incremental"] if start.parent else MIN_STEPS["fresh"]
    steps = config.max_steps or parents.recommended_steps(new_frames, budget, epochs, minimum)
    # Incremental runs refine what the parent learnt: a tenth of the parent's learning rate.
    scale = 0.1 if start.parent else 1.0
    lr = config.lr or parents.parent_lr(start.metadata, "full_lr", MODE_LR["full"]) * scale
    lora_lr = config.lora_lr or parents.parent_lr(start.metadata, "lora_lr", MODE_LR["lora"]) * scale
    print(f"data: {len(items)} items ({len(new)} new), {len(train_items)} for training; "
          f"{steps} steps, lr {lora_lr if config.mode == 'quick_lora' else lr:g}")  # fmt: skip
    speaker_data = speaker_manifest(config, out, items, frames, budget) if config.mode == "two_phase" else None

    table = cost.load_gpu_table(config.gpu_prices)
    if config.gpu:
        cost.resolve_gpu(config.gpu, table)  # a misspelt GPU fails here, before the timed steps
    machine = cost.detect_machine(table)
    gpu = machine.key  # the actual cost is this machine's, whatever the plan is priced for
    planned = steps + (speaker_data[1] if speaker_data else 0)  # phase two priced at phase one's rate: an upper bound
    scratch = parents.recommended_steps(total_frames, budget, epochs, MIN_STEPS["fresh"]) if start.parent else None
    estimate, text = estimate_run(config, out, start, train_items, planned, scratch, table, machine)
    return Plan(config, out, run["number"], base, identity, start, report, items, new, steps, lr, lora_lr,
                speaker_data, gpu, table, estimate, text, out_setting)  # fmt: skip


def run_plan(plan: Plan, on_metrics=None) -> dict:
    """The version's stages, one call each: train (one or two phases), merge and verify, check forgetting,
    write lineage metadata, then model cards, package and results.json."""
    lock_run(plan)
    started = time.monotonic()
    trained = train_phases(plan, on_metrics)
    if trained is None:
        return interrupted(plan.out, plan.out_setting)
    if trained.adapter is not None:
        merge_and_verify(plan, trained)
    export_upstream_adapter(plan, trained)
    forgetting = check_version_forgetting(plan, trained)
    meta = record_lineage(plan, trained, forgetting, time.monotonic() - started)
    return write_results(plan, trained, forgetting, meta)


@dataclass
class Trained:
    """What the training phases left: output folders relative to the version folder, each phase's best
    validation and steps, plots, and what the last phase started from."""

    outputs: dict[str, str]
    metrics: dict[str, dict]
    plots: list[Path]
    last_start: parents.Start  # the weights (and adapter) the last phase started from
    adapter: Path | None  # the LoRA phase's final adapter folder
    metric: str  # the family's selection metric, e.g. val_codebook_loss


def train_phases(plan: Plan, on_metrics=None) -> Trained | None:
    """full and/or LoRA phases as the mode says; None when a signal stopped one (a rerun resumes it)."""
    config, out, start = plan.config, plan.out, plan.start
    metric = load_family(plan.base).selection_metric
    plot_dataset(plan.report, out / "dataset.png")
    trained = Trained({"manifest": "data/manifest.jsonl"}, {}, [out / "dataset.png"], start, None, metric)
    if config.mode in ("full", "two_phase"):
        first = "phase1_full" if config.mode == "two_phase" else "train"
        engine = phase(config, start.weights, out / "data" / "manifest.jsonl", out / first, plan.steps, plan.lr,
                       False, None)  # fmt: skip
        result = train(engine, on_metrics)
        if result.interrupted:
            return None
        trained.plots.append(plot_run(out / first))
        trained.metrics["full"] = {f"best_{metric}": result.best_metric, "steps": result.step}
        trained.outputs["language_base_dir" if config.mode == "two_phase" else "merged_dir"] = f"{first}/final"
        trained.last_start = parents.Start("phase1", out / first / "final")
    if config.mode in ("quick_lora", "two_phase"):
        manifest, lora_steps = plan.speaker_data or (out / "data" / "manifest.jsonl", plan.steps)
        run_dir = out / ("phase2_lora" if config.mode == "two_phase" else "train")
        lora_start = trained.last_start
        engine = phase(config, lora_start.weights, manifest, run_dir, lora_steps, plan.lora_lr, True,
                       lora_start.init_adapter)  # fmt: skip
        result = train(engine, on_metrics)
        if result.interrupted:
            return None
        trained.plots.append(plot_run(run_dir))
        trained.metrics["lora"] = {f"best_{metric}": result.best_metric, "steps": result.step}
        trained.outputs["adapter_dir"] = str(result.final_model.relative_to(out))
        trained.adapter = result.final_model
    return trained


def merge_and_verify(plan: Plan, trained: Trained) -> None:
    """The adapter merged into the weights it trained on, in `merged/`, verified (tts_lib.versions.export)."""
    merged = plan.out / "merged"
    if not merged.exists():  # exports are atomic: an existing folder is a finished one
        from tts_lib.versions.export import merge_adapter_folder

        report = merge_adapter_folder(trained.last_start.weights, trained.adapter, merged)
        print(f"merged and verified: max |logit diff| {report.max_abs_diff:.2e} <= {report.tolerance:.2e}")
    trained.outputs["merged_dir"] = "merged"


def export_upstream_adapter(plan: Plan, trained: Trained) -> None:
    """The adapter also in the upstream project's own LoRA format, for families that have one (VoxCPM2)."""
    export = getattr(load_family(trained.last_start.weights), "export_upstream_adapter", None)
    if trained.adapter is None or export is None:
        return
    out = plan.out / "adapter_upstream"
    if not out.exists():  # written atomically below: an existing folder is a finished one
        with atomic_folder(out) as tmp:
            export(trained.adapter, tmp)
        print(f"adapter in upstream's LoRA format: {out}")
    trained.outputs["upstream_adapter_dir"] = "adapter_upstream"


def check_version_forgetting(plan: Plan, trained: Trained) -> dict | None:
    """Did the new data push out what the parent knew? None unless a parent version with a manifest."""
    config = plan.config
    merged = plan.out / trained.outputs["merged_dir"]
    forgetting = check_forgetting(plan.start, merged, plan.items, config.forgetting_margin, config.train.max_tokens,
                                  config.train.precision)  # fmt: skip
    if forgetting is not None:
        atomic_write_json(plan.out / "forgetting.json", forgetting)
        print(format_forgetting(forgetting))
    return forgetting


def record_lineage(plan: Plan, trained: Trained, forgetting: dict | None, wall: float) -> dict:
    """metadata.json: where the version came from, on what data, with what settings, at what cost."""
    config, out, start, items, new = plan.config, plan.out, plan.start, plan.items, plan.new
    actual = cost.actual_cost(wall, plan.gpu, plan.table)
    hours = {"new": sum(i.duration or 0 for i in new) / 3600, "total": sum(i.duration or 0 for i in items) / 3600}
    # the last phase made the exported model; two_phase's language phase is kept beside it
    metric, metrics = trained.metric, trained.metrics
    best = {metric: metrics[list(metrics)[-1]][f"best_{metric}"]}
    if config.mode == "two_phase":
        best["language_" + metric] = metrics["full"][f"best_{metric}"]
    lr, lora_lr, estimate = plan.lr, plan.lora_lr, plan.estimate
    meta = {
        "version": out.name, "number": plan.number, "parent": start.parent, "mode": config.mode,
        "base_model": {**plan.identity, "folder": str(plan.base.resolve()), "family": load_family(plan.base).name,
                       **({"random_weights": True} if is_random_demo(plan.base) else {})},
        "start_model": {"folder": str(trained.last_start.weights.resolve())},
        "dataset_fingerprint": data_fingerprint(items), "samples": {"new": len(new), "total": len(items)},
        "hours": hours, "steps": plan.steps, "best_val": best,
        "hyperparameters": {"lr": lora_lr if config.mode == "quick_lora" else lr, "full_lr": lr, "lora_lr": lora_lr,
                            **config_to_dict(config.adapter), "max_tokens": config.train.max_tokens},
        "forgetting": forgetting, "wall_time_s": wall, "created_at": lineage.utc_now(), "outputs": trained.outputs,
        "cost": {"gpu": plan.gpu, "priced_for": estimate.get("price_for"),
                 "estimated_usd": estimate.get("usd"), "estimated_hours": estimate.get("hours"),
                 "actual_usd": actual["usd"], "actual_hours": actual["hours"]},
    }  # fmt: skip
    lineage.write_metadata(out, meta)
    return meta


def write_results(plan: Plan, trained: Trained, forgetting: dict | None, meta: dict) -> dict:
    """Model cards, the package to download, and results.json (written last: it marks the version finished)."""
    from tts_lib.versions.package import package_version, write_model_cards

    out = plan.out
    write_model_cards(out)  # README.md in merged/ and the adapter folder: a folder copied alone says what it is
    package = None
    if plan.config.package:
        package = str(package_version(out))
        print(f"package for download: {package}")
    results = {
        "version": out.name, "mode": plan.config.mode, "parent": plan.start.parent, **trained.outputs,
        "metrics": trained.metrics, "cost": meta["cost"],
        "package": package and Path(package).relative_to(out).as_posix(),
        "plots": [p.relative_to(out).as_posix() for p in trained.plots], "forgetting": forgetting,
        "metadata": lineage.METADATA_FILE,
    }  # fmt: skip
    results.setdefault("adapter_dir", None)
    atomic_write_json(out / "results.json", results)
    print(f"done: {out / 'results.json'}")
    return results


def interrupted(out: Path, out_setting: str = "--out") -> dict:
    print(f"interrupted: run again with the same {out_setting} ({out}) to resume where this stopped")
    return {"version": out.name, "interrupted": True}


def unfinished_run(config: FinetuneConfig, out: Path, out_setting: str) -> dict:
    """The run `out/run.json` pinned when its training started (a rerun must not change what it trains),
    or a new one, not yet written: {"number": version number, "config": settings}."""
    current = config_to_dict(config)
    if not (out / RUN_FILE).is_file():
        return {"number": lineage.next_version_number(out.parent), "config": current}
    saved = read_json(out / RUN_FILE)
    fixed = ("mode", "base_model", "data", "parent", "incremental", "speaker", "adapter")
    changed = [f"{k}: was {saved['config'].get(k)!r}, now {current.get(k)!r}" for k in fixed
               if saved["config"].get(k) != current.get(k)]  # fmt: skip
    if changed:
        raise ValueError(f"{out} holds an unfinished training run with other settings ({'; '.join(changed)}); "
                         f"run it with the same settings to resume, or set {out_setting} to a new folder")  # fmt: skip
    print(f"resuming the unfinished run in {out}")
    return saved


def resolve_auto_tokens(config: FinetuneConfig, run: dict, family) -> FinetuneConfig:
    """`train.max_tokens` unset (the family's default) or `auto` made a number before the steps are planned from
    it: the pinned run's when resuming (its batches must not change), else the family's default, or the largest
    this GPU holds by the memory plan (two_phase: its full phase, the larger)."""
    if isinstance(config.train.max_tokens, int):
        return config
    pinned = run["config"]["train"]["max_tokens"]
    if isinstance(pinned, int):
        setting = config.train.max_tokens or "unset"
        tokens, why = pinned, f"max_tokens {setting}: {pinned}, as pinned when this run started"
    else:
        device = pick_device(config.train.device)
        amp_dtype, _ = choose_precision(config.train.precision, device)
        adapter = config.mode == "quick_lora"
        tokens, why = resolve_max_tokens(config.train.max_tokens, family, adapter, device,
                                         config.train.gradient_checkpointing, amp_dtype)  # fmt: skip
    print(why)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, max_tokens=tokens))


def lock_run(plan: Plan) -> None:
    """Training starts: pin the version number and the settings (a no-op when resuming)."""
    if not (plan.out / RUN_FILE).is_file():
        atomic_write_json(plan.out / RUN_FILE, {"number": plan.number, "config": config_to_dict(plan.config)})


def prepare(config: FinetuneConfig, out: Path, start: parents.Start, family) -> tuple[ValidationReport, list[Item]]:
    """Ingest, split (sticky, parent's splits kept), validate, add the parent's held-out items, encode."""
    data = prepare_dataset(config.data, out / "data", parent_manifest=start.manifest, family=family)
    if data.report.errors:
        print(format_report(data.report, max_per_code=5))
        clean = out.parent / f"{out.name}-clean.jsonl"
        raise DataError(
            f"{config.data}: the dataset has {len(data.report.errors)} errors (listed above). Fix them, or train "
            f"without the bad items: python -m tts_lib validate {config.data} --base-model {family.folder} "
            f"--drop-invalid {clean} writes a "
            f"manifest without them (and lists each dropped item and why); then use {clean} as the dataset"
        )
    items = data.report.items
    if start.manifest is not None:  # forgetting shows only if the old held-out items are still scored
        have = {i.id for i in items}
        items += [i for i in read_manifest(start.manifest) if i.split == "val" and i.id not in have]
    cache = Path(config.codes_cache) if config.codes_cache else default_cache_dir() / "codes"
    device = pick_device(config.train.device)  # the training device: a GPU encodes far faster than the CPU
    spec = family.codec_spec(device)
    with progress_bar("codes", "clip") as progress:
        extraction = extract_codes(items, spec, cache, log_every=30, progress=progress)
    if extraction.failed:
        raise DataError(f"{config.data}: could not encode {len(extraction.failed)} clips: {extraction.failed[:3]}")
    if family.trains_with_reference:  # each row's voice reference (JSONL ref_audio), where it has one
        references = extract_reference_codes(items, spec, cache, log_every=30)
        if references.failed:
            raise DataError(f"{config.data}: could not encode the ref_audio of {len(references.failed)} items: "
                            f"{references.failed[:3]}")  # fmt: skip
    write_manifest(data.manifest, items)
    return data.report, items


def phase(
    config: FinetuneConfig,
    weights: Path,
    manifest: Path,
    run_dir: Path,
    steps: int,
    lr: float,
    lora: bool,
    init_adapter,
) -> TrainConfig:
    """The engine's settings for one training phase: the user's `train` section plus this phase's parts.
    Warmup is capped at a tenth of the phase, so short (incremental) phases do not spend most steps in it."""
    warmup = min(config.train.schedule.warmup_steps, max(1, steps // 10))
    return dataclasses.replace(
        config.train, base_model=str(weights), manifest=str(manifest), run_dir=str(run_dir), max_steps=steps,
        adapter=config.adapter if lora else None, init_adapter=str(init_adapter) if init_adapter else None,
        optim=dataclasses.replace(config.train.optim, lr=lr),
        schedule=dataclasses.replace(config.train.schedule, warmup_steps=warmup),
    )  # fmt: skip


def speaker_manifest(config: FinetuneConfig, out: Path, items: list[Item], frames, budget: int) -> tuple[Path, int]:
    """two_phase: the named speaker, or the one with the most training audio; their items only."""
    seconds: dict[str, float] = defaultdict(float)
    for i in items:
        if i.split == "train":
            seconds[i.speaker] += i.duration or 0
    if config.speaker is not None and config.speaker not in seconds:
        have = ", ".join(f"{s} ({m / 60:.1f} min)" for s, m in sorted(seconds.items()))
        raise ValueError(f"speaker {config.speaker!r} is not in {config.data}; speakers with training audio: {have}")
    speaker = config.speaker or max(sorted(seconds), key=lambda s: seconds[s])
    chosen = [i for i in items if i.speaker == speaker]
    path = write_manifest(out / "data" / f"speaker_{speaker}.jsonl", chosen)
    train_frames = sum(frames[i.id] for i in chosen if i.split == "train")
    steps = config.speaker_max_steps or parents.recommended_steps(train_frames, budget, EPOCHS["lora"], 20)
    print(f"phase two: speaker {speaker} ({seconds[speaker] / 60:.1f} min of training audio), {steps} steps")
    return path, steps
