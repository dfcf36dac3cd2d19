"""Prepare a dataset for training: ingest, held-out split, validation, manifest on disk.

The one path the demo, the notebook and the trainer take, so they all see the same data. The run
folder gets `manifest.jsonl` (every item, with its split) and `validation.json` (the report).
Re-preparing into the same folder keeps every earlier split assignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tts_lib.common.fileio import atomic_write_json
from tts_lib.data.ingest import ingest
from tts_lib.data.manifest import read_manifest, write_manifest
from tts_lib.data.split import SplitConfig, SplitSummary, assign_splits
from tts_lib.data.text_coverage import Encoder
from tts_lib.data.validate import ValidationConfig, ValidationReport, validate_ingested
from tts_lib.models import ModelFamily


@dataclass
class PreparedData:
    manifest: Path  # every item with its split
    report: ValidationReport
    split: SplitSummary


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    validation: ValidationConfig | None = None,
    split: SplitConfig | None = None,
    encoder: Encoder | None = None,
    parent_manifest: str | Path | None = None,
    family: ModelFamily | None = None,
    **ingest_options,
) -> PreparedData:
    """Ingest, split and validate `source` into `out_dir/manifest.jsonl` + `validation.json`.

    Splits are sticky: items keep the split they had in `out_dir`'s earlier manifest, or else in
    `parent_manifest` (an earlier version's), so what was held out stays held out. With the model
    `family`, items whose training sequence is longer than the model takes are errors."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.jsonl"
    result = ingest(source, **ingest_options)
    previous = {}
    for earlier in (parent_manifest, manifest):  # the run's own manifest wins over the parent's
        if earlier is not None and Path(earlier).exists():
            previous.update({i.id: i.split for i in read_manifest(earlier) if i.split})
    split_summary = assign_splits(result.items, split, previous)
    report = validate_ingested(result, validation, encoder, family)
    write_manifest(manifest, result.items)
    atomic_write_json(out_dir / "validation.json", report.to_json())
    return PreparedData(manifest, report, split_summary)
