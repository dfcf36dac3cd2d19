"""Check every item of a dataset and report what is wrong, without dropping anything silently.

    python -m tts_lib validate PATH [--json] [--drop-invalid CLEAN.jsonl]

Errors mean an item cannot be trained on; warnings are worth a look. Audio headers are read for
every item and the samples are decoded once (in a process pool) for the content checks: clipping,
near-silence and duplicate audio. Given the model family, every item's training sequence (text,
special tokens and codec frames, as the family builds it) is checked against the model's
max_seq_len, so a clip too long for the model is a finding here, not a shape error mid-training.
A problem about an item carries the item's origin (the table file and line it was read from),
because that row is where the user fixes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from tts_lib.data.audio import AudioError, audio_info, read_audio
from tts_lib.data.ingest import ingest
from tts_lib.data.manifest import Item, Problem
from tts_lib.data.text_coverage import Encoder, coverage_by_script
from tts_lib.models import ModelFamily

DURATION_BUCKETS = (0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0)  # histogram edges, seconds


@dataclass
class ValidationConfig:
    sample_rate: int = 44100  # the model's codec rate (with a model family: its own); lower rates: warning
    min_duration: float = 0.3  # seconds; shorter clips are mostly silence or a cut-off word
    max_duration: float = 30.0  # seconds; longer clips blow the token budget of a batch
    min_chars_per_second: float = 2.0  # below: the transcript is probably missing words
    max_chars_per_second: float = 30.0  # above: the audio is probably cut short
    clip_level: float = 0.999  # |sample| at or above this counts as clipped (full scale is 1.0)
    max_clipped_fraction: float = 0.001  # warn when more than 0.1% of samples are clipped
    silence_dbfs: float = -50.0  # warn when the clip's RMS level is below this
    max_tokens_per_char: float = 1.0  # warn for a script the tokenizer splits below character level
    decode: bool = True  # decode samples for the content checks; False reads headers only
    workers: int = 0  # processes for decoding; 0 = one per CPU core


@dataclass
class AudioProbe:
    error: tuple[str, str] | None = None  # (code, message) when the file cannot be used
    duration: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    clipped_fraction: float | None = None  # None when samples were not decoded
    rms_dbfs: float | None = None
    content_hash: str | None = None


@dataclass
class ValidationReport:
    source: str
    format: str
    items: list[Item]
    problems: list[Problem]
    summary: dict = field(default_factory=dict)
    item_problems: list[list[Problem]] = field(default_factory=list)  # per item, same order

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "ok": not self.errors,
            "summary": self.summary,
            "problems": [asdict(p) for p in self.problems],
        }


def probe_audio(path: str, config: ValidationConfig) -> AudioProbe:
    """Header, then (optionally) a full decode for the content checks. Never raises."""
    try:
        info = audio_info(path)
    except AudioError as e:
        code = "missing_audio" if not os.path.exists(path) else "unreadable_audio"
        return AudioProbe(error=(code, str(e)))
    probe = AudioProbe(duration=info.duration, sample_rate=info.sample_rate, channels=info.channels)
    if info.frames == 0:
        probe.error = ("empty_audio", f"{path}: audio has zero samples")
        return probe
    if not config.decode:
        return probe
    try:
        samples, _ = read_audio(path)  # (frames, channels)
    except AudioError as e:
        probe.error = ("unreadable_audio", str(e))
        return probe
    if samples.size == 0:
        probe.error = ("empty_audio", f"{path}: audio has zero samples")
        return probe
    probe.duration = samples.shape[0] / info.sample_rate  # headers of some formats only estimate it
    probe.clipped_fraction = float(np.mean(np.abs(samples) >= config.clip_level))
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    probe.rms_dbfs = 20 * math.log10(max(rms, 1e-10))
    probe.content_hash = hashlib.blake2b(np.ascontiguousarray(samples).tobytes(), digest_size=16).hexdigest()
    return probe


@dataclass(frozen=True)
class SequenceLimit:
    """How long a model's training sequences may be, and how long an item's is."""

    max_len: int  # the model's max_seq_len: its position table ends there
    frames: Callable[[float], int]  # seconds of audio -> codec frames
    length: Callable[..., int]  # (transcript, codec frames[, reference frames]) -> positions of the sequence
    reference: bool = False  # the sequence starts with the item's ref_audio (VoxCPM2): count it too


def sequence_limit(family: ModelFamily) -> SequenceLimit:
    """The limit of a model family: its max_seq_len, its codec's frames, and its own training sequence, so the
    count is the one training will see."""
    return SequenceLimit(family.max_seq_len, family.frames_for_seconds, family.sequence_length,
                         family.trains_with_reference)  # fmt: skip


def reference_seconds(path: str) -> float:
    """A reference clip's duration from its header (0 when unreadable: its encoding reports that clip)."""
    try:
        return audio_info(path).duration
    except AudioError:
        return 0.0


def _probe_star(args: tuple[str, ValidationConfig]) -> AudioProbe:
    return probe_audio(*args)


def probe_all(paths: list[str], config: ValidationConfig) -> list[AudioProbe]:
    workers = config.workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < 64:  # a pool costs more than it saves on a handful of files
        return [probe_audio(p, config) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_probe_star, [(p, config) for p in paths], chunksize=32))


def located(item: Item) -> str:
    """How a message names another item: the row it was read from when known, else its audio."""
    return str(item.origin) if item.origin else item.audio


def check_items(
    items: list[Item], config: ValidationConfig, encoder: Encoder | None = None, limit: SequenceLimit | None = None
) -> tuple[list[Problem], list[AudioProbe], list[list[Problem]]]:
    """Every per-item and cross-item check. Fills duration/sample_rate/channels from the audio; with a
    `limit`, also checks each item's training sequence against the model's max_seq_len.

    Returns all problems, the audio probes, and the problems of each item (same order as items).
    """
    problems: list[Problem] = []
    per_item: list[list[Problem]] = [[] for _ in items]
    index_of = {id(item): k for k, item in enumerate(items)}

    def add(severity: str, code: str, item: Item, message: str) -> None:
        problem = Problem(severity, code, message, path=item.audio, item_id=item.id, origin=item.origin)
        problems.append(problem)
        per_item[index_of[id(item)]].append(problem)

    first_with_id: dict[str, Item] = {}
    for item in items:
        if item.id in first_with_id:
            add(
                "error",
                "duplicate_id",
                item,
                f"id {item.id!r} is also used by {located(first_with_id[item.id])}",
            )
        else:
            first_with_id[item.id] = item
        if item.ref_audio and not os.path.isfile(item.ref_audio):
            add("error", "missing_ref_audio", item, f"reference clip {item.ref_audio} not found")
        if not item.text.strip():
            add("error", "empty_text", item, "transcript is empty or only whitespace")
        elif "\ufffd" in item.text:
            add("error", "text_not_utf8", item, "transcript is not valid UTF-8 (bad bytes shown as U+FFFD)")

    probes = probe_all([item.audio for item in items], config)
    first_with_hash: dict[str, Item] = {}
    for item, probe in zip(items, probes):
        if probe.error:
            add("error", probe.error[0], item, probe.error[1].removeprefix(f"{item.audio}: "))
            continue
        item.duration, item.sample_rate, item.channels = probe.duration, probe.sample_rate, probe.channels
        if probe.duration < config.min_duration:
            add(
                "warning",
                "too_short",
                item,
                f"{probe.duration:.2f} s is shorter than {config.min_duration} s",
            )
        if probe.duration > config.max_duration:
            add("warning", "too_long", item, f"{probe.duration:.1f} s is longer than {config.max_duration} s")
        if limit is not None:
            frames = limit.frames(probe.duration)
            positions = limit.length(item.text, frames)
            if limit.reference and item.ref_audio and os.path.isfile(item.ref_audio):
                positions = limit.length(item.text, frames, limit.frames(reference_seconds(item.ref_audio)))
            if positions > limit.max_len:
                add(
                    "error",
                    "too_long_for_model",
                    item,
                    f"its training sequence is {positions} tokens ({frames} codec frames for {probe.duration:.1f} s "
                    f"of audio, {positions - frames} text and special tokens), more than the model's max_seq_len "
                    f"{limit.max_len}: training would stop with a shape error. Split the clip, or leave the item out",
                )
        if probe.sample_rate < config.sample_rate:
            add(
                "warning",
                "low_sample_rate",
                item,
                f"{probe.sample_rate} Hz is below the model's {config.sample_rate} Hz; it will be upsampled",
            )
        if probe.channels > 1:
            add("warning", "multichannel", item, f"{probe.channels} channels; they will be averaged to mono")
        if probe.clipped_fraction is not None and probe.clipped_fraction > config.max_clipped_fraction:
            add("warning", "clipping", item, f"{probe.clipped_fraction:.2%} of samples are clipped")
        if probe.rms_dbfs is not None and probe.rms_dbfs < config.silence_dbfs:
            add(
                "warning",
                "near_silence",
                item,
                f"level {probe.rms_dbfs:.0f} dBFS is below {config.silence_dbfs:.0f} dBFS: (almost) silent",
            )
        chars = sum(not c.isspace() for c in item.text)
        cps = chars / probe.duration
        if chars and not config.min_chars_per_second <= cps <= config.max_chars_per_second:
            add(
                "warning",
                "text_audio_mismatch",
                item,
                f"{cps:.1f} characters per second is outside {config.min_chars_per_second}-"
                f"{config.max_chars_per_second}: transcript and audio length do not match",
            )
        if probe.content_hash:
            if probe.content_hash in first_with_hash:
                first = first_with_hash[probe.content_hash]
                read_from = f" ({first.origin})" if first.origin else ""
                add("warning", "duplicate_audio", item, f"same audio samples as {first.audio}{read_from}")
            else:
                first_with_hash[probe.content_hash] = item

    if encoder is not None:
        for row in coverage_by_script((i.text for i in items), encoder):
            if row.tokens_per_char > config.max_tokens_per_char:
                problems.append(
                    Problem(
                        "warning",
                        "tokenizer_coverage",
                        f"{row.script} script: {row.tokens_per_char:.2f} tokens per character over "
                        f"{row.characters} characters (e.g. {row.examples}); the tokenizer knows this script "
                        "poorly, so sequences get long and text is learned from bytes",
                    )
                )
    return problems, probes, per_item


def summarize(items: list[Item], probes: list[AudioProbe], encoder: Encoder | None = None) -> dict:
    ok = [(i, p) for i, p in zip(items, probes) if not p.error]
    minutes: dict[str, float] = defaultdict(float)
    for item, probe in ok:
        minutes[item.speaker] += probe.duration / 60
    edges = DURATION_BUCKETS
    labels = [f"{a:g}-{b:g}s" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]:g}s"]
    histogram = dict.fromkeys(labels, 0)
    for _, probe in ok:
        k = sum(probe.duration >= e for e in edges[1:])
        histogram[labels[k]] += 1
    summary = {
        "items": len(items),
        "readable_items": len(ok),
        "total_hours": round(sum(p.duration for _, p in ok) / 3600, 4),
        "speakers": len({i.speaker for i in items}),
        "minutes_per_speaker": {s: round(m, 2) for s, m in sorted(minutes.items(), key=lambda kv: -kv[1])},
        "sample_rates": dict(sorted(Counter(p.sample_rate for _, p in ok).items())),
        "duration_histogram": histogram,
        "splits": dict(Counter(i.split or "unassigned" for i in items)),
        "items_with_codes": sum(bool(i.codes) for i in items),
    }
    if encoder is not None:
        summary["tokens_per_char_by_script"] = {
            r.script: round(r.tokens_per_char, 3) for r in coverage_by_script((i.text for i in items), encoder)
        }
    return summary


def invalid_indices(item_problems: list[list[Problem]], also_drop: tuple[str, ...] = ()) -> list[int]:
    """Indices of items with an error, or with a warning whose code is in `also_drop`."""
    return [
        k for k, found in enumerate(item_problems) if any(p.severity == "error" or p.code in also_drop for p in found)
    ]


def validate_items(
    items: list[Item],
    config: ValidationConfig | None = None,
    encoder: Encoder | None = None,
    *,
    source: str = "",
    fmt: str = "manifest",
    earlier_problems: list[Problem] | None = None,
    family: ModelFamily | None = None,
) -> ValidationReport:
    """Run every check on `items`; `earlier_problems` (from ingest) are reported first. With the model
    `family` (tts_lib.models.load_family), items too long for the model are errors (too_long_for_model)."""
    config = config or ValidationConfig()
    limit = None
    if family is not None:  # the model's own codec rate and sequence limit
        config = dataclasses.replace(config, sample_rate=family.sample_rate)
        limit = sequence_limit(family)
    problems, probes, per_item = check_items(items, config, encoder, limit)
    earlier = earlier_problems or []
    # Ingest already named the file and line of bad UTF-8; keep its message, not a second one.
    seen = {(p.code, p.item_id) for p in earlier if p.item_id}
    problems = earlier + [p for p in problems if (p.code, p.item_id) not in seen]
    report = ValidationReport(source, fmt, items, problems, summarize(items, probes, encoder), per_item)
    report.summary["errors"] = len(report.errors)
    report.summary["warnings"] = len(report.warnings)
    return report


def validate_path(
    path: str | os.PathLike,
    config: ValidationConfig | None = None,
    encoder: Encoder | None = None,
    family: ModelFamily | None = None,
    **ingest_options,
) -> ValidationReport:
    """Ingest `path` in any supported format, then validate it (against the model `family`, when given)."""
    return validate_ingested(ingest(path, **ingest_options), config, encoder, family)


def validate_ingested(
    result, config: ValidationConfig | None = None, encoder: Encoder | None = None, family: ModelFamily | None = None
) -> ValidationReport:
    """Validate what `ingest` found, its own problems (unreadable rows, missing files) included. With the model
    `family`, the text is also measured with its tokenizer (unless `encoder` says otherwise)."""
    if encoder is None and family is not None:
        encoder = family.text_encoder()
    return validate_items(
        result.items,
        config,
        encoder,
        source=str(result.source),
        fmt=result.format,
        earlier_problems=result.problems,
        family=family,
    )
