"""The one module that runs subprocesses.

Commands are argv lists (never a shell string). Each run is announced on stderr as a line that
can be pasted into a shell; ``dry_run`` prints the line and runs nothing. A non-zero exit raises
``ProcessFailed`` with the tail of the output.

Long-running children (``spawn``) get their own process group; ``Watchdog`` makes that group die
with this process, however it ends (even SIGKILL), and ``stop_group`` stops it and says how.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trtbuild.errors import ProcessFailed, SpecError, ToolNotFound, redact

TAIL_LINES = 50
Popen = subprocess.Popen
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL", re.IGNORECASE)


def format_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A copy-pasteable shell line (env assignments first; secrets and URL credentials masked)."""
    prefix = " ".join(
        f"{k}={'***' if _SECRET_NAME.search(k) else shlex.quote(v)}" for k, v in (env or {}).items()
    )
    line = shlex.join([str(a) for a in argv])
    return redact(f"{prefix} {line}" if prefix else line)


def describe_returncode(code: int | None) -> str:
    """``killed by SIGKILL (signal 9)``, ``exit status 3``; None: the status is unknown."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (signal {-code})"
    return f"exit status {code}"


def announce(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    print(f"+ {format_command(argv, env)}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    output: str


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    check: bool = True,
    what: str | None = None,
    timeout: float | None = None,
    inherit_env: bool = True,
) -> Result:
    """Run ``argv`` to completion, capturing stdout+stderr together.

    ``env`` holds only the variables to add to the current environment; they are announced too.
    With ``inherit_env=False`` it is the child's whole environment instead.
    """
    args = [str(a) for a in argv]
    if not quiet or dry_run:
        announce(args, env)
    if dry_run:
        return Result(args, 0, "")
    full_env = dict(env or {}) if not inherit_env else ({**os.environ, **env} if env else None)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolNotFound(args[0], "Install it or put it on PATH.") from exc
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        raise ProcessFailed(args, -1, tail(out), what=f"{what or args[0]} (timed out)") from exc
    except OSError as exc:  # not executable, not a program (ENOEXEC), a directory...
        raise not_runnable(args[0], exc) from exc
    if check and proc.returncode != 0:
        raise ProcessFailed(args, proc.returncode, tail(proc.stdout), what=what)
    return Result(args, proc.returncode, proc.stdout)


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    cwd: Path | None = None,
    quiet: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running child in its own process group (so the whole tree can be stopped)."""
    args = [str(a) for a in argv]
    if not quiet:
        announce(args, env)
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolNotFound(args[0], "Install it or put it on PATH.") from exc
    except OSError as exc:  # not executable, not a program (ENOEXEC), a directory...
        raise not_runnable(args[0], exc) from exc


def not_runnable(program: str, exc: OSError) -> SpecError:
    """The error for a program that exists but cannot be run."""
    if exc.errno == errno.EACCES:
        fix = f"make it executable (chmod +x {shlex.quote(program)}) or pass another program"
    elif exc.errno == errno.ENOEXEC:
        fix = "it is not a program this machine can run; pass the real binary"
    else:
        fix = "pass another program"
    return SpecError(f"cannot run {program}: {exc.strerror or exc}; {fix}")


# -- stopping a process group -------------------------------------------------------------------
@dataclass(frozen=True)
class Stopped:
    """How ``stop_group`` ended a child: its returncode, and what it took."""

    returncode: int
    exited_before: bool  # it had already exited (by itself, or killed from outside) when asked
    killed: bool  # it ignored SIGTERM for the whole grace period and got SIGKILL

    def describe(self) -> str:
        what = describe_returncode(self.returncode)
        if self.exited_before:
            return f"had already exited ({what})"
        if self.killed:
            return f"did not stop after SIGTERM and was killed ({what})"
        return f"stopped after SIGTERM ({what})"


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> Stopped:
    """SIGTERM the child's process group, wait ``grace`` seconds, then SIGKILL what is left."""
    exited_before = proc.poll() is not None
    killed = False
    if not exited_before:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            killed = True
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    # children that outlived the leader (python-backend stubs) share the group: reap them too;
    # and the session: Open MPI starts each rank in a process group of its own (the session,
    # which spawn gave the child, holds every rank and its stubs)
    _signal_group(proc, signal.SIGKILL)
    signal_session(proc.pid, signal.SIGKILL)
    return Stopped(proc.returncode, exited_before=exited_before, killed=killed)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def signal_session(sid: int, sig: int) -> None:
    """Send ``sig`` to every process of session ``sid`` (``spawn`` starts one per child)."""
    for pid in _session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == sid and int(entry.name) != os.getpid():
            pids.append(int(entry.name))  # field 6 is the session id
    return pids


# -- a group that dies with us --------------------------------------------------------------------
# The watchdog is a tiny Python process in a session of its own (so that signals sent to our
# process group, Ctrl-C included, do not reach it). It reads the group to guard from a pipe whose
# write end only this process holds, then blocks on it: EOF without "release" means this process
# is gone, however it died, and the group gets SIGTERM, then SIGKILL after the grace period.
_WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
grace = float(sys.argv[1])
data = b""
while True:
    try:
        chunk = os.read(0, 256)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
    if b"release" in data:
        sys.exit(0)
words = data.split()
if not words:
    sys.exit(0)
pgid = int(words[0])

def send(sig):
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False

def session():  # the group leader's session: MPI ranks run in process groups of their own
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                if name.isdigit() and int(f.read().rsplit(")", 1)[-1].split()[3]) == pgid:
                    pids.append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    return pids

if send(signal.SIGTERM):
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and send(0):
        time.sleep(0.1)
    send(signal.SIGKILL)
for pid in session():
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
"""


class Watchdog:
    """Kills a process group when this process ends without ``release()`` (even on SIGKILL).

    ``Watchdog(grace)`` starts it (before the child, so no moment is unguarded but the one
    between the child's fork and ``guard``); ``guard(pgid)`` names the group; ``release()``, after
    the group was stopped, lets it go without touching anything.
    """

    def __init__(self, grace: float) -> None:
        read_end, self._write_end = os.pipe()  # both non-inheritable: no other child holds them
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, f"{grace:g}"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def guard(self, pgid: int) -> None:
        os.write(self._write_end, f"{pgid}\n".encode())

    def release(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_end, b"release\n")
        with contextlib.suppress(OSError):
            os.close(self._write_end)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


# -- processes that are not our children ---------------------------------------------------------
def zombie_returncode(pid: int) -> int | None:
    """The returncode (``-N`` for signal N) of a zombie that is not our child, from
    ``/proc/PID/stat``'s exit_code field (Linux >= 3.5); None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields 3.. (the name may hold spaces)
    if len(fields) < 50 or fields[0] != "Z":
        return None
    status = int(fields[49])  # field 52, in waitpid(2)'s encoding
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs (zombies count as gone); return those still running."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        running = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.1)
