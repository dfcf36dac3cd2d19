"""A download package of one fine-tuned version, with a model card: python -m tts_lib finetune ... (last step)

`package_version(runs/fi-v2)` writes `runs/fi-v2/MODEL_CARD.md` and `runs/fi-v2/fi-v2.tar.gz`, an
archive with one top folder `fi-v2/` holding metadata.json, MODEL_CARD.md and the folders that
metadata.json's `outputs` names (merged model, adapter, language base), at their paths inside the
version folder, so the extracted metadata still points at them. The archive lives inside the
version folder by default: a version stays one folder to copy, keep or remove, and the lineage
listing (which looks for metadata.json) is not confused by stray archives beside the versions.

Only regular files inside the version folder go in: a symlink that leads out of it is refused, one
that stays inside is stored as the file it points to, so extracting never creates links.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tts_lib.common.fileio import atomic_write_text, refuse_overwrite
from tts_lib.models import card_text
from tts_lib.versions.lineage import METADATA_FILE, read_metadata

CARD_FILE = "MODEL_CARD.md"
README_FILE = "README.md"  # the card again, inside each model folder
NA = "n/a"
MODES = {
    "quick_lora": "a LoRA adapter trained on the base model, then merged into it",
    "full": "a full fine-tune of all weights",
    "two_phase": "a full fine-tune on all speakers (the language base), then a LoRA adapter for one speaker, merged",
}


def _get(meta: dict, *keys: str) -> Any:
    """meta[k1][k2]..., or None where any level is missing or null."""
    value: Any = meta
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return NA
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _usd(value: Any) -> str:
    return f"${value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else NA


def _table(header: tuple[str, str], rows: dict[str, Any]) -> list[str]:
    if not rows:
        return [NA]
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]


def model_card(metadata: dict) -> str:
    """The Markdown model card of a version, from its metadata.json (versions/lineage.py); missing keys show n/a."""
    m = metadata
    version = _fmt(m.get("version"))
    mode = m.get("mode")
    parent = m.get("parent")
    outputs = m.get("outputs") or {}
    merged, adapter = outputs.get("merged_dir"), outputs.get("adapter_dir")
    base_hash = _get(m, "base_model", "hash")
    parent_text = f"version {_fmt(_get(m, 'parent', 'version'))}" if parent else "none (trained from the base model)"

    random = bool(_get(m, "base_model", "random_weights"))
    family = card_text(_get(m, "base_model", "family") or "fish_speech", merged, adapter, random)
    what = family["what"]
    lines = [
        f"# {version} (version {_fmt(m.get('number'))})",
        "",
        f"{what}, made with tts_lib: {mode or NA} mode, {MODES.get(mode, 'mode not recorded')}. "
        f"Parent: {parent_text}.",
        "",
        f"- base model: {_fmt(_get(m, 'base_model', 'id'))} (sha256 {base_hash[:12] if base_hash else NA})",
        f"- created: {_fmt(m.get('created_at'))}",
        f"- dataset fingerprint: {_fmt(m.get('dataset_fingerprint'))}",
        "",
        "Paths below are relative to the version folder.",
        "",
        "## Licence",
        "",
        family["licence"],
        "",
        "## Data",
        "",
        "| | new in this version | total seen |",
        "| --- | --- | --- |",
        f"| samples | {_fmt(_get(m, 'samples', 'new'))} | {_fmt(_get(m, 'samples', 'total'))} |",
        f"| hours | {_fmt(_get(m, 'hours', 'new'), 3)} | {_fmt(_get(m, 'hours', 'total'), 3)} |",
        "",
        "## Training",
        "",
        f"Steps: {_fmt(m.get('steps'))}. Wall time: {_fmt(m.get('wall_time_s'))} s.",
        "",
        *_table(("hyperparameter", "value"), m.get("hyperparameters") or {}),
        "",
        *_metrics(m),
        "## Cost",
        "",
        f"GPU: {_fmt(_get(m, 'cost', 'gpu'))}; estimated {_usd(_get(m, 'cost', 'estimated_usd'))} "
        f"({_fmt(_get(m, 'cost', 'estimated_hours'), 3)} h); actual {_usd(_get(m, 'cost', 'actual_usd'))}.",
        "",
        "## How to use",
        "",
    ]
    if merged:
        lines += family["use_merged"]
    else:
        lines += ["No merged model in this version.", ""]
    if adapter:
        lines += [
            f"`{adapter}` is the adapter alone, in peft's format; it applies only to the base named in its "
            "tts_adapter.json (same sha256):",
            "",
            *family["use_adapter"],
            "",
            "or, to switch between several adapters on one loaded base (tts_lib.versions.hotswap):",
            "",
            "```python",
            "from tts_lib.versions.hotswap import AdapterBank",
            "from tts_lib.models import load_family",
            "",
            'bank = AdapterBank(load_family("BASE_DIR"))',
            f'bank.load("{version}", "{adapter}")',
            'codes = bank.generate("...")',
            "```",
            "",
        ]
    lines += ["## Lineage", "", f"- this version: {version}"]
    if parent:
        lines.append(
            f"- parent: {_fmt(_get(m, 'parent', 'version'))} (folder {_fmt(_get(m, 'parent', 'folder'))}, "
            f"checkpoint {_fmt(_get(m, 'parent', 'checkpoint'))})"
        )
    else:
        lines.append(f"- parent: none; started from the base model {_fmt(_get(m, 'base_model', 'id'))}")
    return "\n".join(lines) + "\n"


def _metrics(m: dict) -> list[str]:
    """The Metrics section: best validation losses, the forgetting check, objective quality metrics."""
    family = card_text(_get(m, "base_model", "family") or "fish_speech", None, None, False)
    lines = [
        "## Metrics",
        "",
        "Validation losses are measured during training on the held-out split (items with split `val`, which "
        f"for an incremental version include the parent's held-out items): {family['metrics']} Lower is better.",
        "",
        *_table(("metric", "best"), m.get("best_val") or {}),
        "",
        "Forgetting check (incremental versions: the parent's model and this one, scored on the parent's held-out "
        "items and on the new held-out items):",
        "",
    ]
    f = m.get("forgetting")
    if not f:
        lines.append("not measured (no parent version with a manifest)")
    else:
        rows = {
            f"{key} ({_get(f, key, 'items')} items)": f"{_fmt(_get(f, key, 'before'))} -> {_fmt(_get(f, key, 'after'))}"
            for key in ("old_data", "new_data")
        }
        verdict = "FLAGGED" if f.get("flagged") else "ok"
        lines += [*_table((_fmt(f.get("metric")), "parent -> this version"), rows), ""]
        lines.append(f"{verdict} (margin {_fmt(f.get('margin'))}): {_fmt(f.get('note'))}")
    quality = m.get("quality")
    lines += ["", "Objective quality metrics (intelligibility, speaker similarity, naturalness):", ""]
    lines += _table(("metric", "value"), quality) if isinstance(quality, dict) and quality else ["not measured"]
    return lines + [""]


def write_model_cards(version_dir: str | Path) -> list[Path]:
    """The model card as README.md inside each exported model folder (merged model, adapter, language base),
    so a folder copied on its own still says what it is; returns the paths written."""
    version_dir = Path(version_dir)
    meta = read_metadata(version_dir)
    card = model_card(meta)
    folders = [version_dir / rel for key, rel in sorted((meta.get("outputs") or {}).items())
               if key.endswith("_dir") and rel and (version_dir / rel).is_dir()]  # fmt: skip
    return [atomic_write_text(folder / README_FILE, card) for folder in folders]


def _inside(root: Path, path: Path, what: str) -> Path:
    """`path` resolved (symlinks followed), refused unless it stays inside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(
            f"{path}: {what} leads to {resolved}, outside the version folder {root}; a package holds only the "
            "version's own files. Copy the files into the version folder instead of linking them"
        )
    return resolved


def _members(version_dir: Path, meta: dict) -> list[tuple[Path, str]]:
    """(file on disk, name inside the version folder) for every file the package holds."""
    root = version_dir.resolve()
    files = [(version_dir / METADATA_FILE, METADATA_FILE), (version_dir / CARD_FILE, CARD_FILE)]
    outputs = meta.get("outputs") or {}
    for key, rel in sorted(outputs.items()):
        if not key.endswith("_dir") or not rel:  # folders of models; the manifest etc. are not for download
            continue
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(
                f"{version_dir / METADATA_FILE}: outputs.{key} is {rel!r}; expected a path relative to the version "
                "folder, inside it"
            )
        folder = version_dir / rel
        if not _inside(root, folder, f"outputs.{key}").is_dir():
            raise ValueError(
                f"{version_dir / METADATA_FILE}: outputs.{key} names {folder}, which is not a folder; "
                "finish the version (or fix metadata.json) before packaging"
            )
        for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not descend into linked folders
            dirnames.sort()
            for name in sorted(filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]):
                path = Path(dirpath) / name
                target = _inside(root, path, "a symlink")
                if target.is_dir():
                    raise ValueError(f"{path}: a link to a folder; a package stores files only, copy the folder in")
                files.append((path, path.relative_to(version_dir).as_posix()))
    return files


def package_version(version_dir: str | Path, out_tar: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write MODEL_CARD.md into the version folder and a `.tar.gz` of the version (default
    `<version_dir>/<version>.tar.gz`); returns the archive's path."""
    version_dir = Path(version_dir)
    meta = read_metadata(version_dir)
    version = str(meta["version"])
    out = Path(out_tar) if out_tar is not None else version_dir / f"{version}.tar.gz"
    if not overwrite:
        refuse_overwrite(out)
    atomic_write_text(version_dir / CARD_FILE, model_card(meta))  # derived from metadata: always regenerated
    write_model_cards(version_dir)
    members = _members(version_dir, meta)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                for path, name in members:
                    _add_file(tar, path, f"{version}/{name}")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the package is for others
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """A regular-file member (links stored as their target's content), without local user names."""
    stat = path.stat()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
    with open(path, "rb") as f:
        tar.addfile(info, f)


def record_quality(version_dir: str | Path, report: dict) -> dict | None:
    """Measured objective metrics (tts_lib.listening.quality_metrics.evaluate_versions) into the version's metadata
    ("quality"), its model cards and, when there is one, its package; the listening section runs after the
    export, so this is how a card gets the numbers. A report that says "not available" changes nothing."""
    if not report.get("available"):
        return None
    quality: dict[str, Any] = {}
    for name, v in report["versions"].items():
        quality[f"character error rate, {name}"] = v.get("cer")
        if v.get("speaker_similarity") is not None:
            quality[f"speaker similarity, {name}"] = v["speaker_similarity"]
    quality["measured with"] = (
        f"{report['asr_model']} transcripts of the evaluation sentences (CER); cosine of {report['speaker_model']} "
        "x-vectors against held-out clips of the speaker"
    )
    version_dir = Path(version_dir)
    meta = read_metadata(version_dir)
    meta["quality"] = quality
    from tts_lib.versions.lineage import write_metadata

    write_metadata(version_dir, meta)
    write_model_cards(version_dir)
    archive = version_dir / f"{meta['version']}.tar.gz"
    if archive.is_file():  # our own archive of this version, rebuilt so that it carries the same card
        package_version(version_dir, archive, overwrite=True)
    return quality
