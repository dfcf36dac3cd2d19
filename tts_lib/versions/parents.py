"""What an incremental run starts from: python -m tts_lib finetune ... --parent VERSION

A parent can be one of our versions (by name in the project, or its folder), a model folder in
upstream layout (a base model, or a full fine-tune made elsewhere), one of our adapter folders, or
an upstream Lightning/loralib LoRA checkpoint (imported as an adapter first). `resolve_start`
detects which, checks it belongs to the same base model, and decides how a LoRA parent is built
on: LoRA-on-LoRA continues the same adapter (same rank and alpha), merge-then-LoRA trains a new
adapter on the parent's merged weights (any rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tts_lib.training.adapters import SIDECAR, AdapterConfig, adapter_config_of, check_base
from tts_lib.versions import lineage

Incremental = Literal["auto", "lora_on_lora", "merge_then_lora"]


@dataclass
class Start:
    kind: str  # base | version | model | adapter | upstream_lora
    weights: Path  # the upstream-layout folder training loads
    init_adapter: Path | None = None  # the adapter LoRA-on-LoRA continues
    parent: dict[str, Any] | None = None  # lineage record: {"version", "folder", "checkpoint"}
    metadata: dict[str, Any] | None = None  # the parent version's metadata.json
    manifest: Path | None = None  # the parent's manifest: its held-out items stay held out
    note: str = ""  # one line for the log: what was detected and chosen


def detect_kind(path: Path) -> str:
    """version | adapter | model | upstream_lora, or a clear error saying what was looked for."""
    if (path / lineage.METADATA_FILE).is_file():
        return "version"
    if (path / SIDECAR).is_file():
        return "adapter"
    if (path / "config.json").is_file() and (path / "model.pth").is_file():
        from tts_lib.versions.upstream_lora import is_upstream_lora

        return "upstream_lora" if is_upstream_lora(path / "model.pth") else "model"
    if path.is_file():
        from tts_lib.versions.upstream_lora import is_upstream_lora

        if is_upstream_lora(path):
            return "upstream_lora"
    found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else ("a file" if path.exists() else "nothing")
    raise ValueError(
        f"{path}: expected a version folder (metadata.json), an adapter folder ({SIDECAR}), a model folder "
        f"(config.json + model.pth) or an upstream LoRA checkpoint (.ckpt/.pth with lora_A weights); found {found}"
    )


def find_parent(parent: str, project: Path) -> Path:
    """A parent given by version name (in `project`) or by path."""
    path = Path(parent)
    if path.exists():
        return path
    return lineage.resolve_version(project, parent)  # raises, listing the versions there are


def base_of(parent: str | None, project: Path) -> Path:
    """The base model folder a parent version was trained from (when --base-model is not given)."""
    if parent is None:
        raise ValueError("no base model: pass --base-model (a folder with config.json and model.pth)")
    path = find_parent(parent, project)
    if detect_kind(path) != "version":
        raise ValueError(f"{path} is not one of our versions, so it does not record its base: pass --base-model")
    return Path(lineage.read_metadata(path)["base_model"]["folder"])


def resolve_start(
    parent: str | None,
    project: Path,
    base: Path,
    base_identity: dict[str, str],
    mode: str,
    adapter: AdapterConfig,
    incremental: Incremental,
    work_dir: Path,
) -> Start:
    """Where training starts, for `mode` with an optional `parent` (see the module docstring)."""
    if parent is None:
        return Start("base", base, note=f"starting from the base model {base}")
    path = find_parent(parent, project)
    kind = detect_kind(path)
    record = {"version": None, "folder": str(path.resolve()), "checkpoint": str(path.resolve())}
    if kind == "model":
        return Start("model", path, parent=record, note=f"starting from the model folder {path}")
    if kind == "upstream_lora":
        from tts_lib.versions.upstream_lora import import_upstream_lora

        imported = work_dir / "imported_parent_adapter"
        if not imported.exists():
            import_upstream_lora(path, base, imported)
        path, kind = imported, "adapter"
    if kind == "adapter":
        check_base(path, base_identity)
        if continues_adapter(path, mode, adapter, incremental):
            return Start("adapter", base, init_adapter=path, parent=record, note=f"continuing the adapter {path}")
        from tts_lib.versions.export import merge_adapter_folder

        merged = work_dir / "parent_merged"
        if not merged.exists():
            merge_adapter_folder(base, path, merged)
        return Start("adapter", merged, parent=record, note=f"merged the adapter {path} into the base, then training")

    meta = lineage.read_metadata(path)
    if meta["base_model"].get("hash") != base_identity["hash"]:
        raise ValueError(
            f"parent {meta['version']} ({path}) was trained from base model {meta['base_model'].get('id')!r} "
            f"(sha256 {str(meta['base_model'].get('hash'))[:12]}...), not from {base_identity['id']!r} "
            f"(sha256 {base_identity['hash'][:12]}...): pass the same --base-model as the parent"
        )
    outputs = meta.get("outputs", {})
    merged = path / outputs["merged_dir"]
    record = {"version": meta["version"], "folder": str(path.resolve()), "checkpoint": str(merged.resolve())}
    manifest = path / outputs["manifest"] if outputs.get("manifest") else None
    adapter_dir = path / outputs["adapter_dir"] if outputs.get("adapter_dir") else None
    start = Start("version", merged, parent=record, metadata=meta, manifest=manifest)
    if adapter_dir is not None and continues_adapter(adapter_dir, mode, adapter, incremental):
        start.weights, start.init_adapter = Path(meta["start_model"]["folder"]), adapter_dir
        start.note = f"continuing version {meta['version']}'s adapter (LoRA-on-LoRA)"
    else:
        start.note = f"starting from version {meta['version']}'s merged model"
    return start


def continues_adapter(folder: Path, mode: str, adapter: AdapterConfig, incremental: Incremental) -> bool:
    """LoRA-on-LoRA or merge-then-LoRA: `auto` continues when the adapter settings are the same."""
    if mode != "quick_lora" or incremental == "merge_then_lora":
        return False
    if incremental == "lora_on_lora":
        return True  # train() checks the settings and says to merge first when they differ
    saved = adapter_config_of(folder)
    return all(
        getattr(saved, k) == getattr(adapter, k) for k in ("kind", "r", "lora_alpha", "targets", "train_embeddings")
    )


def new_items(items: list, parent_manifest: Path | None) -> list:
    """The items the parent never saw (all of them without a parent)."""
    if parent_manifest is None or not parent_manifest.exists():
        return list(items)
    from tts_lib.data.manifest import read_manifest

    seen = {i.id for i in read_manifest(parent_manifest)}
    return [i for i in items if i.id not in seen]


def recommended_steps(frames: int, tokens_per_step: int, epochs: float, minimum: int) -> int:
    """Enough steps to pass `epochs` times over `frames` codec frames, at least `minimum`."""
    return max(minimum, math.ceil(epochs * frames / max(tokens_per_step, 1)))


def parent_lr(meta: dict[str, Any] | None, key: str, default: float) -> float:
    """The parent's learning rate of this kind (full_lr or lora_lr), else `default`."""
    value = (meta or {}).get("hyperparameters", {}).get(key)
    return float(value) if value is not None else default
