"""Turn every clip of a manifest into codec codes once, and never again.

A clip's codes are cached under a key made of the audio's content hash and the codec checkpoint's
hash, so re-running, renaming files or appending data only encodes what is new, and a different
codec never reuses stale codes. Each code file is written atomically as soon as it is ready, so a
run killed midway resumes where it stopped. Upstream `.npy` files found beside the audio (recorded
by ingest as `item.codes`) are reused when their shape fits the codec.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tts_lib.common.fileio import atomic_write_bytes, default_cache_dir, sha256_file
from tts_lib.data.audio import AudioError, load_audio
from tts_lib.data.manifest import Item
from tts_lib.models import CodecSpec

# waves (each (samples,) float32 at the codec's rate) -> codes (each (num_codebooks, frames) int)
EncodeBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class ExtractionSummary:
    encoded: int = 0
    cached: int = 0  # already in the cache from an earlier run
    reused_upstream: int = 0  # upstream .npy beside the audio
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item id, reason): never silent
    seconds: float = 0.0


def file_hash(path: str | Path) -> str:
    """Content hash of an audio file (the cache does not care about its name or folder)."""
    return sha256_file(path)


def cache_path(cache_dir: Path, codec_hash: str, audio_hash: str) -> Path:
    return cache_dir / codec_hash[:16] / audio_hash[:2] / f"{audio_hash}.npy"


def save_codes(path: Path, codes: np.ndarray) -> None:
    """A family's training targets, stored exactly: integer codes in the smallest of int16/int32 that holds
    them (a quarter of int64's disk), float latents (continuous targets) in their own dtype, any shape."""
    if np.issubdtype(codes.dtype, np.integer):
        for small in (np.int16, np.int32):
            if codes.size == 0 or (np.iinfo(small).min <= codes.min() and codes.max() <= np.iinfo(small).max):
                codes = codes.astype(small)
                break
    elif not np.issubdtype(codes.dtype, np.floating):
        raise TypeError(f"{path}: training targets must be integer codes or float latents, found {codes.dtype}")
    buffer = io.BytesIO()
    np.save(buffer, codes)
    atomic_write_bytes(path, buffer.getvalue())


def upstream_codes_fit(item: Item, codes: np.ndarray, spec: CodecSpec) -> bool:
    """An upstream .npy is (num_codebooks, frames) with about duration * frame_rate frames."""
    if codes.ndim != 2 or codes.shape[0] != spec.num_codebooks:
        return False
    return item.duration is None or abs(codes.shape[1] - item.duration * spec.frame_rate) <= 2


def extract_codes(
    items: list[Item],
    spec: CodecSpec,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    log_every: float = 10.0,
) -> ExtractionSummary:
    """Set `item.codes` for every item to a .npy of its codes, encoding only what is missing.

    Items whose audio cannot be read are listed in `summary.failed` and keep `codes = None`.
    `progress(done, total)` is called after every batch (a tqdm bar in notebooks); a plain line
    is printed every `log_every` seconds for headless logs.
    """
    cache_dir = Path(cache_dir).resolve() if cache_dir else default_cache_dir() / "codes"
    summary = ExtractionSummary()
    start = last_log = time.monotonic()
    todo: list[tuple[Item, Path]] = []
    for item in items:
        if item.codes and Path(item.codes).is_file() and cache_dir not in Path(item.codes).resolve().parents:
            if upstream_codes_fit(item, np.load(item.codes, mmap_mode="r"), spec):
                summary.reused_upstream += 1
                continue
        try:
            target = cache_path(cache_dir, spec.checkpoint_hash, file_hash(item.audio))
        except OSError as e:
            summary.failed.append((item.id, f"{item.audio}: {e}"))
            continue
        item.codes = str(target)
        if target.is_file():
            summary.cached += 1
        else:
            todo.append((item, target))

    # Similar lengths together: a batch is padded to its longest clip inside the codec.
    todo.sort(key=lambda pair: pair[0].duration or 0.0)
    total = len(todo)
    audio_s = sum(item.duration or 0.0 for item, _ in todo)
    if total:
        print(f"codes: {total} clips ({audio_s / 3600:.2f} h of audio) to encode on {spec.device}, "
              f"{summary.cached} cached, {summary.reused_upstream} upstream .npy reused", flush=True)  # fmt: skip
    else:  # say so, and close a notebook's bar as done rather than leave it at "0/?"
        print(f"codes: nothing to encode: {summary.cached} cached, {summary.reused_upstream} upstream .npy reused, "
              f"{len(summary.failed)} unreadable", flush=True)  # fmt: skip
        if progress:
            progress(0, 0)
    for first in range(0, total, batch_size):
        chunk = todo[first : first + batch_size]
        waves, ready = [], []
        for item, target in chunk:
            try:
                waves.append(load_audio(item.audio, spec.sample_rate))
                ready.append((item, target))
            except AudioError as e:
                summary.failed.append((item.id, str(e)))
                item.codes = None
        for (_, target), codes in zip(ready, spec.encode_batch(waves) if waves else []):
            save_codes(target, np.asarray(codes))
            summary.encoded += 1
        done = min(first + batch_size, total)
        if progress:
            progress(done, total)
        now = time.monotonic()
        if first == 0 and done < total:  # measured, not assumed: the first batch's rate, over the rest of the audio
            print(estimate_line(sum(item.duration or 0.0 for item, _ in chunk), now - start, audio_s), flush=True)
        if now - last_log >= log_every or done == total:
            rate = done / max(now - start, 1e-9)
            print(f"codes: {done}/{total} encoded ({rate:.1f} clips/s), {summary.cached} cached", flush=True)
            last_log = now
    summary.seconds = time.monotonic() - start
    return summary


def extract_reference_codes(items: list[Item], spec: CodecSpec, cache_dir: str | Path | None = None,
                            **options) -> ExtractionSummary:  # fmt: skip
    """Set `item.ref_codes` for every item with a `ref_audio`: each reference clip encoded once, like any clip and
    in the same cache (a clip used as a reference and as an item is encoded once). A clip that cannot be read is
    in `summary.failed` under the id of every item that names it; those items keep `ref_codes = None`."""
    clips: dict[str, Item] = {}
    for item in items:
        if item.ref_audio:
            clips.setdefault(item.ref_audio, Item(f"ref_audio of {item.id}", item.ref_audio, "", item.speaker))
    if not clips:  # no row names a reference: nothing to encode or say
        return ExtractionSummary()
    summary = extract_codes(list(clips.values()), spec, cache_dir, **options)
    why = dict(summary.failed)  # clip id -> reason
    summary.failed = [(item.id, why[clips[item.ref_audio].id]) for item in items
                      if item.ref_audio and clips[item.ref_audio].id in why]  # fmt: skip
    for item in items:
        item.ref_codes = clips[item.ref_audio].codes if item.ref_audio else None
    return summary


def estimate_line(first_audio_s: float, first_s: float, total_audio_s: float) -> str:
    """How long encoding all of it will take, at the rate the first batch was encoded."""
    if first_audio_s <= 0 or first_s <= 0:
        return "codes: no time estimate (the first clips have no duration)"
    seconds = first_s * total_audio_s / first_audio_s
    return (f"codes: about {seconds / 60:.1f} min for all of it, at the first batch's rate "
            f"({first_audio_s / first_s:.1f} s of audio per second)")  # fmt: skip
