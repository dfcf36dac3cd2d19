"""Version lineage of fine-tuned models: python -m tts_lib versions [--project runs] [list | compare A B | rollback A].

A project folder (default `runs`) holds one folder per fine-tuned version, e.g. `runs/fi-v1`, `runs/fi-v2`; any
subfolder with a `metadata.json` is a version. The fine-tune entry point writes that file with `write_metadata`
when a version is finished. Its keys:

    version              str: the folder name
    number               int: 1-based, sequential within the project (from next_version_number)
    parent               null, or {"version": str, "folder": str, "checkpoint": str}: what this version started from
    mode                 "quick_lora" | "full" | "two_phase"
    base_model           {"id": str, "hash": str}: the original pretrained weights at the root of the lineage
    dataset_fingerprint  str: hash of the manifest the version was trained on
    samples              {"new": int, "total": int}: items added by this version, and all items it saw
    hours                {"new": float, "total": float}: the same in hours of audio
    steps                int: optimizer steps of this version
    hyperparameters      dict: the settings that shaped this version (lr, r, lora_alpha, ...)
    best_val             dict: metric name -> best validation value, e.g. {"val_codebook_loss": 2.31}
    wall_time_s          float: seconds of training
    cost                 {"gpu": str|None, "estimated_usd": float|None, "actual_usd": float|None,
                          "estimated_hours": float|None}
    created_at           str: ISO-8601 UTC time the version was written
    outputs              dict: name -> path relative to the version folder (merged_dir, adapter_dir, ...)

Only version, number, mode, base_model and created_at are required; extra keys are kept as written.

`project/current.json` ({"version": ..., "folder": ..., "set_at": ...}) names the version in use; without it the
highest number is current. `rollback` only rewrites that pointer. There is deliberately no delete function:
every version may be the parent of a later one, and a child records its parent's folder and checkpoint, so
parents are never deleted by this module; remove a folder by hand only when nothing descends from it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tts_lib.common.fileio import atomic_write_json

METADATA_FILE = "metadata.json"
CURRENT_FILE = "current.json"
MODES = ("quick_lora", "full", "two_phase")
REQUIRED_KEYS = ("version", "number", "mode", "base_model", "created_at")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_metadata(version_dir: str | Path, meta: dict) -> Path:
    """Check the required keys and write `version_dir/metadata.json` atomically; returns the file's path."""
    version_dir = Path(version_dir)
    path = version_dir / METADATA_FILE
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(
            f"{path}: metadata lacks required keys {missing} (found {sorted(meta)}); "
            f"every version needs {list(REQUIRED_KEYS)}"
        )
    if meta["version"] != version_dir.name:
        # The name is how users and children refer to a version; two names for one folder would split the lineage.
        raise ValueError(
            f"{path}: metadata version is {meta['version']!r} but the folder is named {version_dir.name!r}; "
            "set version to the folder name"
        )
    if not isinstance(meta["number"], int) or isinstance(meta["number"], bool) or meta["number"] < 1:
        raise ValueError(f"{path}: number must be an int >= 1 (from next_version_number), found {meta['number']!r}")
    if meta["mode"] not in MODES:
        raise ValueError(f"{path}: mode must be one of {list(MODES)}, found {meta['mode']!r}")
    return atomic_write_json(path, meta)


def read_metadata(version_dir: str | Path) -> dict:
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {version_dir} is not a version folder (it has no {METADATA_FILE}); "
            "pass a folder written by the fine-tune entry point"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: expected a JSON object, found invalid JSON ({e}); restore or rewrite it") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(meta).__name__}; restore or rewrite it")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: metadata lacks required keys {missing}; restore it or rewrite it with those keys")
    return meta


def list_versions(project: str | Path) -> list[dict]:
    """Every version's metadata, sorted by number, each with "folder" (its path as a string) added."""
    project = Path(project)
    if not project.is_dir():
        raise FileNotFoundError(
            f"project folder {project} not found: expected a folder of version folders; "
            "fine-tune a first version, or pass --project"
        )
    versions = []
    for folder in sorted(p for p in project.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file()):
        meta = read_metadata(folder)
        meta["folder"] = str(folder)
        versions.append(meta)
    return sorted(versions, key=lambda m: (m["number"], m["version"]))


def next_version_number(project: str | Path) -> int:
    """1 for an empty or absent project, else one more than the highest number in use."""
    if not Path(project).is_dir():
        return 1
    return max((m["number"] for m in list_versions(project)), default=0) + 1


def _available(project: Path) -> str:
    names = [m["version"] for m in list_versions(project)] if project.is_dir() else []
    return ", ".join(names) if names else "none"


def resolve_version(project: str | Path, name_or_path: str | Path) -> Path:
    """The folder of a version given its name in `project`, or a path to a version folder."""
    project = Path(project)
    for candidate in (project / str(name_or_path), Path(name_or_path)):
        if (candidate / METADATA_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"version {str(name_or_path)!r} not found: expected {project / str(name_or_path) / METADATA_FILE} "
        f"or a version folder at that path; available versions in {project}: {_available(project)}"
    )


def ancestry(project: str | Path, version: str | Path) -> list[dict]:
    """The chain of versions from the root (no parent) to `version`, root first."""
    project = Path(project)
    folder = resolve_version(project, version)
    chain: list[dict] = []
    seen: set[str] = set()
    while True:
        meta = read_metadata(folder)
        meta["folder"] = str(folder)
        key = str(folder.resolve())
        if key in seen:
            raise ValueError(f"{folder / METADATA_FILE}: the parent chain loops back to {meta['version']!r}")
        seen.add(key)
        chain.append(meta)
        parent = meta.get("parent")
        if not parent:
            return chain[::-1]
        # The recorded folder wins (a parent may live in another project); fall back to the name here.
        parent_folder = Path(parent.get("folder") or "")
        if not (parent.get("folder") and (parent_folder / METADATA_FILE).is_file()):
            parent_folder = project / str(parent.get("version"))
        if not (parent_folder / METADATA_FILE).is_file():
            raise FileNotFoundError(
                f"{folder / METADATA_FILE}: parent version {parent.get('version')!r} not found at "
                f"{parent.get('folder')!r} nor in {project}; available versions: {_available(project)}. "
                "Restore the parent folder: parents must never be deleted"
            )
        folder = parent_folder


def current_version(project: str | Path) -> str | None:
    """The version named by `project/current.json`, else the highest-numbered one, else None."""
    project = Path(project)
    pointer = project / CURRENT_FILE
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["version"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f'{pointer}: expected {{"version": ...}}, found unreadable content ({e}); '
                "run `python -m tts_lib versions rollback VERSION` to rewrite it"
            ) from e
        resolve_version(project, name)  # a pointer to a missing version is an error, not a silent fallback
        return name
    versions = list_versions(project) if project.is_dir() else []
    return versions[-1]["version"] if versions else None


def rollback(project: str | Path, version: str | Path) -> Path:
    """Make `version` the current one by rewriting `project/current.json`; returns the version's folder.

    Nothing is deleted or moved: later versions stay on disk and a later rollback can return to them."""
    project = Path(project)
    folder = resolve_version(project, version)
    name = read_metadata(folder)["version"]
    atomic_write_json(project / CURRENT_FILE, {"version": name, "folder": str(folder), "set_at": utc_now()})
    return folder


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def compare_versions(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every field that differs; a key absent on one side gives None."""
    fa, fb = _flatten(a), _flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _cost_cell(cost: dict | None) -> str:
    cost = cost or {}
    if cost.get("actual_usd") is not None:
        return f"${cost['actual_usd']:.2f}"
    if cost.get("estimated_usd") is not None:
        return f"~${cost['estimated_usd']:.2f}"  # "~": only the estimate is known
    return "-"


def format_versions_table(versions: list[dict], current: str | None) -> str:
    """One line per version, the current one marked with '*'."""
    if not versions:
        return "no versions yet"
    # each family names its own selection metric (Fish Speech: val_codebook_loss); one name heads the column
    best = [_best_val(m) for m in versions]
    names = {name for name, _ in best if name}
    metric = next(iter(names)) if len(names) == 1 else "best val"
    header = ["", "version", "#", "parent", "mode", "steps", "samples", "hours", metric, "cost", "created"]
    rows = []
    for m, (name, value) in zip(versions, best):
        shown = _cell(value) if len(names) <= 1 or name is None else f"{name} {_cell(value)}"
        rows.append(
            [
                "*" if m["version"] == current else "",
                m["version"],
                str(m["number"]),
                (m.get("parent") or {}).get("version") or "-",
                m["mode"],
                _cell(m.get("steps")),
                _cell((m.get("samples") or {}).get("total")),
                f"{(m.get('hours') or {}).get('total', 0.0):.2f}" if m.get("hours") else "-",
                shown,
                _cost_cell(m.get("cost")),
                str(m["created_at"])[:16].replace("T", " "),
            ]
        )
    return _table(header, rows) + "\n* = current"


def _best_val(meta: dict) -> tuple[str | None, Any]:
    """(name, value) of the metric the version's model was chosen by: best_val's first key (two_phase also
    keeps its language phase's, prefixed language_)."""
    best = meta.get("best_val") or {}
    name = next((k for k in best if not k.startswith("language_")), None)
    return name, best.get(name) if name else None


def format_comparison(rows: list[tuple[str, Any, Any]], a_name: str, b_name: str) -> str:
    if not rows:
        return f"{a_name} and {b_name} have identical metadata"
    return _table(["field", a_name, b_name], [[k, _cell(va), _cell(vb)] for k, va, vb in rows])
