"""The one module that runs subprocesses.

Commands are argv lists (never a shell string). Each run is announced on stderr as a line that
can be pasted into a shell; ``dry_run`` prints the line and runs nothing. A non-zero exit raises
``ProcessFailed`` with the tail of the output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from trtbuild.errors import ProcessFailed, ToolNotFound

TAIL_LINES = 50
Popen = subprocess.Popen


def format_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A copy-pasteable shell line (env assignments first)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    line = shlex.join([str(a) for a in argv])
    return f"{prefix} {line}" if prefix else line


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
) -> Result:
    """Run ``argv`` to completion, capturing stdout+stderr together.

    ``env`` holds only the variables to add to the current environment; they are announced too.
    """
    args = [str(a) for a in argv]
    if not quiet or dry_run:
        announce(args, env)
    if dry_run:
        return Result(args, 0, "")
    full_env = {**os.environ, **env} if env else None
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


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM the child's process group, wait ``grace`` seconds, then SIGKILL what is left."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    # children that outlived the leader (python-backend stubs) share the group: reap them too
    _signal_group(proc, signal.SIGKILL)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
