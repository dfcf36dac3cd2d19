"""The forgetting check on tiny models with known answers: the same model before and after changes
nothing; heavily perturbed weights score worse on the old held-out items and are flagged."""

import shutil

import torch

from tts_lib.data.manifest import read_manifest, write_manifest
from tts_lib.listening.forgetting import check_forgetting, forgetting_report, format_forgetting, split_items
from tts_lib.versions.parents import Start


def parent_and_items(prepared, tmp_path):
    """A parent manifest holding half of the held-out items, and this run's items (all of them)."""
    base, manifest = prepared
    items = read_manifest(manifest)
    val = [i for i in items if i.split == "val"]
    assert len(val) >= 2
    parent = write_manifest(tmp_path / "parent.jsonl", [i for i in items if i not in val[len(val) // 2 :]])
    return base, parent, items


def test_same_model_before_and_after_changes_nothing(prepared, tmp_path):
    base, parent, items = parent_and_items(prepared, tmp_path)
    old, new = split_items(items, parent)
    assert old and new and not {i.id for i in old} & {i.id for i in new}
    start = Start("version", base, parent={"version": "v1"}, manifest=parent)
    report = check_forgetting(start, base, items, margin=0.05, max_tokens=512)
    assert report["old_data"]["before"] > 0 and report["old_data"]["change"] == 0
    assert report["new_data"]["change"] == 0 and report["new_data"]["items"] == len(new)
    assert not report["flagged"] and "ok:" in format_forgetting(report)
    assert check_forgetting(Start("base", base), base, items, 0.05, 512) is None  # not incremental


def test_heavily_perturbed_weights_are_worse_and_flagged(prepared, tmp_path):
    base, parent, items = parent_and_items(prepared, tmp_path)
    worse = tmp_path / "worse"
    shutil.copytree(base, worse)
    state = torch.load(worse / "model.pth", map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    state = {k: v + torch.randn(v.shape, generator=g) * 2.0 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, worse / "model.pth")
    start = Start("version", base, parent={"version": "v1"}, manifest=parent)
    report = check_forgetting(start, worse, items, margin=0.05, max_tokens=512)
    assert report["old_data"]["after"] > report["old_data"]["before"] * 1.05
    assert report["flagged"] and "FLAGGED" in format_forgetting(report)


def test_no_new_held_out_items_is_said():
    old = {"before": 2.0, "after": 2.05, "change": 0.05, "items": 3, "components": None}
    none = {"before": None, "after": None, "change": None, "items": 0, "components": None}
    report = forgetting_report(old, none, margin=0.05, metric="val_codebook_loss")
    assert not report["flagged"] and "no new held-out items" in report["note"]
    assert "new held-out items: none" in format_forgetting(report)
    risen = {**old, "after": 2.2, "change": 0.2}
    assert forgetting_report(risen, none, margin=0.05, metric="val_codebook_loss")["flagged"]
