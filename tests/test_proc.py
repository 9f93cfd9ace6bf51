"""The one subprocess module: announce, dry-run, exit codes with the output tail, group stop."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from trtbuild import proc
from trtbuild.errors import ProcessFailed, ToolNotFound


def test_run_announces_a_pasteable_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = proc.run([sys.executable, "-c", "print('hi there')"], env={"A_VAR": "x y"})
    assert result.output == "hi there\n"
    err = capsys.readouterr().err
    assert err.startswith("+ A_VAR='x y' ") and "print('\"'\"'hi there'\"'\"')" in err


def test_dry_run_runs_nothing(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "touched"
    result = proc.run([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], dry_run=True)
    assert result.returncode == 0 and not marker.exists()
    assert capsys.readouterr().err.startswith("+ ")


def test_failure_raises_with_code_and_tail() -> None:
    code = "import sys\nfor i in range(80): print('line', i)\nsys.exit(3)"
    with pytest.raises(ProcessFailed) as info:
        proc.run([sys.executable, "-c", code], what="the step", quiet=True)
    err = info.value
    assert err.returncode == 3 and err.message.startswith("the step failed with exit code 3")
    assert err.output_tail.splitlines() == [f"line {i}" for i in range(30, 80)]


def test_missing_program_is_a_user_error() -> None:
    with pytest.raises(ToolNotFound, match="no-such-program-xyz not found"):
        proc.run(["no-such-program-xyz"], quiet=True)


def test_stop_group_ends_children_that_ignore_sigterm() -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)"
    )
    child = proc.spawn([sys.executable, "-c", code], quiet=True)
    time.sleep(0.5)
    grandchildren = psutil.Process(child.pid).children(recursive=True)
    assert grandchildren
    proc.stop_group(child, grace=0.5)
    assert child.poll() is not None
    time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in grandchildren)
