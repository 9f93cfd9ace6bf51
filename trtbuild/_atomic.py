"""Write a directory completely or not at all: build in a sibling temp dir, then rename.

The temp dir is ``.OUT.trtbuild-HOST-PID-START-XXXXXXXX.tmp``: the host, pid and start time of
the process that made it. A run that was killed (SIGKILL, power loss) cannot remove its own, so
every ``atomic_dir`` first removes the siblings whose creator, on this host, is no longer
running, and says so in one note. The finished directory gets the permissions a plain ``mkdir``
would (``0o777 & ~umask``), not ``mkdtemp``'s 0700.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trtbuild.errors import OutputExists, SpecError

_STALE = re.compile(
    r"^\..+\.trtbuild-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[^/]*\.tmp$"
)


def check_writable(out_dir: Path, *, force: bool) -> None:
    """Raise ``OutputExists`` unless ``out_dir`` is absent, empty, or ``force`` is set; raise
    ``SpecError`` when it cannot be a directory at all (a path under a regular file)."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise SpecError(
            f"{out_dir} cannot be created: {parent} is a file, not a directory; pick another "
            "output path"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise OutputExists(out_dir)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _creator_alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    ticks = _start_ticks(pid)
    return ticks is None or ticks == start  # a reused pid is not the creator


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def remove_stale_siblings(parent: Path) -> list[Path]:
    """Remove the temp dirs in ``parent`` that a trtbuild process on this host left when it was
    killed (its pid is gone, or now belongs to a process that started later). Returns them."""
    removed: list[Path] = []
    host = _host_tag()
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    freed = 0
    for entry in entries:
        match = _STALE.match(entry.name)
        if match is None or match["host"] != host or not entry.is_dir() or entry.is_symlink():
            continue
        if _creator_alive(int(match["pid"]), int(match["start"])):
            continue
        freed += _size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        print(
            f"note: removed {len(removed)} temporary director{'ies' if len(removed) > 1 else 'y'} "
            f"({freed / 1e9:.2f} GB) left in {parent} by interrupted trtbuild runs",
            file=sys.stderr,
            flush=True,
        )
    return removed


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(out_dir: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; on success it replaces ``out_dir``, on error it goes."""
    out_dir = Path(out_dir)
    check_writable(out_dir, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out_dir.parent)
    pid = os.getpid()
    tag = f".{out_dir.name}.trtbuild-{_host_tag()}-{pid}-{_start_ticks(pid) or 0}-"
    tmp = Path(tempfile.mkdtemp(prefix=tag, suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = tmp.with_name(tmp.name.removesuffix(".tmp") + "-old.tmp")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
