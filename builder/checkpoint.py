"""What the builder needs to know about a Hugging Face checkpoint directory, read from its files.

``read_checkpoint`` parses ``config.json`` (and ``hf_quant_config.json`` for ModelOpt exports)
into ``CheckpointFacts``; ``source_info`` names the checkpoint (repo id and revision when it lives
in a Hugging Face cache snapshot) and hashes its files for the manifest and the build cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from trtbuild.errors import SpecError, first_error
from trtbuild.files.checkpoint_manifest import CHECKPOINT_MANIFEST, read_checkpoint_manifest
from trtbuild.files.hf import (
    file_sha256,
    has_fast_tokenizer,
    is_sha256,
    parse_snapshot,
    read_hf_config,
    read_hf_quant_config,
)
from trtbuild.model_facts import facts_from_config

TRUST_MIN_BYTES = 1 << 20  # recorded hashes are reused for files this large (weights)


@dataclass(frozen=True)
class PreQuantization:
    """A checkpoint that is already quantized (ModelOpt unified HF export or config.json)."""

    quant_algo: str | None  # "FP8", "NVFP4", "W4A16_AWQ", ...
    kv_cache_quant_algo: str | None  # "FP8", "INT8", ...
    source: str  # the file it was read from


@dataclass(frozen=True)
class CheckpointFacts:
    """Architecture facts the validation rules and the planner need."""

    path: Path
    architecture: str
    model_type: str
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None
    torch_dtype: str | None
    prequant: PreQuantization | None = None
    has_tokenizer: bool = False
    weights: tuple[str, ...] = field(default_factory=tuple)
    num_experts: int = 0
    intermediate_size: int = 0  # the MLP's width (0: unknown)

    @property
    def max_context(self) -> int | None:
        """Longest sequence the position embeddings cover (``None`` when the config is silent)."""
        return self.max_position_embeddings


def read_checkpoint(checkpoint: Path) -> CheckpointFacts:
    """Parse ``checkpoint/config.json``; a missing or unusable checkpoint is a ``SpecError``.

    The architecture numbers come from ``trtbuild.model_facts`` (shared with the planner).
    """

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise SpecError(
            f"checkpoint {checkpoint} is not a directory; pass a Hugging Face checkpoint directory "
            "(trtbuild download NAME prints one)"
        )
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise SpecError(
            f"{checkpoint} has no config.json; pass a Hugging Face checkpoint directory"
        )
    config = read_hf_config(checkpoint)
    hf_quant = read_hf_quant_config(checkpoint)
    try:
        model = facts_from_config(config, name=checkpoint.name, hf_quant_config=hf_quant)
    except SpecError as exc:
        raise SpecError(f"{checkpoint}: {exc.message}") from exc
    except ValidationError as exc:
        raise SpecError(f"{config_path}: invalid {first_error(exc)}") from exc
    weights = tuple(
        sorted(p.name for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin"))
    )
    return CheckpointFacts(
        path=checkpoint,
        architecture=model.architecture,
        model_type=model.model_type,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_kv_heads,
        num_hidden_layers=model.num_layers,
        hidden_size=model.hidden_size,
        vocab_size=model.vocab_size,
        max_position_embeddings=model.max_position_embeddings,
        torch_dtype=model.dtype,
        prequant=_prequantization(config, hf_quant),
        has_tokenizer=has_fast_tokenizer(checkpoint) or (checkpoint / "tokenizer.model").is_file(),
        weights=weights,
        num_experts=model.num_experts,
        intermediate_size=model.intermediate_size,
    )


def _prequantization(
    config: dict[str, Any], hf_quant: dict[str, Any] | None
) -> PreQuantization | None:
    """ModelOpt's ``hf_quant_config.json`` first, then config.json's ``quantization_config``.

    Kept beside ``model_facts.parse_quantization`` because the hardware rules need ModelOpt's
    algorithm names (FP8 vs NVFP4), not only the bit width.
    """
    quant = (hf_quant or {}).get("quantization") or {}
    if isinstance(quant, dict) and (quant.get("quant_algo") or quant.get("kv_cache_quant_algo")):
        algo, kv = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
        return PreQuantization(_upper(algo), _upper(kv), "hf_quant_config.json")
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        method = str(qc.get("quant_method", "")).lower()
        if method in ("fp8", "modelopt"):
            algo = qc.get("quant_algo") or ("FP8" if method == "fp8" else None)
            kv = qc.get("kv_cache_quant_algo") or qc.get("kv_cache_scheme")
            return PreQuantization(
                _upper(algo), _upper(kv if isinstance(kv, str) else None), "config.json"
            )
        if method:
            return PreQuantization(method.upper(), None, "config.json")
    return None


def _upper(value: object) -> str | None:
    return str(value).upper() if value else None


# -- source identity ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceInfo:
    path: Path
    repo_id: str | None
    revision: str | None
    files: dict[str, str]  # relative path -> sha256


def source_info(checkpoint: Path) -> SourceInfo:
    """Name and hash a checkpoint without re-reading big files where that can be avoided.

    Hub-cache blobs are named by their sha256. ``trtbuild download`` records repo id, commit and
    file hashes in ``trtbuild-checkpoint.json``; a recorded hash is reused for a large file whose
    size matches and which has not been modified since the record was written. That record is
    metadata, not model content, so it is not part of the hashes.
    """
    checkpoint = Path(checkpoint)
    repo_id, revision = parse_snapshot(checkpoint)
    record = _download_record(checkpoint)
    known: dict[str, tuple[int, str]] = {}
    if record is not None:
        repo_id, revision, known = repo_id or record[0], revision or record[1], record[2]
    files = hash_tree(checkpoint, skip=(CHECKPOINT_MANIFEST,), known=known)
    return SourceInfo(checkpoint.resolve(), repo_id, revision, files)


def _download_record(
    checkpoint: Path,
) -> tuple[str | None, str | None, dict[str, tuple[int, str]]] | None:
    """``(repo_id, commit, {path: (size, sha256)})`` from ``trtbuild-checkpoint.json``, if usable."""
    manifest = read_checkpoint_manifest(checkpoint)
    if manifest is None:
        return None
    written = (checkpoint / CHECKPOINT_MANIFEST).stat().st_mtime
    known: dict[str, tuple[int, str]] = {}
    for entry in manifest.files:
        f = checkpoint / entry.path
        if (
            entry.size >= TRUST_MIN_BYTES
            and is_sha256(entry.sha256)
            and f.is_file()
            and f.stat().st_size == entry.size
            and f.stat().st_mtime <= written
        ):
            known[entry.path] = (entry.size, entry.sha256)
    return manifest.repo_id, manifest.commit or manifest.revision, known


def mount_root(checkpoint: Path) -> Path:
    """The directory to bind-mount so the checkpoint's symlinks still resolve in a container."""
    checkpoint = Path(os.path.abspath(checkpoint))
    if parse_snapshot(checkpoint)[0] is not None:
        return checkpoint.parent.parent  # models--org--name (holds snapshots/ and blobs/)
    return checkpoint


def hash_tree(
    directory: Path, *, skip: tuple[str, ...] = (), known: dict[str, tuple[int, str]] | None = None
) -> dict[str, str]:
    """sha256 of every file below ``directory`` (dot-files and ``skip`` names left out);
    ``known`` maps relative paths to already-trusted ``(size, sha256)``."""
    known = known or {}
    directory = Path(directory)
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in skip:
            continue
        if path.is_file():
            name = rel.as_posix()
            out[name] = known[name][1] if name in known else file_sha256(path)
    return out
