"""Engine directories for the LLM-API flavor (``--runtime llmapi``): no compile step.

TensorRT-LLM's LLM API (PyTorch backend) loads a Hugging Face checkpoint directly, including
pre-quantized ModelOpt exports (``hf_quant_config.json``), so the "engine" directory is the
checkpoint itself: weights hard-linked (copied across file systems), config and tokenizer files
copied and the tokenizer normalised, plus the manifest. The manifest's ``llm_args`` are the
keyword arguments for ``LLM(...)`` (or the llmapi Triton model's ``model.yaml``) that match the
validated settings. Nothing is cached: linking the checkpoint is already instant.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from trtbuild.builder._files import MODEL_FILES, TOKENIZER_FILES, copy_tokenizer, link_or_copy
from trtbuild.builder.settings import BuildSettings


def write_llmapi(checkpoint: Path, out: Path) -> None:
    """Fill ``out`` (an empty directory) with the checkpoint's files."""
    copied = {*MODEL_FILES, *TOKENIZER_FILES}
    for path in sorted(checkpoint.rglob("*")):
        rel = path.relative_to(checkpoint)
        hidden = any(part.startswith(".") for part in rel.parts)
        if (
            hidden
            or not path.is_file()
            or any(fnmatch.fnmatchcase(rel.as_posix(), c) for c in copied)
        ):
            continue
        link_or_copy(path, out / rel)
    copy_tokenizer(checkpoint, out)  # fresh copies (never links): safe to normalise


def llm_args(settings: BuildSettings) -> dict[str, Any]:
    """``LLM(model=<engine dir>, **llm_args)`` for TensorRT-LLM's PyTorch backend."""
    lim = settings.limits
    return {
        "tensor_parallel_size": settings.tp,
        "pipeline_parallel_size": settings.pp,
        "dtype": settings.dtype,
        "max_batch_size": lim.max_batch_size,
        "max_num_tokens": lim.max_num_tokens,
        "max_seq_len": lim.max_seq_len,
        "enable_chunked_prefill": settings.chunked_context,
        "kv_cache_config": {"dtype": settings.kv_cache_dtype or "auto"},
    }
