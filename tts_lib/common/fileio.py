"""Atomic file writes and content hashes shared by every module that writes user-visible files.

A write goes to a temporary file in the destination folder, is flushed to disk, then renamed over
the target: a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, flush it to disk, then rename it over
    `path`: readers see the old file or the complete new one, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a (possibly large) file so `dst` is either absent or complete."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


@contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside `out` to fill. When the block ends normally it becomes `out` in one
    rename (an existing `out`, only with overwrite=True, is moved aside first and deleted after); when the
    block raises it is deleted and `out` is untouched. So a folder at `out` is always a complete one."""
    out = Path(out)
    if not overwrite:
        refuse_overwrite(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # same filesystem: atomic rename
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        old = None
        if out.exists():
            if not overwrite:
                refuse_overwrite(out)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename


def default_cache_dir() -> Path:
    """Where derived data (extracted audio, codes) goes: $TTS_LIB_CACHE or ~/.cache/tts_lib."""
    return Path(os.environ.get("TTS_LIB_CACHE") or Path.home() / ".cache" / "tts_lib").expanduser()


def refuse_overwrite(path: str | os.PathLike, flag: str = "--overwrite") -> None:
    """Raise if `path` exists: user outputs are never replaced unless they asked for it."""
    if Path(path).exists():
        raise FileExistsError(f"{path} already exists; pass {flag} to replace it, or choose another path")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_hash(path: str | Path) -> str:
    """sha256 of a checkpoint file, remembered beside it (keyed by size and mtime) because hashing
    a 2 GB codec on every run would cost seconds for nothing."""
    path = Path(path)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    memo = default_cache_dir() / "checkpoint_hashes" / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    except OSError:
        pass  # a read-only home only costs the hash next time
    return digest
