"""File helpers shared by the engine writers: linking, tokenizer copies."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from trtbuild.download import TOKENIZER_FILES  # one list of what a tokenizer is made of

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


def normalise_tokenizer_config(directory: Path) -> None:
    """Make transformers 4.x able to load a tokenizer saved by transformers 5.

    The file is replaced, never edited in place (it may be a hard link into a checkpoint).
    """
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(path)
