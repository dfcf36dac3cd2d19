"""Did the new version forget what its parent knew? run_plan calls this after export for incremental runs:

    report = check_forgetting(plan.start, out / "merged", plan.items, margin=0.05, max_tokens=4096)
    print(format_forgetting(report))

Both models (the one training started from: the parent's merged model, or its base plus the adapter
a LoRA-on-LoRA run continued; and the new exported model) are scored with tts_lib.training.train.evaluate on
(a) the parent's held-out items and (b) the new held-out items (validation items the parent never
saw). The verdict is on (a)'s validation codebook loss: the new model is flagged when it is worse
than the parent's by more than `margin` (relative), the sign that new data pushed old skills out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from tts_lib.data.manifest import Item, read_manifest
from tts_lib.models import load_family
from tts_lib.training.train import choose_precision, evaluate, load_samples


def model_losses(
    weights: Path, adapter: Path | None, item_sets: list[list[Item]], max_tokens: int, precision: str = "auto"
) -> list[dict | None]:
    """evaluate()'s loss components of the model in `weights` (with `adapter` on top), one dict per item
    set (None for an empty set); the model is loaded once."""
    if not any(item_sets):
        return [None] * len(item_sets)
    from tts_lib.training.adapters import load_adapted

    family = load_family(weights)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype, _ = choose_precision(precision, device)
    model = family.load_model(device=device, dtype=torch.float32)
    if adapter is not None:
        model = load_adapted(model, adapter)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    return [evaluate(model, family, load_samples(family, s), max_tokens, autocast) if s else None for s in item_sets]


def split_items(items: list[Item], parent_manifest: Path) -> tuple[list[Item], list[Item]]:
    """(the parent's held-out items, held-out items the parent never saw), from this run's items (with codes)."""
    parent = {i.id: i.split for i in read_manifest(parent_manifest)}
    val = [i for i in items if i.split == "val" and i.codes]
    return [i for i in val if parent.get(i.id) == "val"], [i for i in val if i.id not in parent]


def compare(before: dict | None, after: dict | None, n: int, metric: str) -> dict:
    """{"before", "after", "change"} of `metric` (the family's selection metric), the full components, and the
    number of items."""
    if before is None or after is None:
        return {"before": None, "after": None, "change": None, "items": n, "components": None}
    return {"before": before[metric], "after": after[metric], "change": after[metric] - before[metric], "items": n,
            "components": {"before": before, "after": after}}  # fmt: skip


def forgetting_report(old: dict, new: dict, margin: float, metric: str) -> dict:
    """The verdict from the two comparisons (see the module docstring)."""
    flagged = old["change"] is not None and old["change"] > margin * abs(old["before"])
    if old["change"] is None:
        note = "the parent has no held-out items here: forgetting was not measured"
    elif flagged:
        note = (f"{metric} on the parent's held-out items rose {old['change'] / abs(old['before']):+.1%} "
                f"(over the {margin:.0%} margin): the new version forgot some of what the parent knew; "
                "try fewer steps or a lower learning rate, or mix more of the old data in")  # fmt: skip
    else:
        note = f"{metric} on the parent's held-out items stayed within {margin:.0%} of the parent's"
    if new["change"] is None:
        note += "; no new held-out items (all validation items were the parent's), so no new-data comparison"
    return {"metric": metric, "old_data": old, "new_data": new, "margin": margin, "flagged": flagged, "note": note}


def check_forgetting(start, merged: Path, items: list[Item], margin: float, max_tokens: int, precision="auto"):
    """The report for an incremental run (parents.Start with a parent manifest), else None."""
    if start.parent is None or start.manifest is None or not Path(start.manifest).is_file():
        return None
    old_items, new_items = split_items(items, Path(start.manifest))
    before = model_losses(start.weights, start.init_adapter, [old_items, new_items], max_tokens, precision)
    after = model_losses(merged, None, [old_items, new_items], max_tokens, precision)
    metric = load_family(merged).selection_metric  # what training calls better
    old = compare(before[0], after[0], len(old_items), metric)
    new = compare(before[1], after[1], len(new_items), metric)
    return forgetting_report(old, new, margin, metric)


def format_forgetting(report: dict | None) -> str:
    """A few lines for the log and the notebook."""
    if report is None:
        return "forgetting check: not an incremental run (no parent with a manifest)"
    lines = [f"forgetting check ({report['metric']}, parent -> new version, lower is better):"]
    for key, label in (("old_data", "parent's held-out items"), ("new_data", "new held-out items")):
        r = report[key]
        if r["change"] is None:
            lines.append(f"  {label}: none")
        else:
            lines.append(f"  {label} ({r['items']}): {r['before']:.4f} -> {r['after']:.4f} ({r['change']:+.4f})")
    lines.append(("  FLAGGED: " if report["flagged"] else "  ok: ") + report["note"])
    return "\n".join(lines)
