"""Hugging Face files: a checkpoint's JSON configs, a tokenizer directory, the Hub cache layout.

Other tools write these, so they are read tolerantly: a reader returns the JSON object (or None
for an optional file that is absent) and raises ``SpecError`` naming the fix only for a file that
is there but unreadable. No pydantic here: ``builder._trtllm``'s child process imports this.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild.files._json import load_json_object

CONFIG = "config.json"
HF_QUANT_CONFIG = "hf_quant_config.json"  # ModelOpt's unified Hugging Face export
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
HASH_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SNAPSHOT = re.compile(r"^models--(?P<repo>.+)$")

_FIX = "fix or replace it (a transformers checkpoint's own file)"


def _optional(path: Path) -> dict[str, Any] | None:
    return load_json_object(path, fix=_FIX) if path.is_file() else None


# -- a checkpoint's configs ------------------------------------------------------------------------
def read_hf_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (or the file itself)."""
    path = Path(path)
    return load_json_object(path / CONFIG if path.is_dir() else path, fix=_FIX)


def read_hf_config_if_any(directory: Path) -> dict[str, Any] | None:
    return _optional(Path(directory) / CONFIG)


def read_hf_quant_config(directory: Path) -> dict[str, Any] | None:
    """ModelOpt's ``hf_quant_config.json`` (pre-quantized exports), or None."""
    return _optional(Path(directory) / HF_QUANT_CONFIG)


def read_generation_config(directory: Path) -> dict[str, Any] | None:
    return _optional(Path(directory) / GENERATION_CONFIG)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it as ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


# -- a tokenizer directory ------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerFiles:
    """The JSON files of a tokenizer directory that name its special tokens (each {} if absent)."""

    tokenizer: dict[str, Any]
    config: dict[str, Any]
    special_tokens: dict[str, Any]
    generation: dict[str, Any]


def read_tokenizer_files(directory: Path, *, model_dir: Path | None = None) -> TokenizerFiles:
    """``generation_config.json`` falls back to ``model_dir``'s (a tokenizer copied alone)."""
    directory = Path(directory)
    generation = read_generation_config(directory)
    if generation is None and model_dir is not None:
        generation = read_generation_config(Path(model_dir))
    return TokenizerFiles(
        tokenizer=_optional(directory / TOKENIZER_JSON) or {},
        config=_optional(directory / TOKENIZER_CONFIG) or {},
        special_tokens=_optional(directory / SPECIAL_TOKENS_MAP) or {},
        generation=generation or {},
    )


def has_fast_tokenizer(directory: Path) -> bool:
    return (Path(directory) / TOKENIZER_JSON).is_file()


def normalise_tokenizer_config(directory: Path) -> None:
    """Make transformers 4.x able to load a tokenizer saved by transformers 5.

    The file is replaced, never edited in place (it may be a hard link into a checkpoint).
    """
    path = Path(directory) / TOKENIZER_CONFIG
    if not path.is_file():
        return
    config = load_json_object(path, fix=_FIX)
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(path)


# -- the Hub cache ----------------------------------------------------------------------------------
def snapshot_dir(cache_dir: Path, repo_id: str, commit: str) -> Path:
    """Where huggingface_hub keeps ``repo_id`` at ``commit``: ``models--org--name/snapshots/<commit>``."""
    return Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def parse_snapshot(path: Path) -> tuple[str | None, str | None]:
    """``(repo_id, commit)`` of a path made by ``snapshot_dir``, else ``(None, None)``."""
    parts = Path(os.path.abspath(path)).parts
    if len(parts) >= 3 and parts[-2] == "snapshots":
        match = _SNAPSHOT.match(parts[-3])
        if match:
            return match["repo"].replace("--", "/"), parts[-1]
    return None, None


def file_sha256(path: Path, *, trust_hub_blob: bool = True) -> str:
    """The file's sha256. A Hub-cache symlink to ``blobs/<sha256>`` is trusted without reading
    (``trust_hub_blob``); ``trtbuild download`` verifies the bytes instead."""
    path = Path(path)
    if trust_hub_blob and path.is_symlink():
        target = Path(os.path.realpath(path))
        if target.parent.name == "blobs" and _SHA256.match(target.name):
            return target.name
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


__all__ = [
    "CONFIG",
    "GENERATION_CONFIG",
    "HF_QUANT_CONFIG",
    "TOKENIZER_JSON",
    "TokenizerFiles",
    "file_sha256",
    "has_fast_tokenizer",
    "is_sha256",
    "normalise_tokenizer_config",
    "parse_snapshot",
    "read_generation_config",
    "read_hf_config",
    "read_hf_config_if_any",
    "read_hf_quant_config",
    "read_tokenizer_files",
    "snapshot_dir",
    "text_config",
]
