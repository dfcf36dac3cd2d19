"""Version lineage: metadata files, listing, ancestry, the current pointer, comparison and the versions CLI."""

import json

import pytest

from tts_lib.cli import main
from tts_lib.versions import lineage


def meta(name: str, number: int, parent: str | None = None, project=None, **extra) -> dict:
    m = {
        "version": name,
        "number": number,
        "parent": None if parent is None else {"version": parent, "folder": str(project / parent), "checkpoint": "x"},
        "mode": "quick_lora",
        "base_model": {"id": "fishaudio/openaudio-s1-mini", "hash": "abc"},
        "dataset_fingerprint": f"fp{number}",
        "samples": {"new": 10, "total": 10 * number},
        "hours": {"new": 0.5, "total": 0.5 * number},
        "steps": 100 * number,
        "hyperparameters": {"lr": 1e-4, "r": 8},
        "best_val": {"val_codebook_loss": 3.0 - 0.5 * number},
        "wall_time_s": 60.0,
        "cost": {"gpu": "A100-80GB", "estimated_usd": 0.5, "actual_usd": 0.42, "estimated_hours": 0.3},
        "created_at": f"2025-06-0{number}T10:00:00+00:00",
        "outputs": {"adapter_dir": "adapter"},
    }
    m.update(extra)
    return m


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "runs"
    lineage.write_metadata(p / "fi-v1", meta("fi-v1", 1))
    lineage.write_metadata(p / "fi-v2", meta("fi-v2", 2, "fi-v1", p, hyperparameters={"lr": 5e-5, "r": 8}))
    lineage.write_metadata(p / "fi-v3", meta("fi-v3", 3, "fi-v2", p, note="kept"))
    (p / "not-a-version").mkdir()
    return p


def test_write_then_read_keeps_extra_keys(project):
    m = lineage.read_metadata(project / "fi-v3")
    assert m == meta("fi-v3", 3, "fi-v2", project, note="kept")
    assert not list(project.glob("fi-v3/.*.tmp"))  # atomic write leaves no temporary file


def test_write_rejects_missing_keys_and_wrong_names(tmp_path):
    m = meta("v1", 1)
    del m["created_at"]
    with pytest.raises(ValueError, match=r"metadata.json: metadata lacks required keys \['created_at'\]"):
        lineage.write_metadata(tmp_path / "v1", m)
    with pytest.raises(ValueError, match="folder is named 'other'"):
        lineage.write_metadata(tmp_path / "other", meta("v1", 1))
    with pytest.raises(ValueError, match="mode must be one of"):
        lineage.write_metadata(tmp_path / "v1", meta("v1", 1, mode="lora"))
    with pytest.raises(ValueError, match="number must be an int"):
        lineage.write_metadata(tmp_path / "v1", meta("v1", 0))
    assert not (tmp_path / "v1" / "metadata.json").exists()


def test_read_names_the_file_when_missing_or_invalid(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json not found"):
        lineage.read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metadata.json: expected a JSON object, found invalid JSON"):
        lineage.read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("[1]")
    with pytest.raises(ValueError, match="found list"):
        lineage.read_metadata(tmp_path)


def test_list_and_next_number(project, tmp_path):
    # written out of order on disk: listing sorts by number, not by name
    lineage.write_metadata(project / "a-late", meta("a-late", 10))
    versions = lineage.list_versions(project)
    assert [v["version"] for v in versions] == ["fi-v1", "fi-v2", "fi-v3", "a-late"]
    assert versions[0]["folder"] == str(project / "fi-v1")
    assert lineage.next_version_number(project) == 11
    assert lineage.next_version_number(tmp_path / "absent") == 1
    (tmp_path / "empty").mkdir()
    assert lineage.next_version_number(tmp_path / "empty") == 1
    with pytest.raises(FileNotFoundError, match="project folder .*absent not found"):
        lineage.list_versions(tmp_path / "absent")


def test_resolve_by_name_or_path_and_list_available_when_missing(project):
    assert lineage.resolve_version(project, "fi-v2") == project / "fi-v2"
    assert lineage.resolve_version("elsewhere", project / "fi-v2") == project / "fi-v2"
    with pytest.raises(FileNotFoundError, match="'fi-v9' not found.*available versions.*fi-v1, fi-v2, fi-v3"):
        lineage.resolve_version(project, "fi-v9")


def test_ancestry_root_first_and_missing_parent(project):
    assert [m["version"] for m in lineage.ancestry(project, "fi-v3")] == ["fi-v1", "fi-v2", "fi-v3"]
    assert [m["version"] for m in lineage.ancestry(project, "fi-v1")] == ["fi-v1"]
    lineage.write_metadata(project / "orphan", meta("orphan", 4, "gone", project))
    with pytest.raises(FileNotFoundError, match="parent version 'gone' not found"):
        lineage.ancestry(project, "orphan")


def test_ancestry_falls_back_to_the_name_when_the_project_moved(project, tmp_path):
    moved = tmp_path / "moved"
    project.rename(moved)  # recorded parent folders now point nowhere
    assert [m["version"] for m in lineage.ancestry(moved, "fi-v3")] == ["fi-v1", "fi-v2", "fi-v3"]


def test_current_is_highest_until_rollback_and_nothing_is_deleted(project, tmp_path):
    assert lineage.current_version(project) == "fi-v3"
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    assert lineage.rollback(project, "fi-v1") == project / "fi-v1"
    assert json.loads((project / "current.json").read_text())["version"] == "fi-v1"
    assert lineage.current_version(project) == "fi-v1"
    after = sorted(p.relative_to(project) for p in project.rglob("*"))
    assert set(before) <= set(after)  # rollback only adds current.json
    with pytest.raises(FileNotFoundError, match="available versions"):
        lineage.rollback(project, "fi-v7")
    assert lineage.current_version(project) == "fi-v1"
    assert lineage.current_version(tmp_path / "absent") is None
    assert not hasattr(lineage, "delete_version")


def test_compare_flattens_with_dotted_keys(project):
    a, b = lineage.read_metadata(project / "fi-v1"), lineage.read_metadata(project / "fi-v2")
    rows = {k: (va, vb) for k, va, vb in lineage.compare_versions(a, b)}
    assert rows["hyperparameters.lr"] == (1e-4, 5e-5)
    assert rows["best_val.val_codebook_loss"] == (2.5, 2.0)
    assert rows["parent.version"] == (None, "fi-v1")
    assert "hyperparameters.r" not in rows and "mode" not in rows
    assert lineage.compare_versions(a, a) == []
    text = lineage.format_comparison(lineage.compare_versions(a, b), "fi-v1", "fi-v2")
    assert "hyperparameters.lr" in text and "5e-05" in text
    assert "identical" in lineage.format_comparison([], "x", "y")


def test_versions_table_marks_current(project):
    text = lineage.format_versions_table(lineage.list_versions(project), "fi-v2")
    lines = text.splitlines()
    v2 = next(line for line in lines if "fi-v2" in line and line.startswith("*"))
    assert "fi-v1" in v2 and "quick_lora" in v2 and "200" in v2 and "1.00" in v2
    assert "$0.42" in v2 and "2025-06-02" in v2
    assert not any(line.startswith("*") for line in lines if "fi-v3" in line)
    assert lineage.format_versions_table([], None) == "no versions yet"


def test_versions_cli(project, capsys):
    assert main(["versions", "--project", str(project)]) == 0
    assert "fi-v3" in capsys.readouterr().out
    assert main(["versions", "compare", "fi-v1", "fi-v2", "--project", str(project)]) == 0
    assert "hyperparameters.lr" in capsys.readouterr().out
    assert main(["versions", "rollback", "fi-v2", "--project", str(project)]) == 0
    assert lineage.current_version(project) == "fi-v2"
    assert main(["versions", "--project", str(project), "list"]) == 0
    assert any(line.startswith("*") and "fi-v2" in line for line in capsys.readouterr().out.splitlines())
    assert main(["versions", "rollback", "nope", "--project", str(project)]) == 2
    assert "available versions" in capsys.readouterr().err


def test_the_versions_table_heads_the_best_column_with_the_families_metric():
    def version(n, best):
        return {"version": f"v{n}", "number": n, "mode": "full", "created_at": "2026-01-01T00:00", "best_val": best}

    mixed = [version(1, {"val_codebook_loss": 2.5}), version(2, {"val_diff_loss": 0.25})]
    one = lineage.format_versions_table(mixed, "v2")
    assert "best val" in one.splitlines()[0] and "val_diff_loss 0.25" in one
    same = lineage.format_versions_table([version(1, {"val_diff_loss": 0.5, "language_val_diff_loss": 0.75})], "v1")
    assert "val_diff_loss" in same.splitlines()[0] and "language" not in same
