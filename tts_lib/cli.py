"""Command line: python -m tts_lib {demo,finetune,versions,export,...} ... (run with -h for the options)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tts_lib.data import padding_bench
from tts_lib.data.ingest import FORMATS, ingest
from tts_lib.data.manifest import read_manifest, write_manifest
from tts_lib.data.split import SplitConfig, assign_splits
from tts_lib.data.validate import ValidationConfig, validate_items
from tts_lib.data.validation_report import format_report, report_json, write_cleaned
from tts_lib.launch import demo, notebook_setup
from tts_lib.models import FAMILIES


def add_ingest_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="dataset folder or file (Fish Speech layout, LJSpeech, CSV, JSONL, parquet)")
    p.add_argument("--format", choices=FORMATS, help="skip auto-detection")
    p.add_argument("--text-column", help="parquet: column holding the transcript")
    p.add_argument("--speaker-column", help="parquet: column holding the speaker")
    p.add_argument("--audio-column", help="parquet: column holding the audio struct")
    p.add_argument("--cache-dir", help="parquet: where audio is extracted (default ~/.cache/tts_lib)")


def ingest_options(args: argparse.Namespace) -> dict:
    return dict(
        fmt=args.format,
        text_column=args.text_column,
        speaker_column=args.speaker_column,
        audio_column=args.audio_column,
        cache_dir=args.cache_dir,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    out = Path(args.out)
    previous = {}
    if out.exists():
        if not (args.update or args.overwrite):
            print(
                f"error: {out} exists; pass --update to add new items and keep every existing split "
                "assignment, or --overwrite to start over",
                file=sys.stderr,
            )
            return 2
        if args.update:
            previous = {item.id: item.split for item in read_manifest(out) if item.split}
    result = ingest(args.path, **ingest_options(args))
    split = assign_splits(result.items, SplitConfig(args.val_fraction, max_val_items=args.max_val_items), previous)
    write_manifest(out, result.items)
    print(f"{len(result.items)} items from {result.source} ({result.format}) -> {out}")
    print(f"split: {split.kept} kept, {split.new_train} new train, {split.new_val} new val")
    for note in split.notes:
        print(f"note: {note}")
    for p in result.problems:
        print(f"{p.severity} {p.code}: {p.path}: {p.message}")
    print(f"next: python -m tts_lib validate {out}")
    return 1 if any(p.severity == "error" for p in result.problems) else 0


def add_validation_options(p: argparse.ArgumentParser) -> None:
    d = ValidationConfig()
    p.add_argument("--sample-rate", type=int, default=d.sample_rate, help="the model's sample rate (Hz)")
    p.add_argument("--min-duration", type=float, default=d.min_duration, help="seconds")
    p.add_argument("--max-duration", type=float, default=d.max_duration, help="seconds")
    p.add_argument("--no-decode", action="store_true", help="headers only: skip clipping/silence/duplicates")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = one per core)")
    p.add_argument("--tokenizer", metavar="MODEL",
                   help="report tokens per character per script with this model's tokenizer (name or folder; "
                   "--base-model does too)")  # fmt: skip
    p.add_argument("--base-model", help="also check every item fits this model's max_seq_len (name or folder)")


def validation_config(args: argparse.Namespace) -> ValidationConfig:
    return ValidationConfig(
        sample_rate=args.sample_rate,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        decode=not args.no_decode,
        workers=args.workers,
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from tts_lib.launch.bundle import resolve_base_model
    from tts_lib.models import load_family

    encoder = load_family(resolve_base_model(args.tokenizer)).text_encoder() if args.tokenizer else None
    # also: does every item fit this model's max_seq_len? (and, without --tokenizer, its tokenizer's coverage)
    family = load_family(resolve_base_model(args.base_model)) if args.base_model else None
    result = ingest(args.path, **ingest_options(args))
    report = validate_items(
        result.items,
        validation_config(args),
        encoder,
        source=str(result.source),
        fmt=result.format,
        earlier_problems=result.problems,
        family=family,
    )
    print(report_json(report) if args.json else format_report(report))
    if args.drop_invalid:
        also = tuple(c for c in args.also_drop.split(",") if c)
        out, dropped, n = write_cleaned(report, args.drop_invalid, also, overwrite=args.overwrite)
        print(f"cleaned manifest: {out} ({len(report.items) - n} items kept)", file=sys.stderr)
        print(f"dropped: {n}, listed with reasons in {dropped}", file=sys.stderr)
        return 0
    return 1 if report.errors else 0


def cmd_extract_codes(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tts_lib.data.codes_cache import extract_codes, extract_reference_codes
    from tts_lib.launch.bundle import resolve_base_model
    from tts_lib.models import load_family
    from tts_lib.training.device import pick_device

    device = pick_device(args.device)
    items = read_manifest(args.manifest)
    family = load_family(resolve_base_model(args.model))
    with tqdm(total=len(items), desc="codes", unit="clip", disable=not sys.stderr.isatty()) as bar:
        summary = extract_codes(
            items,
            family.codec_spec(device),
            args.cache_dir,
            batch_size=args.batch_size,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    if family.trains_with_reference:  # the rows' voice references (JSONL ref_audio) too
        references = extract_reference_codes(items, family.codec_spec(device), args.cache_dir,
                                             batch_size=args.batch_size)  # fmt: skip
        summary.failed += references.failed
    write_manifest(args.manifest, items)
    print(
        f"{summary.encoded} encoded, {summary.cached} cached, {summary.reused_upstream} upstream .npy reused, "
        f"{len(summary.failed)} failed ({summary.seconds:.1f} s); codes recorded in {args.manifest}"
    )
    for item_id, reason in summary.failed:
        print(f"failed {item_id}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from tts_lib.common.config_io import apply_overrides, load_config
    from tts_lib.training.train import train
    from tts_lib.training.train_config import TrainConfig

    config = apply_overrides(load_config(TrainConfig, args.config), args.set or [])
    result = train(config)
    return 3 if result.interrupted else 0


def max_tokens_arg(text: str) -> int | str:
    """--max-tokens: a whole number or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, found {text!r}") from None


# finetune flags -> FinetuneConfig keys; a flag left out keeps the YAML's (or the default) value
FINETUNE_FLAGS = {
    "mode": "mode", "base_model": "base_model", "data": "data", "out": "out", "parent": "parent",
    "incremental": "incremental", "speaker": "speaker", "max_steps": "max_steps", "lr": "lr", "lora_lr": "lora_lr",
    "lora_r": "adapter.r", "lora_alpha": "adapter.lora_alpha", "adapter": "adapter.kind", "targets": "adapter.targets",
    "save_every": "train.save_every", "val_every": "train.val_every", "max_tokens": "train.max_tokens",
    "seed": "train.seed", "gpu": "gpu",
}  # fmt: skip


def cmd_finetune(args: argparse.Namespace) -> int:
    import json

    from tts_lib.common.config_io import apply_overrides, load_config
    from tts_lib.versions.finetune import FinetuneConfig, run_finetune

    config = load_config(FinetuneConfig, args.config) if args.config else FinetuneConfig()
    flags = [f"{key}={json.dumps(getattr(args, name))}" for name, key in FINETUNE_FLAGS.items()
             if getattr(args, name) is not None]  # fmt: skip
    if args.no_package:
        flags.append("package=false")
    config = apply_overrides(config, flags + (args.set or []))
    for name in ("base_model", "data"):
        if not getattr(config, name) and not (name == "base_model" and config.parent):
            raise ValueError(f"finetune needs --{name.replace('_', '-')} (or {name}: in --config)")
    results = run_finetune(config)
    if results.get("interrupted"):
        return 3
    out = Path(config.out).resolve()  # results.json keeps paths relative to the version folder; here, full ones
    shown = {k: str(out / results[k]) if results.get(k) else None for k in ("merged_dir", "adapter_dir", "package")}
    print(json.dumps({"version": results.get("version"), **shown}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from tts_lib.launch.bundle import resolve_base_model
    from tts_lib.versions.export import export_adapter, merge_adapter_folder

    if args.adapter_only:
        print(f"adapter exported to {export_adapter(args.adapter, args.out, args.overwrite)}")
        return 0
    dtype = getattr(torch, args.dtype) if args.dtype else None
    base = resolve_base_model(args.base_model)
    report = merge_adapter_folder(base, args.adapter, args.out, args.overwrite, dtype=dtype)
    print(f"merged model in {report.out} ({report.dtype}); verified: max |logit diff| {report.max_abs_diff:.2e} "
          f"<= {report.tolerance:.2e}, the adapter's effect {report.adapter_effect:.2e}")
    return 0


def cmd_import_lora(args: argparse.Namespace) -> int:
    from tts_lib.launch.bundle import resolve_base_model
    from tts_lib.versions.upstream_lora import import_upstream_lora

    base = resolve_base_model(args.base_model)
    out = import_upstream_lora(args.checkpoint, base, args.out, args.lora_alpha, overwrite=args.overwrite)
    print(f"imported as an adapter in {out}; continue it with finetune --parent {out}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from tts_lib.versions import lineage

    if args.action == "compare":
        a, b = (lineage.read_metadata(lineage.resolve_version(args.project, v)) for v in (args.a, args.b))
        print(lineage.format_comparison(lineage.compare_versions(a, b), a["version"], b["version"]))
    elif args.action == "rollback":
        folder = lineage.rollback(args.project, args.version)
        print(f"current version is now {folder.name} ({folder}); later versions are kept")
    else:
        versions = lineage.list_versions(args.project)
        print(lineage.format_versions_table(versions, lineage.current_version(args.project)))
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from tts_lib.models import make_tiny_checkpoint  # imports torch: only when asked

    out = make_tiny_checkpoint(args.out_dir, family=args.family, seed=args.seed, overwrite=args.overwrite)
    print(f"tiny {args.family} checkpoint written to {out} (random weights: it generates noise)")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from tts_lib import gpu_check  # imports torch: only when asked

    return gpu_check.run(args)


def cmd_memory_plan(args: argparse.Namespace) -> int:
    from tts_lib.training import memory_plan  # imports torch: only when asked

    return memory_plan.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tts_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the offline demo: the fine-tune notebook, headless, on data/demo with tiny-demo")
    p.add_argument("--data", default="data/demo", help="dataset to use")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.set_defaults(func=demo.run)

    p = sub.add_parser("ingest", help="turn a dataset in any supported format into a manifest (JSONL)")
    add_ingest_options(p)
    p.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    p.add_argument("--update", action="store_true", help="manifest exists: add new items, keep splits")
    p.add_argument("--overwrite", action="store_true", help="manifest exists: replace it")
    p.add_argument("--val-fraction", type=float, default=SplitConfig.val_fraction)
    p.add_argument("--max-val-items", type=int, default=SplitConfig.max_val_items)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate", help="check every item and summarise the dataset")
    add_ingest_options(p)
    add_validation_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--drop-invalid", metavar="CLEAN.jsonl", help="write a manifest without the bad items")
    p.add_argument("--also-drop", default="", help="warning codes to drop too, e.g. too_long,too_short")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --drop-invalid output")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("extract-codes", help="encode a manifest's audio to codec codes (cached)")
    p.add_argument("manifest", help="manifest (.jsonl) written by ingest; its codes paths are updated")
    p.add_argument("--model", required=True, help="base-model name (tiny-demo, openaudio-s1-mini, auto) or folder")
    p.add_argument("--cache-dir", help="default: $TTS_LIB_CACHE/codes or ~/.cache/tts_lib/codes")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="cuda when a GPU is there, else cpu")
    p.set_defaults(func=cmd_extract_codes)

    p = sub.add_parser("train", help="fine-tune: the training loop (resumes from the run folder's latest checkpoint)")
    p.add_argument("--config", required=True, help="YAML file of TrainConfig fields (tts_lib/training/train_config.py)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. optim.lr=1e-5")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="one fine-tune start to finish: data, estimate, train, merge, export, lineage")
    p.add_argument("--config", help="YAML file of FinetuneConfig fields (versions/finetune.py); flags override it")
    p.add_argument("--mode", choices=["quick_lora", "full", "two_phase"])
    p.add_argument("--base-model", help="auto | tiny-demo | openaudio-s1-mini | a model folder (upstream layout); "
                   "with --parent: the parent's (README: base-model names)")
    p.add_argument("--data", help="dataset: fish folders, LJSpeech, CSV, JSONL or parquet")
    p.add_argument("--out", help="this version's folder (default runs/v1); the same --out again resumes")
    p.add_argument("--parent", help="version to build on (name or folder), adapter folder, or upstream LoRA .ckpt")
    p.add_argument("--incremental", choices=["auto", "lora_on_lora", "merge_then_lora"])
    p.add_argument("--speaker", help="two_phase: the speaker of phase two (default: most audio)")
    p.add_argument("--max-steps", type=int, help="default: recommended from the data")
    p.add_argument("--lr", type=float, help="full-weight lr (default 1e-5; incremental: a tenth of the parent's)")
    p.add_argument("--lora-lr", type=float, help="adapter lr (default 1e-4; incremental: a tenth of the parent's)")
    p.add_argument("--lora-r", type=int, help="adapter rank (default: the model family's recipe)")
    p.add_argument("--lora-alpha", type=int, help="adapter scale alpha / r (default: the model family's recipe)")
    p.add_argument("--adapter", choices=["lora", "dora"])
    p.add_argument("--targets", help="an adapter preset of the model's family (default: the family's recipe; "
                   "a name it does not have is refused with the list)")
    p.add_argument("--save-every", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--max-tokens", type=max_tokens_arg,
                   help="training positions per micro-batch (default: the model family's), or auto: the largest "
                   "the GPU's free memory holds")
    p.add_argument("--seed", type=int)
    p.add_argument("--gpu", help="the GPU to price the plan for, e.g. H100, A100-40GB, or NAME@TFLOPS for one not "
                   "in the table (default: the GPU this runs on)")
    p.add_argument("--no-package", action="store_true", help="skip the .tar.gz")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other setting, e.g. train.grad_accum=2")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export", help="merge an adapter into its base (verified) in upstream layout, or copy it")
    p.add_argument("--base-model", required=True, help="the base model the adapter was trained on (name or folder)")
    p.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json, tts_adapter.json)")
    p.add_argument("--out", required=True, help="folder to write; an existing one is refused without --overwrite")
    p.add_argument("--adapter-only", action="store_true", help="copy the adapter (peft format) instead of merging")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="weights of the merged model (default: the base's); float32 keeps adapters too small for bf16")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-lora", help="turn an upstream Fish Speech (Lightning/loralib) LoRA into an adapter")
    p.add_argument("checkpoint", help="upstream .ckpt or .pth with lora_A/lora_B weights")
    p.add_argument("--base-model", required=True, help="the base model it was trained on (name or folder)")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--lora-alpha", type=float, default=16, help="not stored upstream; 16 = upstream's r_8_alpha_16")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import_lora)

    p = sub.add_parser("make-tiny-model", help="write the tiny-demo checkpoint folder (random weights)")
    p.add_argument("out_dir", help="folder to write (upstream layout)")
    p.add_argument("--family", default="fish_speech", help="fish_speech (tiny-demo) or voxcpm (VoxCPM2's hub layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing folder")
    p.set_defaults(func=cmd_make_tiny_model)

    p = sub.add_parser("versions", help="fine-tuned versions of a project: list, compare, rollback")
    p.add_argument("--project", default="runs", help="folder of version folders")
    p.set_defaults(func=cmd_versions, action="list")
    actions = p.add_subparsers(dest="action")
    # SUPPRESS: --project given after the action must not reset one given before it
    project = dict(default=argparse.SUPPRESS, help="folder of version folders (default runs)")
    actions.add_parser("list", help="one line per version, the current one marked").add_argument("--project", **project)
    q = actions.add_parser("compare", help="the fields that differ between two versions")
    q.add_argument("a", help="version name or folder")
    q.add_argument("b", help="version name or folder")
    q.add_argument("--project", **project)
    q = actions.add_parser("rollback", help="make an earlier version current (deletes nothing)")
    q.add_argument("version", help="version name or folder")
    q.add_argument("--project", **project)

    notebook_setup.add_parser(sub)

    p = sub.add_parser("memory-plan", help="GPU memory of a fine-tune, traced at a model's full shape (no GPU needed)")
    p.add_argument("--mode", required=True, choices=["quick_lora", "full", "two_phase"])
    p.add_argument("--family", choices=list(FAMILIES), default=next(iter(FAMILIES)),
                   help="plan the family's reference model (default: the first, Fish Speech's OpenAudio S1-mini)")
    p.add_argument("--base-model", help="plan this checkpoint folder's own model instead")
    p.add_argument("--max-tokens", type=int, help="padded positions per micro-batch (default: the family's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--free-gib", type=float, help="also print the largest max_tokens that fits this much memory")
    p.set_defaults(func=cmd_memory_plan)

    p = sub.add_parser("gpu-check", help="acceptance check on a GPU: training steps, memory vs plan, codec, merge")
    p.add_argument("--smoke", action="store_true", help="the same code paths at tiny shapes on the CPU (CI)")
    p.add_argument("--max-tokens", type=int, help="padded positions per training step (default: the family's)")
    p.add_argument("--family", choices=list(FAMILIES), default=next(iter(FAMILIES)),
                   help="the model family whose reference shape is checked (default: the first, Fish Speech)")
    p.set_defaults(func=cmd_gpu_check)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("padding", help="padding efficiency of bucketed vs random batches")
    padding_bench.add_arguments(p)
    p.set_defaults(func=padding_bench.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
