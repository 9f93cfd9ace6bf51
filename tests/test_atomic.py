"""Directories are written completely or not at all, and never over a user's files."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trtbuild._atomic import atomic_dir, check_writable
from trtbuild.errors import OutputExists, SpecError


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


# -- what a killed run leaves behind ------------------------------------------------------------
_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
from trtbuild._atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(out: Path) -> Path:
    subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(out)], check=False)
    (left,) = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return left


def test_a_killed_runs_temp_dir_is_recognisable_and_removed_next_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    left = _killed_run(tmp_path / "engine")
    assert left.name.startswith(".engine.trtbuild-") and left.name.endswith(".tmp")
    assert (left / "half.bin").is_file()
    foreign = tmp_path / ".engine.someone-elses.tmp"  # not trtbuild's naming: never touched
    foreign.mkdir()
    other_host = tmp_path / re.sub(r"trtbuild-[0-9a-f]{8}", "trtbuild-0badc0de", left.name)
    shutil.copytree(
        left, other_host
    )  # made on another machine (a shared disk): its pid means nothing here
    with atomic_dir(tmp_path / "repository") as tmp:  # another output, same parent
        (tmp / "a").write_text("a")
    assert not left.exists() and foreign.is_dir() and other_host.is_dir()
    assert capsys.readouterr().err == (
        f"note: removed 1 temporary directory (0.00 GB) left in {tmp_path} by interrupted "
        "trtbuild runs\n"
    )


def test_a_running_creators_temp_dir_is_kept(tmp_path: Path) -> None:
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom trtbuild._atomic import atomic_dir\n"
        "with atomic_dir(Path(sys.argv[1])) as tmp:\n    print(tmp, flush=True)\n    time.sleep(60)\n"
    )
    busy = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "engine")],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        in_progress = Path(busy.stdout.readline().strip())  # type: ignore[union-attr]
        with atomic_dir(tmp_path / "other") as tmp:
            (tmp / "a").write_text("a")
        assert in_progress.is_dir()  # its creator is alive: a build in progress
        # a reused pid is not the creator: same pid, another start time
        name = re.sub(
            r"(trtbuild-[0-9a-f]{8}-\d+)-(\d+)-",
            lambda m: f"{m[1]}-{int(m[2]) + 1}-",
            in_progress.name,
        )
        reused = tmp_path / name
        reused.mkdir()
        with atomic_dir(tmp_path / "third") as tmp:
            pass
        assert in_progress.is_dir() and not reused.exists()
    finally:
        busy.kill()
        busy.communicate()
    with atomic_dir(tmp_path / "fourth"):
        pass
    assert not in_progress.exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_the_finished_directory_has_the_umasks_permissions(
    tmp_path: Path, umask: int, mode: int
) -> None:
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("f")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode


def test_a_path_under_a_regular_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SpecError, match=r"afile is a file, not a directory; pick another"):
        check_writable(tmp_path / "afile" / "sub" / "deeper", force=False)
    with pytest.raises(SpecError), atomic_dir(tmp_path / "afile" / "sub"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
