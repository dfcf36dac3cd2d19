"""Hugging Face hub parquet shards: one row per utterance, the audio stored inside the shard.

The audio column is what the `datasets` Audio feature writes: a struct with `bytes` and/or `path`.
Bytes are written out once into a cache folder, because everything downstream (validation, code
extraction, the data loader) reads audio from files. The cache folder of a shard is named after the
shard's path, size and modification time: re-ingesting the same shard finds its files there and
does not rewrite them, and a shard replaced by a new download gets a fresh folder instead of
silently reusing audio extracted from the old one.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from tts_lib.common.fileio import atomic_write_bytes, default_cache_dir
from tts_lib.data.audio import AUDIO_EXTENSIONS
from tts_lib.data.ingest_tables import decode, is_hidden, malformed, not_utf8
from tts_lib.data.manifest import Item, Origin, Problem

TEXT_COLUMNS = ("text", "transcription", "sentence", "normalized_text", "transcript", "raw_text")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id", "speaker_name")
SNIFFED_SUFFIX = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
BATCH_ROWS = 64  # rows decoded at a time: a shard's audio never has to fit in memory at once


def find_shards(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    shards = [p for p in sorted(source.rglob("*.parquet")) if not is_hidden(p.relative_to(source))]
    if not shards:
        raise ValueError(f"{source}: no *.parquet file in it or in its subfolders")
    return shards


def describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def is_audio_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return bool({"bytes", "path"} & {t.field(i).name for i in range(t.num_fields)})
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def audio_column_of(schema: pa.Schema, wanted: str | None, shard: Path) -> str:
    if wanted:
        if wanted not in schema.names:
            raise ValueError(f"{shard}: no audio column {wanted!r}; columns found: {describe(schema)}")
        t = schema.field(wanted).type
        if not (is_audio_type(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise ValueError(f"{shard}: column {wanted!r} is {t}, not audio (bytes/path struct, or binary)")
        return wanted
    candidates = [f.name for f in schema if is_audio_type(f.type)]
    if candidates:
        return "audio" if "audio" in candidates else candidates[0]
    if "audio" in schema.names:  # a plain column of paths
        return "audio"
    raise ValueError(
        f"{shard}: no audio column (a struct with bytes and/or path, as the datasets Audio feature writes); "
        f"columns found: {describe(schema)}; name it with audio_column= (--audio-column)"
    )


def column_of(
    schema: pa.Schema,
    wanted: str | None,
    common: tuple[str, ...],
    what: str,
    shard: Path,
) -> str | None:
    """The column named `wanted`, else the first of `common` present (any letter case), else None."""
    if wanted:
        if wanted not in schema.names:
            raise ValueError(f"{shard}: no {what} column {wanted!r}; columns found: {describe(schema)}")
        return wanted
    by_lower = {name.lower(): name for name in schema.names}
    return next((by_lower[c] for c in common if c in by_lower), None)


def shard_cache(cache_root: Path, shard: Path) -> Path:
    st = shard.stat()
    key = hashlib.sha256(f"{shard}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root / "parquet" / f"{shard.stem}-{key}"


def sniff_suffix(data: bytes) -> str:
    try:
        fmt = sf.info(io.BytesIO(data)).format
    except Exception:  # libsndfile raises several types; unreadable bytes are reported by validation
        return ".bin"
    return SNIFFED_SUFFIX.get(fmt, f".{fmt.lower()}")


def extract(data: bytes, name: str | None, folder: Path, row: int) -> Path:
    """Write `data` to folder/<row>.<ext> unless an earlier ingest already did (same size)."""
    suffix = Path(name).suffix.lower() if name else ""
    if suffix not in AUDIO_EXTENSIONS:
        suffix = sniff_suffix(data)
    target = folder / f"{row}{suffix}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        atomic_write_bytes(target, data)
    return target


def local_audio(name: str, shard: Path, folder: Path) -> Path:
    """A path-only row: absolute, or relative to the shard's folder or the dataset folder."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for base in (shard.parent, folder):
        if (base / path).exists():
            return base / path
    return shard.parent / path  # missing: validation reports it as missing_audio


def split_audio(value: object) -> tuple[bytes | None, str | None]:
    """(bytes, path) from a struct, raw bytes or a path string."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        return data or None, name or None
    if isinstance(value, bytes):
        return value or None, None
    if isinstance(value, str):
        return None, value or None
    return None, None


def read_parquet(
    source: Path,
    text_column: str | None = None,
    speaker_column: str | None = None,
    audio_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[Item], list[Problem]]:
    """Every row of every shard under `source`, in shard then row order."""
    folder = source if source.is_dir() else source.parent
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    items: list[Item] = []
    problems: list[Problem] = []
    used_ids: set[str] = set()
    for shard in find_shards(source):
        pf = pq.ParquetFile(shard)
        schema = pf.schema_arrow
        audio_col = audio_column_of(schema, audio_column, shard)
        text_col = column_of(schema, text_column, TEXT_COLUMNS, "text", shard)
        if text_col is None:
            raise ValueError(
                f"{shard}: no text column found (looked for {', '.join(TEXT_COLUMNS)}); columns found: "
                f"{describe(schema)}; name it with text_column= (--text-column)"
            )
        speaker_col = column_of(schema, speaker_column, SPEAKER_COLUMNS, "speaker", shard)
        cache = shard_cache(cache_root, shard)
        # Shards in different subfolders often share a name (default/train/0000.parquet, default/test/...).
        prefix = shard.relative_to(folder).with_suffix("").as_posix()
        columns = list(dict.fromkeys(c for c in (audio_col, text_col, speaker_col) if c))
        row = -1
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                row += 1
                origin = Origin(str(shard), row=row)
                text, bad = record[text_col], None
                if isinstance(text, bytes):
                    text, bad = decode(text)
                if not isinstance(text, str):
                    found = "null" if text is None else type(text).__name__
                    message = f"text column {text_col!r} is {found}, expected text"
                    problems.append(malformed(origin, message))
                    continue
                data, name = split_audio(record[audio_col])
                if data is not None:
                    audio = extract(data, name, cache, row)
                elif name is not None:
                    audio = local_audio(name, shard, folder)
                else:
                    message = f"audio column {audio_col!r} has neither bytes nor path"
                    problems.append(malformed(origin, message))
                    continue
                # The original file name is a better id than a row number that a re-shard would change.
                item_id = f"{prefix}/{Path(name).stem}" if name else ""
                if not name or item_id in used_ids:
                    item_id = f"{prefix}/{row}"
                used_ids.add(item_id)
                speaker = record[speaker_col] if speaker_col else None
                speaker = str(speaker).strip() if speaker is not None else ""
                items.append(Item(item_id, str(audio), text.strip(), speaker or folder.name, origin=origin))
                if bad is not None:
                    problems.append(not_utf8(origin, f"byte {bad} of column {text_col!r}", item_id))
    return items, problems
