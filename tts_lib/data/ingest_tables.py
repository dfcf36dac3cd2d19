"""Line-based ingest formats: LJSpeech metadata.csv, Coqui/XTTS CSV and JSONL manifests.

Files are read as bytes and decoded line by line with errors="replace", so one line of bad UTF-8
becomes an item with U+FFFD in its text and a `text_not_utf8` problem naming the line, instead of
an exception that stops the whole dataset. Every item records its `Origin` (file and line), counted
as an editor counts them: from 1, header and blank lines included.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tts_lib.data.manifest import ITEM_FIELDS, SPLITS, Item, Origin, Problem

CSV_COLUMNS = ("audio_file", "text", "speaker_name")
# VoxCPM's fields plus tts_lib's own manifest fields; dataset_id is VoxCPM's, not a speaker.
JSONL_FIELDS = frozenset(ITEM_FIELDS) | {"dataset_id"}

Line = tuple[int, str, int | None]  # (line number from 1, decoded text, offset of the first bad byte)


def decode(raw: bytes) -> tuple[str, int | None]:
    """Text with U+FFFD for invalid bytes, and the offset of the first invalid byte (None if valid)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", errors="replace"), e.start


def read_text_file(path: Path) -> tuple[str, int | None]:
    """A whole transcript file (.lab): stripped text, and the first invalid byte's offset if any."""
    text, bad = decode(path.read_bytes())
    return text.removeprefix("\ufeff").strip(), bad


def read_lines(path: Path) -> list[Line]:
    # bytes.splitlines breaks only at \n, \r and \r\n; str.splitlines would also break inside a
    # transcript at U+2028 and friends.
    lines = []
    for lineno, raw in enumerate(Path(path).read_bytes().splitlines(), 1):
        text, bad = decode(raw)
        lines.append((lineno, text.removeprefix("\ufeff") if lineno == 1 else text, bad))
    return lines


def not_utf8(origin: Origin, detail: str, item_id: str | None) -> Problem:
    """`detail` says where in the row, e.g. "byte 14"; the message names the line itself, as
    `ingest` prints problems as path: message."""
    where = ", ".join(part for part in (origin.place, detail) if part)
    message = f"{where}: bytes are not valid UTF-8 (shown as U+FFFD in the transcript)"
    return Problem("error", "text_not_utf8", message, origin.file, item_id, origin)


def malformed(origin: Origin, message: str) -> Problem:
    return Problem("error", "malformed_row", f"{origin.place}: {message}", origin.file, origin=origin)


def id_from_path(audio: Path, folder: Path) -> str:
    """The audio path relative to `folder` (absolute when outside it), without its extension."""
    try:
        audio = audio.relative_to(folder)
    except ValueError:
        pass
    return audio.with_suffix("").as_posix()


def is_hidden(relative: Path) -> bool:
    """Inside a hidden folder (.cache, .git, .ipynb_checkpoints): copies or partial downloads, not data."""
    return any(part.startswith(".") for part in relative.parts)


def resolve(folder: Path, relative: str) -> Path:
    return Path(os.path.normpath(folder / relative))


# --- LJSpeech ------------------------------------------------------------------------------------


def read_ljspeech(file: Path) -> tuple[list[Item], list[Problem]]:
    """`id|text|normalized_text` per line, no header, quotes literal; audio in wavs/<id>.wav."""
    folder = file.parent
    items: list[Item] = []
    problems: list[Problem] = []
    for lineno, line, bad in read_lines(file):
        if not line.strip():
            continue
        origin = Origin(str(file), lineno)
        fields = line.split("|")
        if len(fields) not in (2, 3) or not fields[0].strip():
            found = "an empty id" if len(fields) in (2, 3) else f"{len(fields)} field(s)"
            problems.append(malformed(origin, f"expected id|text|normalized_text, found {found}"))
            continue
        item_id = fields[0].strip()
        # The normalized column spells out numbers and abbreviations: what the speaker actually said.
        text = fields[2].strip() if len(fields) == 3 and fields[2].strip() else fields[1].strip()
        audio = str(folder / "wavs" / f"{item_id}.wav")
        items.append(Item(item_id, audio, text, folder.name, origin=origin))
        if bad is not None:
            problems.append(not_utf8(origin, f"byte {bad}", item_id))
    return items, problems


# --- Coqui / XTTS CSV ----------------------------------------------------------------------------


def first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return decode(f.readline())[0].removeprefix("\ufeff").strip()
    except OSError:
        return ""


def csv_header(path: Path) -> list[str] | None:
    """The first row's column names (pipe- or comma-separated), or None for an empty/unreadable file."""
    line = first_line(path)
    if not line:
        return None
    fields = line.split("|") if "|" in line else next(csv.reader([line]))
    return [name.strip() for name in fields]


Record = tuple[int, int, list[str]]  # (first line, last line, fields)


def csv_records(lines: list[Line], sep: str) -> tuple[list[Record], tuple[int, str] | None]:
    """(first line, last line, fields) per record after the header, and (line, reason) of a parse
    error that stopped reading.

    Pipe files are split literally (quotes are text, as in LJSpeech); comma files use CSV quoting,
    where one quoted record may span several lines.
    """
    body = lines[1:]
    if sep == "|":
        return [(n, n, text.split("|")) for n, text, _ in body if text.strip()], None
    records = []
    reader = csv.reader(text + "\n" for _, text, _ in body)
    consumed = 0
    try:
        for fields in reader:
            first, last = body[consumed][0], body[reader.line_num - 1][0]
            consumed = reader.line_num
            if any(f.strip() for f in fields):
                records.append((first, last, fields))
    except csv.Error as e:
        return records, (body[min(reader.line_num, len(body)) - 1][0], str(e))
    return records, None


def read_csv(file: Path) -> tuple[list[Item], list[Problem]]:
    """Header with audio_file and text (speaker_name optional); audio paths relative to the file."""
    folder = file.parent
    lines = read_lines(file)
    sep = "|" if "|" in lines[0][1] else ","
    columns = csv_header(file) or []
    col = {name: k for k, name in enumerate(columns)}
    problems: list[Problem] = []
    ignored = [c for c in columns if c not in CSV_COLUMNS]
    if ignored:
        message = f"columns {ignored} are not used; read are {', '.join(CSV_COLUMNS)}"
        problems.append(Problem("warning", "ignored_fields", message, str(file)))
    records, error = csv_records(lines, sep)
    bad_bytes = {n: offset for n, _, offset in lines if offset is not None}
    items: list[Item] = []
    for first, last, fields in records:
        origin = Origin(str(file), first, last if last != first else None)
        if len(fields) != len(columns):
            expected = f"{len(columns)} fields ({sep.join(columns)})"
            problems.append(malformed(origin, f"expected {expected}, found {len(fields)}"))
            continue
        audio_file = fields[col["audio_file"]].strip()
        if not audio_file:
            problems.append(malformed(origin, "audio_file is empty"))
            continue
        audio = resolve(folder, audio_file)
        speaker = fields[col["speaker_name"]].strip() if "speaker_name" in col else ""
        item_id = id_from_path(audio, folder)
        text = fields[col["text"]].strip()
        items.append(Item(item_id, str(audio), text, speaker or folder.name, origin=origin))
        bad = next((n for n in range(first, last + 1) if n in bad_bytes), None)
        if bad is not None:
            # The line with the bad bytes, which in a multi-line record need not be its first.
            problems.append(not_utf8(Origin(str(file), bad), f"byte {bad_bytes[bad]}", item_id))
    if error:
        line, reason = error
        problems.append(malformed(Origin(str(file), line), f"{reason}; the rest of the file was not read"))
    return items, problems


# --- JSONL (VoxCPM, tts_lib manifests) -----------------------------------------------------------


def _field(row: dict, key: str, types: type | tuple[type, ...], required: bool = False):
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f'missing field "{key}"; a row needs at least "audio" and "text"')
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        found = json.dumps(value, ensure_ascii=False)[:60]
        raise ValueError(f'field "{key}" has the wrong type: found {found}')
    return value


def item_from_jsonl(row: dict, folder: Path) -> Item:
    """One VoxCPM or tts_lib manifest row; raises ValueError saying what is missing or wrong."""
    audio_field = _field(row, "audio", str, required=True)
    if not audio_field.strip():
        raise ValueError('field "audio" is empty')
    audio = resolve(folder, audio_field)
    text = _field(row, "text", str, required=True)
    split = _field(row, "split", str)
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be one of {SPLITS} or null, found {split!r}")
    speaker = _field(row, "speaker", (str, int))
    codes = _field(row, "codes", str)
    ref_audio = _field(row, "ref_audio", str)
    return Item(
        id=_field(row, "id", str) or id_from_path(audio, folder),
        audio=str(audio),
        text=text.strip(),
        speaker=str(speaker).strip() if speaker is not None and str(speaker).strip() else folder.name,
        # Taken from the row only when headers are not read; ingest overwrites them otherwise.
        duration=_field(row, "duration", (int, float)),
        sample_rate=_field(row, "sample_rate", int),
        channels=_field(row, "channels", int),
        split=split,
        codes=str(resolve(folder, codes)) if codes else None,
        ref_audio=str(resolve(folder, ref_audio)) if ref_audio and ref_audio.strip() else None,
    )


def read_jsonl(file: Path) -> tuple[list[Item], list[Problem]]:
    items: list[Item] = []
    problems: list[Problem] = []
    ignored: dict[str, int] = {}  # unknown key -> number of rows that have it
    for lineno, line, bad in read_lines(file):
        if not line.strip():
            continue
        origin = Origin(str(file), lineno)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            message = f"expected one JSON object, could not parse it ({e.msg} at column {e.colno})"
            problems.append(malformed(origin, message))
            continue
        if not isinstance(row, dict):
            problems.append(malformed(origin, f"expected a JSON object, found {type(row).__name__}"))
            continue
        try:
            item = item_from_jsonl(row, file.parent)
        except ValueError as e:
            problems.append(malformed(origin, str(e)))
            continue
        for key in row.keys() - JSONL_FIELDS:
            ignored[key] = ignored.get(key, 0) + 1
        item.origin = origin
        items.append(item)
        if bad is not None:
            problems.append(not_utf8(origin, f"byte {bad}", item.id))
    if ignored:
        listed = ", ".join(f"{key} ({n} rows)" for key, n in sorted(ignored.items()))
        message = f"fields not used: {listed}; known fields are {', '.join(sorted(JSONL_FIELDS))}"
        problems.append(Problem("warning", "ignored_fields", message, str(file)))
    return items, problems
