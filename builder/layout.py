"""What a build wrote, checked against what was asked for (the formats: ``trtbuild.files.trtllm``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import RuntimeFailure
from trtbuild.files.trtllm import (
    missing_ranks,
    read_engine_config,
    read_trtllm_checkpoint_config,
)
from trtbuild.specs import Limits

KV_ALGO = {"fp8": "FP8", "int8": "INT8"}
WEIGHT_ALGO = {  # what quantize_and_export writes for each --quant (ModelOpt QuantAlgo names)
    "fp8": ("FP8",),
    "int8-sq": ("W8A8_SQ_PER_CHANNEL", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"),
    "int4-awq": ("W4A16_AWQ",),
}


@dataclass(frozen=True)
class EngineFacts:
    """What the engine's own config.json says, checked against what was asked for."""

    version: str | None
    limits: Limits
    tp: int
    pp: int
    world_size: int
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    plugin_config: dict[str, Any]


def verify_checkpoint(directory: Path, settings: BuildSettings) -> None:
    """The converted checkpoint has the mapping and quantization that were asked for."""
    mapping = read_trtllm_checkpoint_config(directory, error=RuntimeFailure)
    _expect(directory, "mapping.tp_size", mapping.tp, settings.tp)
    _expect(directory, "mapping.pp_size", mapping.pp, settings.pp)
    missing = missing_ranks(directory, settings.world_size, ".safetensors")
    if missing:
        raise RuntimeFailure(
            f"checkpoint {directory} lacks rank{missing[0]}.safetensors "
            f"(ranks missing: {', '.join(map(str, missing))})"
        )


def verify_engine(directory: Path, settings: BuildSettings) -> EngineFacts:
    """Check the engine directory ``trtllm-build`` wrote; return the limits it really has."""
    config = read_engine_config(directory, fix="rerun the build", error=RuntimeFailure)
    if config is None:
        raise RuntimeFailure(f"engine {directory} has no TensorRT-LLM config.json; rerun the build")
    tp, pp = config.mapping.tp, config.mapping.pp
    _expect(directory, "pretrained_config.mapping.tp_size", tp, settings.tp)
    _expect(directory, "pretrained_config.mapping.pp_size", pp, settings.pp)
    missing = missing_ranks(directory, settings.world_size, ".engine")
    if missing:
        raise RuntimeFailure(
            f"engine {directory} lacks rank{missing[0]}.engine "
            f"(ranks missing: {', '.join(map(str, missing))})"
        )
    kv_type = config.kv_cache_type
    if kv_type and kv_type not in ("PAGED", "KVCACHETYPE.PAGED"):
        raise RuntimeFailure(f"engine {directory} has kv_cache_type {kv_type}, expected PAGED")
    kv_algo = config.kv_cache_quant_algo
    want_kv = KV_ALGO.get(settings.kv_cache_dtype or "")
    _expect(directory, "quantization.kv_cache_quant_algo", kv_algo, want_kv)
    algo = config.quant_algo
    if settings.quant and algo not in WEIGHT_ALGO[settings.quant]:
        raise RuntimeFailure(
            f"engine {directory} has quant_algo {algo}, expected "
            f"{' or '.join(WEIGHT_ALGO[settings.quant])}"
        )
    asked = settings.limits
    limits = Limits(  # trtllm-build may clip max_input_len / max_num_tokens; trust the engine
        max_batch_size=config.max_batch_size or asked.max_batch_size,
        max_input_len=config.max_input_len or asked.max_input_len,
        max_seq_len=config.max_seq_len or asked.max_seq_len,
        max_num_tokens=config.max_num_tokens or asked.max_num_tokens,
    )
    return EngineFacts(
        version=config.version,
        limits=limits,
        tp=tp,
        pp=pp,
        world_size=tp * pp,
        quant_algo=algo,
        kv_cache_quant_algo=kv_algo,
        plugin_config=config.plugin_config,
    )


def _expect(directory: Path, key: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeFailure(f"{directory}/config.json has {key} = {got!r}, expected {want!r}")
