"""TensorRT-LLM's on-disk formats (1.2.x), read as data: checkpoint and engine directories.

Checkpoint: ``config.json`` (``architecture``, ``dtype``, ``mapping{world_size,tp_size,pp_size}``,
``quantization{quant_algo,kv_cache_quant_algo}``, ...) + ``rank{N}.safetensors`` per rank.
Engine: ``config.json`` written by rank 0 (``version``, ``pretrained_config`` = the checkpoint
config, ``build_config`` with the ``max_*`` limits, ``kv_cache_type``, ``plugin_config``) +
``rank{N}.engine`` per rank. Neither records the GPU it was built on; the trtbuild manifest does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild._jsonfile import load_json_object
from trtbuild.builder.settings import BuildSettings, EngineLimits
from trtbuild.errors import RuntimeFailure

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
    limits: EngineLimits
    tp: int
    pp: int
    world_size: int
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    plugin_config: dict[str, Any]


def _load(path: Path) -> dict[str, Any]:
    return load_json_object(path, fix="rerun the build", error=RuntimeFailure)


def missing_ranks(directory: Path, world_size: int, suffix: str) -> list[int]:
    """Ranks whose ``rank{N}{suffix}`` file is absent."""
    return [r for r in range(world_size) if not (directory / f"rank{r}{suffix}").is_file()]


def verify_checkpoint(directory: Path, settings: BuildSettings) -> None:
    """The converted checkpoint has the mapping and quantization that were asked for."""
    config = _load(directory / "config.json")
    mapping = config.get("mapping") or {}
    _expect(directory, "mapping.tp_size", mapping.get("tp_size", 1), settings.tp)
    _expect(directory, "mapping.pp_size", mapping.get("pp_size", 1), settings.pp)
    missing = missing_ranks(directory, settings.world_size, ".safetensors")
    if missing:
        raise RuntimeFailure(
            f"checkpoint {directory} lacks rank{missing[0]}.safetensors "
            f"(ranks missing: {', '.join(map(str, missing))})"
        )


def verify_engine(directory: Path, settings: BuildSettings) -> EngineFacts:
    """Check the engine directory ``trtllm-build`` wrote; return the limits it really has."""
    config = _load(directory / "config.json")
    pretrained = config.get("pretrained_config") or {}
    build = config.get("build_config") or {}
    mapping = pretrained.get("mapping") or {}
    quant = pretrained.get("quantization") or {}
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    _expect(directory, "pretrained_config.mapping.tp_size", tp, settings.tp)
    _expect(directory, "pretrained_config.mapping.pp_size", pp, settings.pp)
    missing = missing_ranks(directory, settings.world_size, ".engine")
    if missing:
        raise RuntimeFailure(
            f"engine {directory} lacks rank{missing[0]}.engine "
            f"(ranks missing: {', '.join(map(str, missing))})"
        )
    kv_type = str(build.get("kv_cache_type", "")).upper()
    if kv_type and kv_type not in ("PAGED", "KVCACHETYPE.PAGED"):
        raise RuntimeFailure(f"engine {directory} has kv_cache_type {kv_type}, expected PAGED")
    kv_algo = quant.get("kv_cache_quant_algo")
    want_kv = KV_ALGO.get(settings.kv_cache_dtype or "")
    _expect(directory, "quantization.kv_cache_quant_algo", kv_algo, want_kv)
    algo = quant.get("quant_algo")
    if settings.quant and algo not in WEIGHT_ALGO[settings.quant]:
        raise RuntimeFailure(
            f"engine {directory} has quant_algo {algo}, expected {' or '.join(WEIGHT_ALGO[settings.quant])}"
        )
    asked = settings.limits
    limits = EngineLimits(  # trtllm-build may clip max_input_len / max_num_tokens; trust the engine
        max_batch_size=int(build.get("max_batch_size", asked.max_batch_size)),
        max_input_len=int(build.get("max_input_len", asked.max_input_len)),
        max_seq_len=int(build.get("max_seq_len", asked.max_seq_len)),
        max_num_tokens=int(build.get("max_num_tokens", asked.max_num_tokens)),
    )
    return EngineFacts(
        version=config.get("version"),
        limits=limits,
        tp=tp,
        pp=pp,
        world_size=tp * pp,
        quant_algo=algo,
        kv_cache_quant_algo=kv_algo,
        plugin_config=dict(build.get("plugin_config") or {}),
    )


def _expect(directory: Path, key: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeFailure(f"{directory}/config.json has {key} = {got!r}, expected {want!r}")
