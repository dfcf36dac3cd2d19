"""Deterministic held-out split, stratified by speaker and stable when data is appended.

Each item gets a score in [0, 1) from a hash of its id, so the score never depends on the other
items. An item goes to validation when its score is below `val_fraction`; a speaker with no
validation item gets its lowest-scoring one; the total is capped at `max_val_items` (lowest scores
win). Items that already carry a split (a re-ingest with `--update`, or the parent version's
manifest in incremental training) keep it, always: incremental training measures forgetting on
the parent's validation items, so they must never leak into training.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from tts_lib.data.manifest import Item


@dataclass
class SplitConfig:
    val_fraction: float = 0.05  # share of each speaker's items held out for validation
    min_val_per_speaker: int = 1  # a speaker with at least 2 items always has this many held out
    max_val_items: int = 200  # cap on new validation items; validation time stays bounded


@dataclass
class SplitSummary:
    kept: int = 0  # items whose existing split was kept
    new_train: int = 0
    new_val: int = 0
    val_per_speaker: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. speakers too small to hold any out


def split_score(item_id: str) -> float:
    """A uniform number in [0, 1) that depends only on the item's id."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    items: list[Item], config: SplitConfig | None = None, previous: dict[str, str] | None = None
) -> SplitSummary:
    """Set `item.split` in place for every item that has none; return what was done.

    `previous` maps item id -> split from an earlier manifest; those assignments are kept too.
    """
    config = config or SplitConfig()
    previous = previous or {}
    summary = SplitSummary()
    by_speaker: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.split is None and item.id in previous:
            item.split = previous[item.id]
        if item.split is not None:
            summary.kept += 1
        by_speaker[item.speaker].append(item)

    mandatory: list[Item] = []  # lowest-scoring new items that give each speaker its minimum
    by_threshold: list[Item] = []
    for speaker, group in sorted(by_speaker.items()):
        new = sorted((i for i in group if i.split is None), key=lambda i: split_score(i.id))
        if len(group) < 2:
            if new:
                summary.notes.append(f"speaker {speaker!r} has 1 item: kept for training, none held out")
            continue
        have = sum(i.split == "val" for i in group)
        need = max(0, config.min_val_per_speaker - have)
        mandatory += new[:need]
        by_threshold += [i for i in new[need:] if split_score(i.id) < config.val_fraction]

    budget = config.max_val_items
    chosen = (
        mandatory[:budget] + sorted(by_threshold, key=lambda i: split_score(i.id))[: max(0, budget - len(mandatory))]
    )
    if len(mandatory) > budget:
        summary.notes.append(
            f"{len(mandatory)} speakers need a validation item but max_val_items is {budget}: "
            f"{len(mandatory) - budget} speakers get none"
        )
    chosen_ids = {id(i) for i in chosen}
    for item in items:
        if item.split is None:
            item.split = "val" if id(item) in chosen_ids else "train"
            summary.new_val += item.split == "val"
            summary.new_train += item.split == "train"
    for item in items:
        if item.split == "val":
            summary.val_per_speaker[item.speaker] = summary.val_per_speaker.get(item.speaker, 0) + 1
    return summary
