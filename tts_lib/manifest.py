"""The normalized manifest: one JSON object per line, one line per utterance.

Every ingest format ends up as a list of `Item`s; everything downstream (validation, split,
code extraction, training) reads only this. Audio and code paths are stored relative to the
manifest's folder when they lie under it, so a dataset folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tts_lib.fileio import atomic_write_lines

SPLITS = ("train", "val")


@dataclass
class Item:
    id: str  # unique within a dataset, e.g. "speaker/name" for Fish Speech layout
    audio: str  # absolute path once read; relative to the manifest folder on disk
    text: str  # transcript as given (U+FFFD marks bytes that were not valid UTF-8)
    speaker: str  # speaker name; single-speaker formats use the dataset's name
    duration: float | None = None  # seconds, from the audio header
    sample_rate: int | None = None  # Hz, from the audio header
    channels: int | None = None  # from the audio header
    split: str | None = None  # "train" or "val"; None until a split is assigned
    codes: str | None = None  # pre-extracted codec codes (.npy, shape (num_codebooks, T)), if any


@dataclass
class Problem:
    """One thing wrong with one item or file, as shown to the user."""

    severity: str  # "error" (the item cannot be trained on) or "warning" (worth a look)
    code: str  # stable short name, e.g. "missing_audio", for --json consumers and tests
    message: str  # one sentence: what was expected, what was found
    path: str | None = None  # the file the problem is about
    item_id: str | None = None  # the item the problem is about, when there is one


ITEM_FIELDS = tuple(f.name for f in fields(Item))
REQUIRED_FIELDS = ("id", "audio", "text", "speaker")


def _relative_to(path: str, folder: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(folder).as_posix()
    except ValueError:
        return str(p)


def write_manifest(path: str | os.PathLike, items: list[Item]) -> Path:
    """Write items as JSONL atomically; paths under the manifest's folder become relative."""
    path = Path(path)
    folder = path.parent.resolve()
    lines = []
    for item in items:
        row = asdict(item)
        row["audio"] = _relative_to(item.audio, folder)
        if item.codes:
            row["codes"] = _relative_to(item.codes, folder)
        lines.append(json.dumps(row, ensure_ascii=False))
    return atomic_write_lines(path, lines)


def item_from_row(row: dict, base: Path, where: str) -> Item:
    """Build an Item from a manifest row; relative paths resolve against `base`."""
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; expected at least {list(REQUIRED_FIELDS)}")
    unknown = sorted(set(row) - set(ITEM_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a manifest row has {list(ITEM_FIELDS)}")
    row = dict(row)
    row["audio"] = str(base / row["audio"])
    if row.get("codes"):
        row["codes"] = str(base / row["codes"])
    if row.get("split") not in (None, *SPLITS):
        raise ValueError(f"{where}: split must be one of {SPLITS} or null, found {row['split']!r}")
    return Item(**row)


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Read a manifest written by `write_manifest` (strict: unknown fields are an error)."""
    path = Path(path)
    base = path.parent.resolve()
    items = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{where}: expected one JSON object per line, could not parse it ({e})") from e
            items.append(item_from_row(row, base, where))
    return items
