"""Show a validation report to a person, and write the cleaned manifest when asked to drop items.

    python -m tts_lib validate PATH [--json] [--drop-invalid CLEAN.jsonl]

A problem about an item read from a table is shown at the row it came from, where the user fixes
it: `/data/metadata.csv line 12 (id LJ001-0042, audio wavs/LJ001-0042.wav): audio file not found`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from tts_lib.common.fileio import atomic_write_lines, refuse_overwrite
from tts_lib.data.manifest import Origin, Problem, item_row, write_manifest
from tts_lib.data.validate import ValidationReport, invalid_indices


def location(p: Problem) -> str | None:
    """Where `p` is: the row its item was read from (with the item's id and audio), else its file."""
    # Ingest's own problems (a malformed row, bad bytes) are about the table file itself and already
    # name the line in their message, as `python -m tts_lib ingest` prints them: path: message.
    if p.origin is None or p.item_id is None or p.path in (None, p.origin.file):
        return p.path
    audio = Path(p.path)
    try:  # as the row names it, roughly: relative to the table's folder
        audio = audio.relative_to(Path(p.origin.file).parent)
    except ValueError:
        pass
    return f"{p.origin} (id {p.item_id}, audio {audio.as_posix()})"


def origin_json(origin: Origin | None) -> dict | None:
    return asdict(origin) if origin else None


def format_report(report: ValidationReport, max_per_code: int | None = None) -> str:
    """A readable summary and every problem (or the first `max_per_code` of each kind)."""
    s = report.summary
    items_per_speaker = Counter(i.speaker for i in report.items)
    lines = [
        f"Dataset: {report.source} ({report.format})",
        f"  items          {s['items']} ({s['readable_items']} readable)",
        f"  total audio    {s['total_hours']:.3f} h ({s['total_hours'] * 60:.1f} min)",
        f"  speakers       {s['speakers']}",
    ]
    for speaker, minutes in s["minutes_per_speaker"].items():
        lines.append(f"    {speaker:<20} {minutes:8.2f} min  {items_per_speaker[speaker]:6d} items")
    rates = ", ".join(f"{rate} Hz: {n}" for rate, n in s["sample_rates"].items())
    lines.append(f"  sample rates   {rates or '-'}")
    histogram = " | ".join(f"{k}: {n}" for k, n in s["duration_histogram"].items() if n)
    lines.append(f"  durations      {histogram or '-'}")
    lines.append("  splits         " + ", ".join(f"{k} {n}" for k, n in sorted(s["splits"].items())))
    if s["items_with_codes"]:
        lines.append(f"  with codes     {s['items_with_codes']} items have pre-extracted codes (.npy)")
    if "tokens_per_char_by_script" in s:
        per_script = ", ".join(f"{k} {v:.2f}" for k, v in s["tokens_per_char_by_script"].items())
        lines.append(f"  tokens/char    {per_script}")

    lines.append(f"Problems: {len(report.errors)} errors, {len(report.warnings)} warnings")
    by_code: dict[tuple[str, str], list[Problem]] = defaultdict(list)
    for p in report.problems:
        by_code[(p.severity, p.code)].append(p)
    for (severity, code), group in sorted(by_code.items(), key=lambda kv: (kv[0][0] != "error", kv[0][1])):
        lines.append(f"  {severity} {code} ({len(group)})")
        shown = group if max_per_code is None else group[:max_per_code]
        for p in shown:
            where = location(p)
            lines.append(f"    {where}: {p.message}" if where else f"    {p.message}")
        if len(shown) < len(group):
            lines.append(f"    ... and {len(group) - len(shown)} more (--json lists all)")
    verdict = "OK: no errors" if not report.errors else f"FAILED: {len(report.errors)} errors"
    lines.append(f"Result: {verdict}")
    return "\n".join(lines)


def report_json(report: ValidationReport) -> str:
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False)


def write_cleaned(
    report: ValidationReport, out: str | Path, also_drop: tuple[str, ...] = (), overwrite: bool = False
) -> tuple[Path, Path, int]:
    """Write the items without errors to `out` and what was dropped, with why, beside it.

    Returns (cleaned manifest, dropped list, number dropped). The dropped list also names files
    that never became items (an audio file with no transcript, a malformed row). Each entry has
    the origin (file, line or row) it was read from, or null where there is none.
    """
    out = Path(out)
    dropped_path = out.with_name(out.stem + ".dropped.jsonl")
    if not overwrite:
        refuse_overwrite(out)
        refuse_overwrite(dropped_path)
    bad = set(invalid_indices(report.item_problems, also_drop))
    rows = []
    for k in sorted(bad):
        reasons = [
            f"{p.code}: {p.message}" for p in report.item_problems[k] if p.severity == "error" or p.code in also_drop
        ]
        item = report.items[k]
        row = {"item": item_row(item), "origin": origin_json(item.origin), "reasons": reasons}
        rows.append(json.dumps(row, ensure_ascii=False))
    for p in report.problems:  # problems of files that never became an item
        if p.item_id is None and p.severity == "error":
            row = {"path": p.path, "origin": origin_json(p.origin), "reasons": [f"{p.code}: {p.message}"]}
            rows.append(json.dumps(row, ensure_ascii=False))
    write_manifest(out, [item for k, item in enumerate(report.items) if k not in bad])
    atomic_write_lines(dropped_path, rows)
    return out, dropped_path, len(rows)
