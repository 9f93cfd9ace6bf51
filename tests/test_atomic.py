"""Directories are written completely or not at all, and never over a user's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtbuild._atomic import atomic_dir
from trtbuild.errors import OutputExists


def test_success_renames_into_place(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_content_needs_force_and_survives_a_failed_replace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    with pytest.raises(OutputExists, match="pass --force"), atomic_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "keep"
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_directory_is_not_a_users_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "out" / "x").exists()
