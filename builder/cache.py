"""The engine build cache: never build the same engine twice.

An entry is a complete engine directory (manifest included) under
``trtbuild.paths.engine_cache_dir()/<key>``, where the key is a sha256 over the source checkpoint's
file hashes, the resolved build settings, the target SM and the TensorRT-LLM version. A hit
hard-links the entry's large files into ``--out`` (copying across file systems), so it takes
seconds. Large cached files are made read-only: an engine hard-linked out of the cache cannot be
edited in place by accident. ``.last-used`` in each entry is touched on every hit (for pruning).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trtbuild._atomic import atomic_dir
from trtbuild.builder._files import LINK_MIN_BYTES, link_or_copy
from trtbuild.builder.manifest import MANIFEST, Manifest, read_manifest
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import SpecError, TrtbuildError
from trtbuild.paths import engine_cache_dir

KEY_VERSION = 1
LAST_USED = ".last-used"
STALE_SECONDS = 86400  # an incomplete entry this old is a crashed write, not one in progress


def cache_key(
    *,
    source_files: dict[str, str],
    settings: BuildSettings,
    sm: int | None,
    trtllm_version: str | None,
) -> str:
    """sha256 over everything that decides the bytes of an engine."""
    payload = {
        "key_version": KEY_VERSION,
        "source": dict(sorted(source_files.items())),
        "settings": settings.model_dump(mode="json"),
        "sm": sm,
        "tensorrt_llm": trtllm_version,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_dir(key: str) -> Path:
    return engine_cache_dir() / key


def lookup(key: str) -> Path | None:
    """The cached engine directory for ``key``, or None (an entry without a manifest is not one)."""
    path = entry_dir(key)
    return path if (path / MANIFEST).is_file() else None


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.name == LAST_USED:
            continue
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            link_or_copy(path, dst / rel)


def restore(key: str, out_dir: Path, *, force: bool = False) -> Manifest:
    """Materialise the cached engine ``key`` at ``out_dir`` (atomically) and return its manifest."""
    src = lookup(key)
    if src is None:
        raise KeyError(key)
    with atomic_dir(out_dir, force=force) as tmp:
        _copy_tree(src, tmp)
    with contextlib.suppress(OSError):
        (src / LAST_USED).touch()
    return read_manifest(out_dir)


def store(engine_dir: Path, key: str) -> Path | None:
    """Add a finished engine directory to the cache; a cache that cannot be written is skipped."""
    dst = entry_dir(key)
    if lookup(key) is not None:
        return dst
    try:
        with atomic_dir(dst, force=True) as tmp:
            _copy_tree(Path(engine_dir), tmp)
            for path in tmp.rglob("*"):
                if path.is_file() and path.stat().st_size >= LINK_MIN_BYTES:
                    path.chmod(0o444)
            (tmp / LAST_USED).touch()
    except (OSError, TrtbuildError):
        return None
    return dst


# -- listing and pruning -----------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    runtime: str
    source: str  # repo id, else the checkpoint path
    gpu: str | None
    trtllm_version: str | None
    size_bytes: int
    created: str
    last_used: float  # epoch seconds

    def describe(self) -> str:
        gpu = self.gpu or "any GPU"
        trt = f"TensorRT-LLM {self.trtllm_version}" if self.trtllm_version else "no TensorRT-LLM"
        days = max(0.0, (time.time() - self.last_used) / 86400)
        return (
            f"{self.key[:12]}  {self.runtime:<11} {_size(self.size_bytes):>9}  "
            f"used {days:.1f}d ago  {gpu}, {trt}  {self.source}"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_entries() -> list[CacheEntry]:
    """Every complete cache entry, least recently used first."""
    root = engine_cache_dir()
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.name.startswith(".") or not (path / MANIFEST).is_file():
            continue
        try:
            m = read_manifest(path)
        except TrtbuildError:
            continue
        marker = path / LAST_USED
        entries.append(
            CacheEntry(
                key=path.name,
                path=path,
                runtime=m.runtime,
                source=m.source.repo_id or m.source.path,
                gpu=f"{m.gpu.name} (SM {m.gpu.sm})"
                if m.gpu and m.runtime == "tensorrtllm"
                else None,
                trtllm_version=m.software.tensorrt_llm,
                size_bytes=_tree_size(path),
                created=m.created,
                last_used=(marker if marker.exists() else path).stat().st_mtime,
            )
        )
    return sorted(entries, key=lambda e: e.last_used)


def prune(*, older_than_days: float | None = None, everything: bool = False) -> list[CacheEntry]:
    """Remove entries unused for ``older_than_days`` (or all); leftovers of crashed writes go too."""
    if older_than_days is None and not everything:
        raise SpecError("say what to prune: --older-than DAYS or --all")
    if older_than_days is not None and older_than_days < 0:
        raise SpecError(f"--older-than must be >= 0 days, got {older_than_days:g}")
    root = engine_cache_dir()
    removed = []
    cutoff = time.time() - (older_than_days or 0) * 86400
    for entry in list_entries():
        if everything or (older_than_days is not None and entry.last_used < cutoff):
            _rmtree(entry.path)
            removed.append(entry)
    if root.is_dir():
        stale = time.time() - STALE_SECONDS
        for path in root.iterdir():  # leftovers of crashed writes (not ones being written now)
            incomplete = path.name.startswith(".") or not (path / MANIFEST).is_file()
            if path.is_dir() and incomplete and path.stat().st_mtime < stale:
                _rmtree(path)
    return removed


def _rmtree(path: Path) -> None:
    # read-only files go too: unlinking needs a writable directory, not a writable file
    shutil.rmtree(path, ignore_errors=True)
