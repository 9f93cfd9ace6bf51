"""The engine build cache: keys, store and restore (hard links), listing and pruning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.builder.test_builder_manifest import manifest
from trtbuild.builder import cache
from trtbuild.builder.manifest import MANIFEST, SourceRecord, write_manifest
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import OutputExists, SpecError
from trtbuild.specs import Limits

LIMITS = Limits(max_batch_size=8, max_input_len=256, max_seq_len=512, max_num_tokens=512)
SETTINGS = BuildSettings(runtime="tensorrtllm", dtype="bfloat16", limits=LIMITS)


def key(**changes: object) -> str:
    args: dict[str, object] = {
        "source_files": {"model.safetensors": "ab" * 32, "config.json": "cd" * 32},
        "settings": SETTINGS,
        "sm": 90,
        "trtllm_version": "1.2.1",
    }
    return cache.cache_key(**{**args, **changes})  # type: ignore[arg-type]


def test_key_covers_source_settings_sm_and_version() -> None:
    base = key()
    assert base == key() and len(base) == 64
    assert base == key(source_files={"config.json": "cd" * 32, "model.safetensors": "ab" * 32})
    others = [
        key(source_files={"model.safetensors": "ef" * 32, "config.json": "cd" * 32}),
        key(settings=SETTINGS.model_copy(update={"tp": 2})),
        key(
            settings=SETTINGS.model_copy(
                update={"limits": LIMITS.model_copy(update={"max_seq_len": 1024})}
            )
        ),
        key(sm=89),
        key(trtllm_version="1.2.0"),
    ]
    assert len({base, *others}) == 6


def engine_dir(tmp_path: Path, name: str = "built", source: str = "org/model") -> Path:
    out = tmp_path / name
    out.mkdir()
    (out / "rank0.engine").write_bytes(os.urandom(cache.LINK_MIN_BYTES))  # large: hard-linked
    (out / "config.json").write_text("{}")  # small: copied
    write_manifest(out, manifest(source=SourceRecord(path="/models/x", repo_id=source)))
    return out


def test_store_then_restore_links_large_files_read_only(tmp_path: Path) -> None:
    built = engine_dir(tmp_path)
    k = key()
    assert cache.lookup(k) is None
    entry = cache.store(built, k)
    assert entry is not None and cache.lookup(k) == entry
    restored = cache.restore(k, tmp_path / "copy")
    assert restored == manifest(source=SourceRecord(path="/models/x", repo_id="org/model"))
    big, small = tmp_path / "copy" / "rank0.engine", tmp_path / "copy" / "config.json"
    assert os.path.samefile(big, entry / "rank0.engine")
    assert not os.path.samefile(small, entry / "config.json")
    assert big.read_bytes() == (built / "rank0.engine").read_bytes()
    assert (entry / "rank0.engine").stat().st_mode & 0o222 == 0
    assert not (tmp_path / "copy" / ".last-used").exists()
    with pytest.raises(OutputExists):
        cache.restore(k, tmp_path / "copy")
    cache.restore(k, tmp_path / "copy", force=True)


def test_list_and_prune(tmp_path: Path) -> None:
    old, new = key(sm=80), key(sm=90)
    cache.store(engine_dir(tmp_path, "a", source="org/old"), old)
    cache.store(engine_dir(tmp_path, "b", source="org/new"), new)
    month_ago = time.time() - 30 * 86400
    os.utime(cache.entry_dir(old) / cache.LAST_USED, (month_ago, month_ago))
    entries = cache.list_entries()
    assert [e.key for e in entries] == [old, new]  # least recently used first
    assert entries[0].source == "org/old" and entries[0].size_bytes > cache.LINK_MIN_BYTES
    assert entries[0].gpu == "h100-sxm (SM 90)" and entries[0].trtllm_version == "1.2.1"
    assert entries[0].describe().startswith(f"{old[:12]}  tensorrtllm ")
    assert "used 30.0d ago  h100-sxm (SM 90), TensorRT-LLM 1.2.1  org/old" in entries[0].describe()

    assert [e.key for e in cache.prune(older_than_days=7)] == [old]
    assert [e.key for e in cache.list_entries()] == [new]
    assert [e.key for e in cache.prune(everything=True)] == [new]
    assert cache.list_entries() == []


def test_restore_touches_last_used(tmp_path: Path) -> None:
    k = key()
    cache.store(engine_dir(tmp_path), k)
    marker = cache.entry_dir(k) / cache.LAST_USED
    os.utime(marker, (0, 0))
    cache.restore(k, tmp_path / "out")
    assert marker.stat().st_mtime > 0


def test_prune_removes_stale_half_written_entries_only(tmp_path: Path) -> None:
    root = cache.entry_dir("x").parent
    stale, fresh = root / ".abc.tmp", root / ".def.tmp"
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (0, 0))
    assert cache.prune(everything=True) == []
    assert not stale.exists() and fresh.exists()


def test_prune_needs_a_choice() -> None:
    with pytest.raises(SpecError, match=r"^say what to prune: --older-than DAYS or --all$"):
        cache.prune()
    with pytest.raises(SpecError, match="--older-than must be >= 0 days"):
        cache.prune(older_than_days=-1)


def test_list_ignores_junk(tmp_path: Path) -> None:
    root = cache.entry_dir("x").parent
    (root / "not-an-entry").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "bad" / MANIFEST).write_text("{")
    assert cache.list_entries() == []
