"""Atomic folders: complete or absent, never replaced unless asked."""

import pytest

from tts_lib.common.fileio import atomic_folder


def test_a_folder_appears_only_when_its_block_succeeds(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_folder(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("failed half way")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no folder, no leftovers
    with atomic_folder(out) as tmp:
        (tmp / "model.bin").write_bytes(b"new")
    assert (out / "model.bin").read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["export"]


def test_an_existing_folder_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("user's")
    with pytest.raises(FileExistsError):
        with atomic_folder(out):
            pass
    assert (out / "keep.txt").read_text() == "user's"
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("ours")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["export"]
