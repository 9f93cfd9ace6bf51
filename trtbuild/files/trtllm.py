"""TensorRT-LLM's directories (1.2.x), read as data: converted checkpoints and engines.

Checkpoint: ``config.json`` (``architecture``, ``dtype``, ``mapping{world_size,tp_size,pp_size}``,
``quantization{quant_algo,kv_cache_quant_algo}``, ...) + ``rank{N}.safetensors`` per rank.
Engine: ``config.json`` written by rank 0 (``version``, ``pretrained_config`` = the checkpoint
config, ``build_config`` with the ``max_*`` limits, ``kv_cache_type``, ``plugin_config``) +
``rank{N}.engine`` per rank. Neither records the GPU it was built on; trtbuild's manifest does.
TensorRT-LLM writes these, so unknown keys are kept in ``raw`` and ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError, TrtbuildError
from trtbuild.files._json import load_json_object

CONFIG = "config.json"
_RANK = re.compile(r"^rank(\d+)\.(engine|safetensors)$")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Mapping:
    tp: int = 1
    pp: int = 1
    world_size: int = 1

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Mapping:
        tp, pp = _int(data.get("tp_size")) or 1, _int(data.get("pp_size")) or 1
        return cls(tp, pp, _int(data.get("world_size")) or tp * pp)


@dataclass(frozen=True)
class EngineConfig:
    """An engine's ``config.json``: what TensorRT-LLM says it built."""

    version: str | None
    mapping: Mapping
    dtype: str | None
    architecture: str | None
    max_position_embeddings: int | None
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    max_batch_size: int | None
    max_input_len: int | None
    max_seq_len: int | None
    max_num_tokens: int | None
    max_beam_width: int
    kv_cache_type: str | None
    plugin_config: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EngineConfig:
        pretrained, build = _dict(data.get("pretrained_config")), _dict(data.get("build_config"))
        quant = _dict(pretrained.get("quantization"))
        version = data.get("version")
        kv_type = build.get("kv_cache_type")
        return cls(
            version=str(version) if version else None,
            mapping=Mapping.parse(_dict(pretrained.get("mapping"))),
            dtype=pretrained.get("dtype"),
            architecture=pretrained.get("architecture"),
            max_position_embeddings=_int(pretrained.get("max_position_embeddings")),
            quant_algo=quant.get("quant_algo"),
            kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
            max_batch_size=_int(build.get("max_batch_size")),
            max_input_len=_int(build.get("max_input_len")),
            max_seq_len=_int(build.get("max_seq_len")),
            max_num_tokens=_int(build.get("max_num_tokens")),
            max_beam_width=_int(build.get("max_beam_width")) or 1,
            kv_cache_type=str(kv_type).upper() if kv_type else None,
            plugin_config=dict(_dict(build.get("plugin_config"))),
            raw=data,
        )

    @property
    def paged_context_fmha(self) -> bool | None:
        flag = self.plugin_config.get("use_paged_context_fmha")
        return bool(flag) if flag is not None else None


def is_engine_config(data: dict[str, Any]) -> bool:
    return isinstance(data.get("pretrained_config"), dict) and isinstance(
        data.get("build_config"), dict
    )


def read_engine_config(
    engine_dir: Path, *, fix: str = "rebuild the engine", error: type[TrtbuildError] = SpecError
) -> EngineConfig | None:
    """The engine ``config.json`` of ``engine_dir``; None when the directory holds no file, or a
    ``config.json`` that is not an engine's (a Hugging Face checkpoint's, say)."""
    path = Path(engine_dir) / CONFIG
    if not path.is_file():
        return None
    data = load_json_object(path, fix=fix, error=error)
    return EngineConfig.parse(data) if is_engine_config(data) else None


def try_engine_config(engine_dir: Path) -> EngineConfig | None:
    """``read_engine_config`` for callers that only ask whether there is a readable engine."""
    try:
        return read_engine_config(engine_dir) if Path(engine_dir).is_dir() else None
    except TrtbuildError:
        return None


def read_trtllm_checkpoint_config(
    directory: Path, *, error: type[TrtbuildError] = SpecError
) -> Mapping:
    """The mapping of a converted TensorRT-LLM checkpoint (``convert`` / ``quantize`` output)."""
    data = load_json_object(Path(directory) / CONFIG, fix="rerun the build", error=error)
    return Mapping.parse(_dict(data.get("mapping")))


def rank_files(directory: Path, suffix: str = ".engine") -> list[int]:
    """The ranks that have a ``rank{N}<suffix>`` file, sorted."""
    kind = suffix.lstrip(".")
    found = []
    for p in Path(directory).iterdir():
        match = _RANK.match(p.name)
        if match and match.group(2) == kind:
            found.append(int(match.group(1)))
    return sorted(found)


def missing_ranks(directory: Path, world_size: int, suffix: str) -> list[int]:
    """Ranks whose ``rank{N}{suffix}`` file is absent."""
    present = set(rank_files(directory, suffix))
    return [r for r in range(world_size) if r not in present]


__all__ = [
    "EngineConfig",
    "Mapping",
    "is_engine_config",
    "missing_ranks",
    "rank_files",
    "read_engine_config",
    "read_trtllm_checkpoint_config",
    "try_engine_config",
]
