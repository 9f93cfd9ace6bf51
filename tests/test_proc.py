"""The one subprocess module: announce, dry-run, exit codes with the output tail, group stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trtbuild import proc
from trtbuild.errors import ProcessFailed, SpecError, ToolNotFound


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


def test_stop_group_says_whether_it_stopped_or_found_the_child_dead() -> None:
    child = proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], quiet=True)
    stopped = proc.stop_group(child, grace=5)
    assert stopped == proc.Stopped(-signal.SIGTERM, exited_before=False, killed=False)
    assert stopped.describe() == "stopped after SIGTERM (killed by SIGTERM (signal 15))"
    child = proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], quiet=True)
    child.kill()  # from outside: stop_group must not claim it sent anything
    child.wait()
    stopped = proc.stop_group(child, grace=5)
    assert stopped.exited_before and not stopped.killed
    assert stopped.describe() == "had already exited (killed by SIGKILL (signal 9))"


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "exit status 0"), (3, "exit status 3"), (-9, "killed by SIGKILL (signal 9)"),
     (-15, "killed by SIGTERM (signal 15)"), (None, "an unknown status")],
)  # fmt: skip
def test_describe_returncode(code: int | None, text: str) -> None:
    assert proc.describe_returncode(code) == text


def test_the_status_of_a_zombie_that_is_not_waited_for() -> None:
    """How a stub's death is read: tritonserver's children stay zombies until it reaps them."""
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
        psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE for p in (killed, exited)
    ):
        time.sleep(0.05)
    assert proc.zombie_returncode(killed.pid) == -signal.SIGKILL
    assert proc.zombie_returncode(exited.pid) == 3
    assert proc.zombie_returncode(os.getpid()) is None  # running: no status yet
    killed.wait()
    exited.wait()


def test_a_program_that_cannot_run_is_a_user_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    with pytest.raises(SpecError, match=r"Permission denied; make it executable \(chmod \+x"):
        proc.spawn([str(plain)], quiet=True)
    plain.chmod(0o755)
    with pytest.raises(SpecError, match="Exec format error; it is not a program this machine"):
        proc.spawn([str(plain)], quiet=True)


def test_announced_commands_mask_secrets() -> None:
    line = proc.format_command(
        ["tool", "--endpoint", "https://alice:pw123@hub.example/x"],
        {"HF_TOKEN": "hf_abc", "PATH": "/bin"},
    )
    assert line == "HF_TOKEN=*** PATH=/bin tool --endpoint https://***@hub.example/x"


_OWNER = """
import sys, time
from trtbuild import proc
dog = proc.Watchdog(grace=float(sys.argv[1]))
dog_pid = dog.pid
group = proc.spawn([sys.executable, "-c", sys.argv[2]], quiet=True)
dog.guard(group.pid)
if sys.argv[3] == "release":
    proc.stop_group(group, grace=5)
    dog.release()
    group = proc.spawn([sys.executable, "-c", sys.argv[2]], quiet=True)  # unguarded
print(group.pid, dog_pid, flush=True)
time.sleep(60)
"""
_IGNORES_SIGTERM = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "time.sleep(60)"
)


def _owner(mode: str, child_code: str, grace: float = 1.0) -> tuple[subprocess.Popen[str], list[psutil.Process], int]:  # fmt: skip
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(grace), child_code, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    group_pid, dog_pid = map(int, owner.stdout.readline().split())  # type: ignore[union-attr]
    owner.stdout.close()  # type: ignore[union-attr]
    time.sleep(0.5)  # the group's own child starts
    leader = psutil.Process(group_pid)
    return owner, [leader, *leader.children(recursive=True)], dog_pid


def test_the_watchdog_stops_the_group_when_its_owner_is_sigkilled() -> None:
    owner, group, dog = _owner("guard", "import time; time.sleep(60)")
    assert len(group) == 1 and psutil.pid_exists(dog)
    owner.kill()
    owner.wait()
    assert proc.wait_gone([p.pid for p in group], timeout=5) == []
    assert proc.wait_gone([dog], timeout=5) == []


def test_the_watchdog_escalates_to_sigkill_after_the_grace_period() -> None:
    owner, group, dog = _owner("guard", _IGNORES_SIGTERM, grace=1.0)
    assert len(group) == 2
    owner.kill()
    owner.wait()
    assert proc.wait_gone([p.pid for p in group], timeout=0.5) != []  # SIGTERM is ignored
    assert proc.wait_gone([p.pid for p in group], timeout=5) == []


def test_a_released_watchdog_touches_nothing() -> None:
    owner, group, dog = _owner("release", "import time; time.sleep(60)")
    assert proc.wait_gone([dog], timeout=5) == []  # released: it exited at once
    owner.kill()
    owner.wait()
    time.sleep(1.5)
    assert proc.wait_gone([p.pid for p in group], timeout=0) == [group[0].pid]
    group[0].kill()


def test_run_of_a_program_that_cannot_run_is_a_user_error(tmp_path: Path) -> None:
    plain = tmp_path / "tool"
    plain.write_text("not a program\n")
    with pytest.raises(SpecError, match="cannot run .*tool: Permission denied; make it executable"):
        proc.run([str(plain)], quiet=True)


def test_a_whole_environment_replaces_the_inherited_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTBUILD_INHERITED", "yes")
    script = "import os; print(os.environ.get('TRTBUILD_INHERITED'), os.environ.get('ONLY'))"
    whole = {"ONLY": "1", "PATH": os.environ["PATH"]}
    result = proc.run([sys.executable, "-c", script], env=whole, inherit_env=False, quiet=True)
    assert result.output.split() == ["None", "1"]
    merged = proc.run([sys.executable, "-c", script], env={"ONLY": "2"}, quiet=True)
    assert merged.output.split() == ["yes", "2"]


def test_no_other_module_starts_processes() -> None:
    """Every child goes through proc: announced, redacted, its errors mapped to the exit codes."""
    root = Path(__file__).resolve().parents[1]
    sources = [
        p
        for folder in ("trtbuild", "builder", "ensembles", "scripts")
        for p in (root / folder).rglob("*.py")
        if p != root / "trtbuild" / "proc.py"
    ]
    offenders = [
        str(p.relative_to(root))
        for p in sources
        if "import subprocess" in p.read_text() or "os.system(" in p.read_text()
    ]
    assert sources and offenders == []
