import json

import pytest
from conftest import write_audio

from tts_lib.data.manifest import Item, Origin, read_manifest
from tts_lib.data.validate import ValidationConfig, validate_items, validate_path
from tts_lib.data.validation_report import format_report, report_json, write_cleaned


@pytest.fixture
def report(tmp_path):
    items = [
        Item("a/1", str(write_audio(tmp_path / "a1.wav", 1.5, seed=1)), "Hyvää huomenta", "a"),
        Item("a/2", str(tmp_path / "gone.wav"), "Hyvää iltaa", "a"),
        Item("b/1", str(write_audio(tmp_path / "b1.wav", 2.5, seed=2)), "Tämä on pitkä lause", "b"),
        Item("b/2", str(write_audio(tmp_path / "b2.wav", 1.2, seed=3)), " ", "b"),
    ]
    return validate_items(items, ValidationConfig(max_duration=2.0), source="somewhere", fmt="fish")


def test_text_report_lists_summary_and_every_problem(report):
    text = format_report(report)
    assert "Dataset: somewhere (fish)" in text
    assert "items          4 (3 readable)" in text
    assert "Problems: 2 errors, 1 warnings" in text
    assert "error missing_audio (1)" in text and "gone.wav: audio file not found" in text
    assert "error empty_text (1)" in text and "warning too_long (1)" in text
    assert text.index("error empty_text") < text.index("warning too_long")  # errors first
    assert text.endswith("Result: FAILED: 2 errors")


def test_text_report_can_shorten_long_lists(report):
    report.problems += [report.problems[-1]] * 5
    text = format_report(report, max_per_code=2)
    assert "... and 4 more (--json lists all)" in text


def test_json_report(report):
    data = json.loads(report_json(report))
    assert data["ok"] is False and data["format"] == "fish"
    assert {p["code"] for p in data["problems"]} == {"missing_audio", "empty_text", "too_long"}
    assert data["summary"]["errors"] == 2


def test_cleaned_manifest_and_dropped_list(report, tmp_path):
    out, dropped, n = write_cleaned(report, tmp_path / "clean.jsonl", also_drop=("too_long",))
    assert [i.id for i in read_manifest(out)] == ["a/1"]
    rows = [json.loads(line) for line in dropped.read_text().splitlines()]
    assert n == 3 and dropped.name == "clean.dropped.jsonl"
    reasons = {r["item"]["id"]: r["reasons"] for r in rows}
    assert reasons["a/2"][0].startswith("missing_audio:")
    assert reasons["b/1"][0].startswith("too_long:")
    assert reasons["b/2"][0].startswith("empty_text:")


def test_cleaned_output_is_never_overwritten_unasked(report, tmp_path):
    (tmp_path / "clean.jsonl").write_text("mine\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_cleaned(report, tmp_path / "clean.jsonl")
    assert (tmp_path / "clean.jsonl").read_text() == "mine\n"
    write_cleaned(report, tmp_path / "clean.jsonl", overwrite=True)
    assert len(read_manifest(tmp_path / "clean.jsonl")) == 2


@pytest.fixture
def table_report(tmp_path):
    """A CSV whose record on lines 3-4 names a missing file and whose line 5 cannot be read."""
    write_audio(tmp_path / "wavs" / "a.wav", 1.5, seed=1)
    write_audio(tmp_path / "wavs" / "b.wav", 1.5, seed=2)
    table = tmp_path / "list.csv"
    table.write_text(
        'audio_file,text\nwavs/a.wav,fine\nwavs/gone.wav,"quoted\nover two"\nwavs/x.wav,a,b\nwavs/b.wav, \n'
    )
    return table, validate_path(table)


def test_text_report_shows_the_row_of_each_item(table_report):
    table, report = table_report
    text = format_report(report)
    assert f"\n    {table} lines 3-4 (id wavs/gone, audio wavs/gone.wav): audio file not found\n" in text
    assert f"\n    {table} line 6 (id wavs/b, audio wavs/b.wav): transcript is empty" in text
    # A malformed row names its line in the message, as `ingest` prints it: once, not twice.
    assert f"\n    {table}: line 5: expected 2 fields (audio_file,text), found 3\n" in text


def test_text_report_names_the_lab_of_a_fish_item(tmp_path):
    lab = tmp_path / "anna" / "a1.lab"
    audio = write_audio(tmp_path / "anna" / "a1.wav", 1.5)
    report = validate_items([Item("anna/a1", str(audio), " ", "anna", origin=Origin(str(lab)))])
    assert f"    {lab} (id anna/a1, audio a1.wav): transcript is empty" in format_report(report)


def test_json_report_and_dropped_list_carry_the_origin(table_report, tmp_path):
    table, report = table_report
    problems = {p["code"]: p for p in json.loads(report_json(report))["problems"]}
    assert problems["missing_audio"]["origin"] == {"file": str(table), "line": 3, "last_line": 4, "row": None}
    assert problems["malformed_row"]["origin"]["line"] == 5

    _, dropped, n = write_cleaned(report, tmp_path / "clean.jsonl")
    rows = [json.loads(line) for line in dropped.read_text().splitlines()]
    assert n == 3
    assert [(r["item"]["id"] if "item" in r else r["path"], r["origin"]["line"]) for r in rows] == [
        ("wavs/gone", 3),
        ("wavs/b", 6),
        (str(table), 5),
    ]
    assert rows[0]["origin"]["last_line"] == 4 and "origin" not in rows[0]["item"]  # item: a manifest row
