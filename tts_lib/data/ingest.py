"""Read a dataset in any supported format into `Item`s, plus the problems found while reading.

Formats: "fish" (Fish Speech folders with .lab transcripts), "ljspeech" (metadata.csv + wavs/),
"csv" (Coqui/XTTS, header with audio_file and text), "jsonl" (VoxCPM, or tts_lib's own manifest)
and "parquet" (Hugging Face hub shards, in `ingest_parquet`).

Nothing is dropped silently: a row or file that cannot become an item is reported as a `Problem`
with its file and line, and reading goes on. Every item records its `Origin` (the table file and
line, the .lab file, or the parquet shard and row), so validation names where to fix it.
Problems about files that never became an item carry no item_id, so a cleaned manifest can list
them among what was dropped. Problems about an item that exists (bad UTF-8) carry its id, so
validation does not report them a second time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tts_lib.data.audio import AUDIO_EXTENSIONS, AudioError, audio_info
from tts_lib.data.ingest_tables import (
    csv_header,
    first_line,
    is_hidden,
    not_utf8,
    read_csv,
    read_jsonl,
    read_ljspeech,
    read_text_file,
)
from tts_lib.data.manifest import Item, Origin, Problem

FORMATS = ("fish", "ljspeech", "csv", "jsonl", "parquet")


@dataclass
class IngestResult:
    format: str  # one of FORMATS
    items: list[Item]
    problems: list[Problem]  # found while reading; validation adds its own later
    source: Path  # the path that was read, absolute


def ingest(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    text_column: str | None = None,
    speaker_column: str | None = None,
    audio_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    read_headers: bool = True,
) -> IngestResult:
    """Read `path` (a folder or a file) as `fmt`, detected from what is there when None.

    With `read_headers`, duration, sample rate and channels come from each audio file's header
    (None where it cannot be read: validation reports that). The column options are for parquet.
    """
    # abspath rather than resolve(): keep symlinked dataset folders under the name the user gave.
    source = Path(os.path.abspath(Path(path).expanduser()))
    if not source.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if fmt is None:
        fmt = detect_format(source)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = {"text_column": text_column, "speaker_column": speaker_column, "audio_column": audio_column}
    if fmt != "parquet" and any(columns.values()):
        given = ", ".join(k for k, v in columns.items() if v)
        raise ValueError(f"{given} apply to parquet only; {fmt} has fixed columns")

    if fmt == "fish":
        if not source.is_dir():
            raise ValueError(f"{source}: the fish layout is a folder of <speaker>/<name>.wav + .lab")
        items, problems = read_fish(source)
    elif fmt == "parquet":
        # Imported here so that reading the other formats never pays for importing pyarrow.
        from tts_lib.data.ingest_parquet import read_parquet

        items, problems = read_parquet(source, text_column, speaker_column, audio_column, cache_dir)
    else:
        reader = {"ljspeech": read_ljspeech, "csv": read_csv, "jsonl": read_jsonl}[fmt]
        items, problems = [], []
        for file in table_files(source, fmt):
            more_items, more_problems = reader(file)
            items += more_items
            problems += more_problems

    if read_headers:
        fill_headers(items)
    return IngestResult(fmt, items, problems, source)


def fill_headers(items: list[Item]) -> None:
    for item in items:
        try:
            info = audio_info(item.audio)
        except AudioError:
            # Validation reports missing and corrupt audio; reporting it here too would say it twice.
            item.duration = item.sample_rate = item.channels = None
            continue
        item.duration, item.sample_rate, item.channels = info.duration, info.sample_rate, info.channels


# --- which files to read -------------------------------------------------------------------------


def is_coqui_csv(path: Path) -> bool:
    columns = csv_header(path)
    return columns is not None and "audio_file" in columns and "text" in columns


def table_files(source: Path, fmt: str) -> list[Path]:
    """The files to read for a line-based format; raises ValueError when `source` does not fit."""
    if fmt == "ljspeech":
        file = source / "metadata.csv" if source.is_dir() else source
        if not file.is_file():
            raise ValueError(f"{source}: no metadata.csv (LJSpeech layout: metadata.csv and wavs/<id>.wav)")
        return [file]
    if fmt == "csv":
        if source.is_file():
            if not is_coqui_csv(source):
                raise ValueError(
                    f"{source}: expected a header row with audio_file and text columns "
                    f"(speaker_name optional), found {csv_header(source)}"
                )
            return [source]
        files = [f for f in sorted(source.glob("*.csv")) if is_coqui_csv(f)]
        if not files:
            raise ValueError(f"{source}: no *.csv with a header row naming audio_file and text columns")
        return files
    files = [source] if source.is_file() else sorted(source.glob("*.jsonl"))
    if not files:
        raise ValueError(f"{source}: no *.jsonl file")
    return files


def scan_fish(root: Path, stop_at_first: bool = False) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Audio files and .lab files under `root`, keyed by relative path without extension."""
    audio: dict[str, list[Path]] = {}
    labs: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        # Hidden folders (.git, .ipynb_checkpoints, .cache) are never part of a dataset.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        for name in sorted(files):
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            key = (rel / stem).as_posix()
            if ext.lower() in AUDIO_EXTENSIONS:
                audio.setdefault(key, []).append(Path(folder) / name)
            elif ext.lower() == ".lab":
                labs[key] = Path(folder) / name
        if stop_at_first and audio.keys() & labs.keys():
            break
    return audio, labs


def detect_format(source: Path) -> str:
    """The one format `source` holds; ValueError naming what was looked for when none or several."""
    if source.is_file():
        return detect_file_format(source)
    found: list[tuple[str, str]] = []
    metadata = source / "metadata.csv"
    if metadata.is_file() and not is_coqui_csv(metadata):
        found.append(("ljspeech", "metadata.csv"))
    coqui = [f.name for f in sorted(source.glob("*.csv")) if is_coqui_csv(f)]
    if coqui:
        found.append(("csv", ", ".join(coqui)))
    jsonl = [f.name for f in sorted(source.glob("*.jsonl"))]
    if jsonl:
        found.append(("jsonl", ", ".join(jsonl)))
    parquet = next((p for p in source.rglob("*.parquet") if not is_hidden(p.relative_to(source))), None)
    if parquet is not None:
        found.append(("parquet", parquet.relative_to(source).as_posix() + " ..."))
    audio, labs = scan_fish(source, stop_at_first=True)
    if audio.keys() & labs.keys():
        found.append(("fish", "<speaker>/<name> audio + .lab pairs"))
    if len(found) == 1:
        return found[0][0]
    if found:
        listed = "; ".join(f"{fmt} ({what})" for fmt, what in found)
        raise ValueError(
            f"{source} holds more than one dataset format: {listed}. Choose one with fmt= (--format) "
            "or give the file itself"
        )
    hint = f" (found {len(audio)} audio files, none with a .lab beside it)" if audio else ""
    raise ValueError(
        f"no dataset format recognised under {source}: looked for metadata.csv (ljspeech), *.csv with an "
        "audio_file column (csv), *.jsonl (jsonl), *.parquet in any subfolder (parquet), and "
        f"<speaker>/<name>.wav + <name>.lab pairs (fish){hint}"
    )


def detect_file_format(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".csv":
        if is_coqui_csv(file):
            return "csv"
        columns = csv_header(file)
        if columns is not None and len(columns) in (2, 3) and "|" in first_line(file):
            return "ljspeech"
        raise ValueError(
            f"{file}: not a Coqui CSV (no header with audio_file and text columns) and not LJSpeech "
            f"metadata (id|text|normalized_text); first row: {columns}"
        )
    raise ValueError(
        f"{file}: cannot tell the format from a {suffix or 'suffix-less'} file; give a .csv (ljspeech or "
        "Coqui), .jsonl or .parquet file, or a dataset folder"
    )


# --- Fish Speech layout ---------------------------------------------------------------------------


def read_fish(root: Path) -> tuple[list[Item], list[Problem]]:
    """ROOT/<speaker>/[subfolders/]<name>.<audio> with <name>.lab; audio in ROOT itself is speaker ROOT."""
    audio, labs = scan_fish(root)
    items: list[Item] = []
    problems: list[Problem] = []
    for key in sorted(audio.keys() | labs.keys()):
        parts = key.split("/")
        # Audio directly in ROOT: ROOT is the speaker folder itself.
        speaker = root.name if len(parts) == 1 else parts[0]
        item_id = f"{speaker}/{key}" if len(parts) == 1 else key
        lab = labs.get(key)
        if key not in audio:
            problems.append(
                Problem(
                    "error",
                    "missing_audio",
                    f"transcript has no audio beside it (looked for {', '.join(AUDIO_EXTENSIONS)})",
                    str(lab),
                )
            )
            continue
        for audio_path in audio[key]:
            if lab is None:
                problems.append(
                    Problem(
                        "error",
                        "missing_transcript",
                        f"no transcript: expected {audio_path.with_suffix('.lab').name} beside the audio",
                        str(audio_path),
                    )
                )
                continue
            text, bad_offset = read_text_file(lab)
            npy = audio_path.with_suffix(".npy")
            codes = str(npy) if npy.is_file() else None
            # The transcript is the file the user edits; the audio beside it is named by the problem.
            origin = Origin(str(lab))
            items.append(Item(item_id, str(audio_path), text, speaker, codes=codes, origin=origin))
            if bad_offset is not None:
                problems.append(not_utf8(origin, f"byte {bad_offset}", item_id))
    return items, problems
