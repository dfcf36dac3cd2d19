"""The normalized manifest: one JSON object per line, one line per utterance.

Every ingest format ends up as a list of `Item`s; everything downstream (validation, split,
code extraction, training) reads only this. Audio and code paths are stored relative to the
manifest's folder when they lie under it, so a dataset folder can be moved as a whole.

Each item read from a file also knows its `Origin`: the table file and line (or .lab file, or
parquet row) it came from, so that a problem found later names the place where the user fixes it.
The origin lives in memory only: a manifest on disk is its own origin (read back, its items point
at its own lines), and a stored origin would go stale as soon as the source table is edited.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from tts_lib.common.fileio import atomic_write_lines

SPLITS = ("train", "val")


@dataclass
class Origin:
    """Where an item was read from: the file a user edits to fix it, and the place in that file."""

    file: str  # the table (metadata.csv, CSV, JSONL), .lab transcript or parquet shard
    line: int | None = None  # first line of the row, from 1, header and blank lines counted
    last_line: int | None = None  # last line, when a quoted CSV record spans several lines
    row: int | None = None  # parquet: the row's index in its shard, from 0

    @property
    def place(self) -> str:
        """The place in the file: 'line 12', 'lines 3-5', 'row 7', or '' for a whole .lab file."""
        if self.row is not None:
            return f"row {self.row}"
        if self.line is None:
            return ""
        if self.last_line is not None and self.last_line != self.line:
            return f"lines {self.line}-{self.last_line}"
        return f"line {self.line}"

    def __str__(self) -> str:
        return f"{self.file} {self.place}".rstrip()


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
    ref_audio: str | None = None  # a clip of the same voice (VoxCPM's JSONL `ref_audio`), kept with the item
    ref_codes: str | None = None  # ref_audio's cached targets, for a family that trains with a reference (VoxCPM2)
    # Not written to the manifest, and not compared: an item read back equals the one written.
    origin: Origin | None = field(default=None, compare=False)


@dataclass
class Problem:
    """One thing wrong with one item or file, as shown to the user."""

    severity: str  # "error" (the item cannot be trained on) or "warning" (worth a look)
    code: str  # stable short name, e.g. "missing_audio", for --json consumers and tests
    message: str  # one sentence: what was expected, what was found
    path: str | None = None  # the file the problem is about
    item_id: str | None = None  # the item the problem is about, when there is one
    origin: Origin | None = None  # the row the item (or the malformed row) was read from


ITEM_FIELDS = tuple(f.name for f in fields(Item) if f.name != "origin")  # the fields on disk
REQUIRED_FIELDS = ("id", "audio", "text", "speaker")


def _relative_to(path: str, folder: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(folder).as_posix()
    except ValueError:
        return str(p)


def item_row(item: Item) -> dict:
    """The item's manifest fields, paths as they are in memory (absolute)."""
    return {name: getattr(item, name) for name in ITEM_FIELDS}


def write_manifest(path: str | os.PathLike, items: list[Item]) -> Path:
    """Write items as JSONL atomically; paths under the manifest's folder become relative."""
    path = Path(path)
    folder = path.parent.resolve()
    lines = []
    for item in items:
        row = item_row(item)
        row["audio"] = _relative_to(item.audio, folder)
        if item.codes:
            row["codes"] = _relative_to(item.codes, folder)
        for name in ("ref_audio", "ref_codes"):
            if getattr(item, name):
                row[name] = _relative_to(getattr(item, name), folder)
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
    for name in ("ref_audio", "ref_codes"):
        if row.get(name):
            row[name] = str(base / row[name])
    if row.get("split") not in (None, *SPLITS):
        raise ValueError(f"{where}: split must be one of {SPLITS} or null, found {row['split']!r}")
    return Item(**row)


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Read a manifest written by `write_manifest` (strict: unknown fields are an error).

    Each item's origin is its line in this manifest.
    """
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
            item = item_from_row(row, base, where)
            item.origin = Origin(str(path), lineno)
            items.append(item)
    return items
