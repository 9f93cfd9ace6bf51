"""Engine directories for trtbuild's portable runtime (``--runtime torch``).

There is nothing to compile: the "engine" is the checkpoint's weights as safetensors (cast to the
serving dtype when asked), its config, its generation config and a normalised tokenizer, plus the
trtbuild manifest. The Triton ``tensorrt_llm`` model of the portable flavor loads it with
transformers, on CPU or any CUDA GPU. ``trtbuild engine --runtime torch`` and
``trtbuild.builder.engine.prepare_portable_engine`` share the manifest and the build cache with the other runtimes.

With ``--tp N`` (N > 1) the weights are written once per rank instead, like TensorRT-LLM's
``rank{N}.engine`` files: ``rank0/`` ... ``rank{N-1}/``, each a checkpoint of its own (that rank's
part of every split weight, its share of the heads and of the MLP in its ``config.json``), so each
rank loads only its part. The split is ``trtbuild.runtime.parallel``'s (which the runtime shares).
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from trtbuild import __version__
from trtbuild.builder._files import copy_tokenizer
from trtbuild.builder.checkpoint import CheckpointFacts
from trtbuild.builder.manifest import SoftwareRecord
from trtbuild.errors import SpecError
from trtbuild.files.hf import read_hf_config
from trtbuild.runtime import parallel


def portable_software() -> SoftwareRecord:
    """The software a portable engine is prepared with (and that serving it will load): trtbuild,
    torch (which casts the weights) and transformers (which loads them at serve time)."""
    return SoftwareRecord(
        trtbuild=__version__,
        torch=_installed("torch"),
        transformers=_installed("transformers"),
    )


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_portable(facts: CheckpointFacts) -> None:
    """The portable runtime loads safetensors weights and a fast tokenizer."""
    if not any(w.endswith(".safetensors") for w in facts.weights):
        raise SpecError(
            f"{facts.path} has no *.safetensors weights; convert .bin weights with "
            "transformers' save_pretrained(safe_serialization=True) first"
        )
    if not (facts.path / "tokenizer.json").is_file():
        raise SpecError(f"{facts.path} has no tokenizer.json (a fast tokenizer is required)")


def write_portable(checkpoint: Path, out: Path, dtype: str, tp: int = 1) -> None:
    """Fill ``out`` (an empty directory) with the portable engine files (``tp`` > 1: one
    checkpoint per rank)."""
    copy_tokenizer(checkpoint, out)
    if tp > 1:
        _write_shards(checkpoint, out, dtype, tp)
        return
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, out / index.name)
    for weights in sorted(checkpoint.glob("*.safetensors")):
        _copy_weights(weights, out / weights.name, dtype)


def _copy_weights(src: Path, dst: Path, dtype: str) -> None:
    if dtype == "auto":
        shutil.copy2(src, dst)
        return
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file(_cast(tensors, dtype), str(dst), metadata={"format": "pt"})


def _cast(tensors: dict[str, Any], dtype: str) -> dict[str, Any]:
    if dtype == "auto":
        return tensors
    import torch

    target = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    return {k: (v.to(target) if v.is_floating_point() else v) for k, v in tensors.items()}


def _write_shards(checkpoint: Path, out: Path, dtype: str, tp: int) -> None:
    """``rank{r}/config.json`` and ``rank{r}/model.safetensors`` for every rank."""
    from safetensors.torch import load_file, save_file

    config = read_hf_config(checkpoint)
    tensors: dict[str, Any] = {}
    for weights in sorted(checkpoint.glob("*.safetensors")):
        tensors.update(load_file(str(weights)))
    tensors = _cast(tensors, dtype)
    for rank in range(tp):
        rank_dir = out / parallel.RANK_DIR.format(rank)
        rank_dir.mkdir()
        shard = parallel.shard_config(config, rank, tp)
        (rank_dir / "config.json").write_text(json.dumps(shard, indent=2) + "\n")
        part = {k: parallel.shard_tensor(k, v, rank, tp) for k, v in tensors.items()}
        save_file(part, str(rank_dir / "model.safetensors"), metadata={"format": "pt"})
