"""Shared fixtures. Tests are hermetic: no HF token, no user caches, no network, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

ISOLATED_PREFIXES = ("TRTBUILD_", "HF_", "HUGGINGFACE_")
ISOLATED_NAMES = ("CUDA_VISIBLE_DEVICES", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite tests/golden from the current output"
    )


@pytest.fixture(scope="session", autouse=True)
def _isolate_session_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Strip tokens and user configuration for the whole run; caches go to a temp dir."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            del os.environ[name]
    base = tmp_path_factory.mktemp("home")
    os.environ["TRTBUILD_HOME"] = str(base / "trtbuild")
    os.environ["HF_HOME"] = str(base / "hf")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default checkpoint, made once per test session (seed 0)."""
    from trtbuild.tiny_model import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
