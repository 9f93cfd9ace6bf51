"""File helpers shared by the engine writers: linking, tokenizer copies."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from trtbuild.files.hf import normalise_tokenizer_config
from trtbuild.vocab import TOKENIZER_FILES

LINK_MIN_BYTES = 1 << 20  # smaller files are copied (tokenizer files may be rewritten)
MODEL_FILES = ("config.json", "generation_config.json")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link large files (same file system), copy everything else."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_size >= LINK_MIN_BYTES:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return
    shutil.copy2(src, dst)


def copy_tokenizer(checkpoint: Path, dst: Path, *, with_model_files: bool = True) -> None:
    """Copy the tokenizer (and the HF config files AutoTokenizer may need), then normalise it."""
    dst.mkdir(parents=True, exist_ok=True)
    names = (*MODEL_FILES, *TOKENIZER_FILES) if with_model_files else TOKENIZER_FILES
    for pattern in names:  # names, or patterns such as *.tiktoken
        for src in sorted(checkpoint.glob(pattern)):
            if src.is_file():
                shutil.copy2(src, dst / src.name)
    normalise_tokenizer_config(dst)
