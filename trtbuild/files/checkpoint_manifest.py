"""``trtbuild-checkpoint.json``: what a downloaded checkpoint directory holds and where it came from.

Written last by ``trtbuild download`` (atomically), so a directory without it is incomplete. The
builder reuses its recorded hashes for large files; the planner reads its model facts.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from trtbuild import __version__
from trtbuild._known_models import KNOWN_CONFIGS
from trtbuild.errors import SpecError
from trtbuild.files.hf import read_hf_config, read_hf_quant_config
from trtbuild.model_facts import ModelFacts, facts_from_config
from trtbuild.specs import StrictModel

CHECKPOINT_MANIFEST = "trtbuild-checkpoint.json"
MANIFEST_FORMAT = 1


class FileEntry(StrictModel):
    path: str
    size: int = Field(ge=0)
    sha256: str


class CheckpointManifest(StrictModel):
    """``trtbuild-checkpoint.json``: what this directory holds and where it came from."""

    format: int = MANIFEST_FORMAT
    repo_id: str | None = Field(description="owner/name on the Hub; None for a local checkpoint")
    revision: str | None = Field(description="what was asked for (branch, tag or commit)")
    commit: str | None = Field(description="the commit every file came from")
    source_dir: str | None = Field(None, description="where a local checkpoint was read from")
    files: list[FileEntry]
    model: ModelFacts
    trtbuild_version: str = __version__

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def read_checkpoint_manifest(directory: Path) -> CheckpointManifest | None:
    """The manifest in ``directory``, or None if there is none (an incomplete or foreign dir, or one
    written by another trtbuild version that no longer validates)."""
    path = Path(directory) / CHECKPOINT_MANIFEST
    if not path.is_file():
        return None
    try:
        return CheckpointManifest.model_validate_json(path.read_text())
    except (ValueError, OSError):
        return None


def write_checkpoint_manifest(directory: Path, manifest: CheckpointManifest) -> Path:
    target = Path(directory) / CHECKPOINT_MANIFEST
    tmp = Path(directory) / f".{CHECKPOINT_MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, target)
    return target


def checkpoint_facts(directory: Path) -> ModelFacts:
    """Model facts from a checkpoint directory's ``config.json`` (and ``hf_quant_config.json``)."""
    directory = Path(directory)
    return facts_from_config(
        read_hf_config(directory),
        name=directory.name,
        hf_quant_config=read_hf_quant_config(directory),
    )


def read_model_facts(source: str | Path) -> ModelFacts:
    """Facts from a checkpoint dir (its manifest, else its config.json), a config.json, or
    (offline) one of the well-known repo ids."""
    path = Path(source).expanduser()
    if path.is_dir():
        manifest = read_checkpoint_manifest(path)
        if manifest is not None:
            return manifest.model
        if not (path / "config.json").is_file():
            raise SpecError(
                f"{path} has no config.json; give a checkpoint directory or a config.json."
            )
        return checkpoint_facts(path)
    if path.is_file():
        return facts_from_config(read_hf_config(path), name=path.parent.name or path.stem)
    known = {k.lower(): k for k in KNOWN_CONFIGS}
    key = known.get(str(source).lower())
    if key is not None:
        return facts_from_config(KNOWN_CONFIGS[key], name=key)
    raise SpecError(
        f"{source} is not a checkpoint directory or config.json, nor a model trtbuild knows offline "
        f"({', '.join(sorted(KNOWN_CONFIGS))}). Run 'trtbuild download {source}' first and pass "
        "the directory it prints."
    )


__all__ = [
    "CHECKPOINT_MANIFEST",
    "CheckpointManifest",
    "FileEntry",
    "checkpoint_facts",
    "read_checkpoint_manifest",
    "read_model_facts",
    "write_checkpoint_manifest",
]
