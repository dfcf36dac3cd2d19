import json

import pytest

from tts_lib.data.manifest import Item, Origin, read_manifest, write_manifest


def test_roundtrip_with_relative_paths(tmp_path):
    items = [
        Item(
            "a/1",
            str(tmp_path / "a" / "1.wav"),
            "Hyvää päivää",
            "a",
            1.5,
            44100,
            1,
            "train",
            str(tmp_path / "a" / "1.npy"),
        ),
        Item("b/2", "/elsewhere/2.flac", "ሰላም", "b"),
    ]
    path = write_manifest(tmp_path / "manifest.jsonl", items)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["audio"] == "a/1.wav" and rows[0]["codes"] == "a/1.npy"  # movable with its folder
    assert rows[1]["audio"] == "/elsewhere/2.flac"
    assert "ሰላም" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert read_manifest(path) == items


def test_origin_is_not_written_and_read_back_is_the_manifest_line(tmp_path):
    items = [
        Item("a", str(tmp_path / "a.wav"), "yksi", "s", origin=Origin("/data/list.csv", 2, 3)),
        Item("b", str(tmp_path / "b.wav"), "kaksi", "s", origin=Origin("/data/list.csv", 5)),
    ]
    path = write_manifest(tmp_path / "m.jsonl", items)
    assert "origin" not in path.read_text()  # the format on disk is unchanged
    back = read_manifest(path)
    assert back == items  # the origin is where an item was read from, not part of it
    assert [i.origin for i in back] == [Origin(str(path), 1), Origin(str(path), 2)]

    path.write_text("\n" + path.read_text())  # a blank first line still counts
    assert [str(i.origin) for i in read_manifest(path)] == [f"{path} line 2", f"{path} line 3"]


def test_leaves_no_temporary_files(tmp_path):
    write_manifest(tmp_path / "m.jsonl", [Item("a", "a.wav", "t", "s")])
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"id": "a", "audio": "a.wav", "text": "t"}', "missing field(s) ['speaker']"),
        (
            '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s", "lang": "fi"}',
            "unknown field(s) ['lang']",
        ),
        (
            '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s", "split": "test"}',
            "split must be one of",
        ),
        ("{not json", "expected one JSON object per line"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, line, fragment):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "ok", "audio": "a.wav", "text": "t", "speaker": "s"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match="m.jsonl:3") as e:
        read_manifest(path)
    assert fragment in str(e.value)
