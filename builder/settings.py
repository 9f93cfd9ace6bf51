"""Resolve an ``EngineSpec`` into concrete build settings: the options, then ``--plan``, then defaults.

Pure: the inputs are the spec, the parsed plan, the checkpoint facts and the target GPU; nothing
here touches the machine. ``BuildSettings`` is what the manifest records and the cache key hashes.
"""

from __future__ import annotations

from typing import Any, Literal

from trtbuild.builder.checkpoint import CheckpointFacts
from trtbuild.plan import Plan
from trtbuild.specs import EngineDtype, EngineSpec, Limits, Runtime, StrictModel
from trtbuild.vocab import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_INPUT_LEN,
    DEFAULT_MAX_NUM_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    supports_bf16,
)

# trtbuild's defaults when neither the options nor the plan say (the planner picks better ones).
DEFAULT_CALIB_SIZE = 512
DEFAULT_CALIB_DATASET = "cnn_dailymail"  # quantize.py's default (fetched from the Hub)

Quant = Literal["fp8", "int8-sq", "int4-awq"]
KvQuant = Literal["fp8", "int8"]


class BuildSettings(StrictModel):
    """Everything that decides what gets built. Two equal settings build the same engine."""

    runtime: Runtime
    tp: int = 1
    pp: int = 1
    dtype: EngineDtype  # "auto" only for the portable runtime (keep the checkpoint's)
    quant: Quant | None = None
    kv_cache_dtype: KvQuant | None = None
    limits: Limits
    chunked_context: bool = False
    calib_size: int | None = None  # only when a quantize phase runs
    calib_dataset: str | None = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def quantized(self) -> bool:
        """A ModelOpt quantize phase replaces the plain conversion."""
        return self.quant is not None or self.kv_cache_dtype is not None


def resolve(
    spec: EngineSpec, facts: CheckpointFacts, *, plan: Plan | None = None, sm: int | None = None
) -> BuildSettings:
    """Fill every setting: explicit option, else plan, else a default derived from the model."""

    def pick(name: str) -> Any:
        value = getattr(spec, name)
        return value if value is not None else getattr(plan, name, None)

    quant = pick("quant")
    kv = pick("kv_cache_dtype")
    quant = None if quant == "none" else quant
    kv = None if kv == "auto" else kv
    limits = _limits(
        facts,
        pick("max_batch_size"),
        pick("max_input_len"),
        pick("max_seq_len"),
        pick("max_num_tokens"),
    )
    quantized = spec.runtime == "tensorrtllm" and (quant is not None or kv is not None)
    return BuildSettings(
        runtime=spec.runtime,
        tp=pick("tp") or 1,
        pp=pick("pp") or 1,
        dtype=_dtype(spec.runtime, pick("dtype"), facts, sm),
        quant=quant,
        kv_cache_dtype=kv,
        limits=limits,
        chunked_context=bool(pick("chunked_context")),
        calib_size=(spec.calib_size or DEFAULT_CALIB_SIZE) if quantized else None,
        calib_dataset=(spec.calib_dataset or DEFAULT_CALIB_DATASET) if quantized else None,
    )


def _dtype(runtime: str, dtype: str | None, facts: CheckpointFacts, sm: int | None) -> EngineDtype:
    """The portable runtime keeps the checkpoint's dtype; engines need a 16-bit one.

    For engines: the checkpoint's ``torch_dtype`` when it is bfloat16/float16, else bfloat16 where
    the GPU has it (SM >= 80) and float16 elsewhere.
    """
    if dtype not in (None, "auto"):
        return dtype  # type: ignore[return-value]
    if runtime == "torch":
        return "auto"
    if facts.torch_dtype in ("bfloat16", "float16"):
        return facts.torch_dtype
    return "float16" if sm is not None and not supports_bf16(sm) else "bfloat16"


def _limits(
    facts: CheckpointFacts,
    max_batch_size: int | None,
    max_input_len: int | None,
    max_seq_len: int | None,
    max_num_tokens: int | None,
) -> Limits:
    """Unset limits: trtbuild's defaults, shrunk to fit a model with a shorter context."""
    context = facts.max_context
    seq = max_seq_len or (min(DEFAULT_MAX_SEQ_LEN, context) if context else DEFAULT_MAX_SEQ_LEN)
    inp = max_input_len or min(DEFAULT_MAX_INPUT_LEN, max(1, seq // 2))
    return Limits(
        max_batch_size=max_batch_size or DEFAULT_MAX_BATCH_SIZE,
        max_input_len=inp,
        max_seq_len=seq,
        max_num_tokens=max_num_tokens or max(DEFAULT_MAX_NUM_TOKENS, inp),
    )
