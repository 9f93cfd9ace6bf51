"""What an engine directory (TensorRT-LLM's) or a Hugging Face checkpoint (llmapi, the portable
runtime) says about itself, as the ``EngineInfo`` a ``RepoSpec`` records and the consistency rules
check against. The files are read by ``trtbuild.files``; this module interprets them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtbuild.builder.manifest import Manifest
from trtbuild.errors import SpecError
from trtbuild.files.hf import read_hf_config_if_any, read_hf_quant_config, text_config
from trtbuild.files.trtllm import rank_files, read_engine_config
from trtbuild.specs import EngineInfo, Runtime


def layout_runtime(engine_dir: Path) -> Runtime | None:
    """``tensorrtllm`` for a TensorRT-LLM engine directory; None for anything else."""
    return "tensorrtllm" if read_engine_config(engine_dir) is not None else None


def tensorrtllm_info(engine_dir: Path, manifest: Manifest | None = None) -> EngineInfo:
    config = read_engine_config(engine_dir)
    if config is None:
        raise SpecError(
            f"{engine_dir}/config.json is not a TensorRT-LLM engine config (no pretrained_config/"
            "build_config); build the engine with 'trtbuild engine', or pick another --runtime"
        )
    version = config.version or (manifest.software.tensorrt_llm if manifest else None)
    return EngineInfo(
        runtime="tensorrtllm",
        trtllm_version=version,
        gpu=manifest.gpu.name if manifest and manifest.gpu else None,
        sm=manifest.gpu.sm if manifest and manifest.gpu else None,
        tp=config.mapping.tp,
        pp=config.mapping.pp,
        world_size=config.mapping.world_size,
        rank_files=len(rank_files(engine_dir)),
        max_batch_size=config.max_batch_size,
        max_input_len=config.max_input_len,
        max_seq_len=config.max_seq_len,
        max_num_tokens=config.max_num_tokens,
        max_beam_width=config.max_beam_width,
        max_position_embeddings=config.max_position_embeddings,
        dtype=config.dtype,
        quant_algo=config.quant_algo,
        kv_cache_quant_algo=config.kv_cache_quant_algo,
        paged_context_fmha=config.paged_context_fmha,
    )


def checkpoint_info(
    engine_dir: Path, runtime: Runtime, manifest: Manifest | None = None
) -> EngineInfo:
    """A Hugging Face checkpoint served as is (``llmapi``, ``torch``)."""
    config = read_hf_config_if_any(engine_dir)
    if config is None:
        raise SpecError(
            f"{engine_dir} has no config.json; pass the engine directory 'trtbuild engine' wrote, "
            "or a Hugging Face checkpoint directory"
        )
    hf_quant = (read_hf_quant_config(engine_dir) or {}).get("quantization") or {}
    quant_algo = hf_quant.get("quant_algo")
    kv_algo = hf_quant.get("kv_cache_quant_algo")
    info: dict[str, Any] = {}
    if manifest is not None:
        q = manifest.quantization
        quant_algo = quant_algo or q.quant_algo
        kv_algo = kv_algo or q.kv_cache_quant_algo or (q.kv_cache or "").upper() or None
        info = {
            "tp": manifest.parallel.tp,
            "pp": manifest.parallel.pp,
            "world_size": manifest.parallel.world_size,
            "trtllm_version": manifest.software.tensorrt_llm,
            "gpu": manifest.gpu.name if manifest.gpu else None,
            "sm": manifest.gpu.sm if manifest.gpu else None,
            "dtype": manifest.dtype,
        }
    text = text_config(config)
    return EngineInfo(
        runtime=runtime,
        max_position_embeddings=_int(text.get("max_position_embeddings")),
        quant_algo=quant_algo,
        kv_cache_quant_algo=kv_algo,
        prequantized=bool(hf_quant.get("quant_algo")),
        **info,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


__all__ = ["checkpoint_info", "layout_runtime", "tensorrtllm_info"]
