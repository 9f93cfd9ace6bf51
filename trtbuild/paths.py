"""Where trtbuild keeps things. Every on-disk location comes from here (tests point it at tmp)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$TRTBUILD_HOME``, else ``$XDG_CACHE_HOME/trtbuild``, else ``~/.cache/trtbuild``."""
    env = os.environ.get("TRTBUILD_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trtbuild"


def engine_cache_dir() -> Path:
    return home() / "engines"
