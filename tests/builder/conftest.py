"""Fixtures for the builder tests: fake TensorRT-LLM tools, fake GPUs, config-only checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builder.builder_fakes import FAKE_TOOLCHAIN, LLAMA_8B, gpus
from trtbuild.builder.engine import BuildEnv


@pytest.fixture
def fake_env() -> Callable[..., BuildEnv]:
    """``fake_env("h100-sxm", 2)``: that many GPUs and the fake TensorRT-LLM 1.2.1."""

    def make(name: str = "h100-sxm", count: int = 1, *, toolchain: bool = True) -> BuildEnv:
        return BuildEnv(gpus=gpus(name, count), toolchain=FAKE_TOOLCHAIN if toolchain else None)

    return make


@pytest.fixture
def no_gpu_env() -> BuildEnv:
    return BuildEnv(gpus=[], toolchain=None)


@pytest.fixture
def llama_8b(tmp_path: Path) -> Path:
    """A config-only Llama-3.1-8B-shaped checkpoint (no weights: enough to plan and validate)."""
    path = tmp_path / "llama-8b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    (path / "tokenizer.json").write_text("{}")
    return path


@pytest.fixture
def write_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Write a config-only checkpoint with ``LLAMA_8B`` plus overrides (and optional extra files)."""

    def make(name: str = "ckpt", files: dict[str, object] | None = None, **config: object) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps({**LLAMA_8B, **config}))
        (path / "tokenizer.json").write_text("{}")
        for rel, content in (files or {}).items():
            (path / rel).write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    return make


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own TRTBUILD_HOME, so engine-cache hits never leak between tests."""
    home = tmp_path / "trtbuild-home"
    monkeypatch.setenv("TRTBUILD_HOME", str(home))
    monkeypatch.delenv("FAKE_TRTLLM_FAIL", raising=False)
    return home
