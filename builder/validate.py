"""Checks that run before any work: the target GPU, the model and the settings must fit together.

Pure functions over ``BuildSettings``, ``CheckpointFacts`` and a ``Target``; each failed rule is a
one-line ``SpecError`` (exit 2) that names the fix. The hardware rules come from TensorRT-LLM 1.2:
FP8 needs SM >= 89 (Ada, Hopper), NVFP4 needs SM >= 100 (Blackwell), BF16 needs SM >= 80 (Ampere),
and on SM 100-119 ``trtllm-build`` refuses INT8/INT4 weights, SmoothQuant and an INT8 KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from trtbuild.builder.checkpoint import CheckpointFacts
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import SpecError
from trtbuild.gpus import DetectedGpu, get_gpu
from trtbuild.vocab import SLOT_MODEL_TYPES, SM_BF16, SM_FP8, SM_NO_INT8_WEIGHTS, SM_NVFP4


@dataclass(frozen=True)
class Target:
    """The GPU an engine is built for."""

    name: str  # trtbuild's name ("h100-sxm"), or the driver's when the table lacks it
    sm: int
    source: Literal["named", "detected"]
    count: int | None  # GPUs of this SM visible here; None when planning away from the GPU

    @property
    def compute_capability(self) -> str:
        return f"{self.sm // 10}.{self.sm % 10}"

    @property
    def here(self) -> bool:
        """This machine has the target GPU (so an engine can be built for it here)."""
        return self.count is not None


def resolve_target(name: str | None, detected: Sequence[DetectedGpu]) -> Target | None:
    """``--gpu NAME`` (from the GPU table) or the first detected GPU; None when neither exists."""
    if name:
        spec = get_gpu(name)
        same = sum(1 for d in detected if d.sm == spec.sm)
        return Target(spec.name, spec.sm, "named", same or None)
    if detected:
        first = detected[0]
        label = first.spec.name if first.spec else first.name
        return Target(label, first.sm, "detected", sum(1 for d in detected if d.sm == first.sm))
    return None


def paged_context_fmha(settings: BuildSettings) -> bool:
    """TensorRT-LLM turns paged context FMHA off for an INT8 KV cache, and for an FP8 KV cache
    without FP8 weights (build.py); trtbuild sets the flag to what the engine will really have."""
    if settings.kv_cache_dtype == "int8":
        return False
    return not (settings.kv_cache_dtype == "fp8" and settings.quant != "fp8")


def fp8_context_fmha(settings: BuildSettings) -> bool:
    """FP8 context FMHA with paged context FMHA needs FP8 weights and an FP8 KV cache."""
    return settings.quant == "fp8" and settings.kv_cache_dtype == "fp8"


def validate(settings: BuildSettings, facts: CheckpointFacts, target: Target | None) -> list[str]:
    """Raise ``SpecError`` for the first broken rule; return notes worth telling the user."""
    notes: list[str] = []
    _check_runtime(settings, facts)
    _check_parallel(settings, facts, target)
    _check_limits(settings, facts)
    if target is not None:
        _check_hardware(settings, facts, target)
    if settings.runtime == "tensorrtllm" and not paged_context_fmha(settings):
        why = (
            "INT8 KV cache"
            if settings.kv_cache_dtype == "int8"
            else "FP8 KV cache without FP8 weights"
        )
        notes.append(
            f"{why}: paged context FMHA is off, so KV-cache reuse and chunked context are "
            "unavailable with this engine"
        )
    return notes


def _check_runtime(s: BuildSettings, facts: CheckpointFacts) -> None:
    pre = facts.prequant
    if s.runtime == "torch":
        if s.pp > 1:
            raise SpecError(
                "the portable runtime (--runtime torch) has no pipeline parallelism; drop --pp "
                "(--tp splits the model across processes) or use --runtime tensorrtllm"
            )
        if s.tp > 1:
            _check_portable_tp(s, facts)
        if s.quant or s.kv_cache_dtype:
            raise SpecError(
                "the portable runtime (--runtime torch) does not quantize; drop --quant/"
                "--kv-cache-dtype or use --runtime tensorrtllm"
            )
        if pre is not None:
            raise SpecError(
                f"{facts.path} is pre-quantized ({pre.quant_algo} in {pre.source}); the portable "
                "runtime needs an unquantized checkpoint, or use --runtime llmapi"
            )
    elif s.runtime == "llmapi":
        if s.quant:
            raise SpecError(
                "--runtime llmapi does not quantize weights (no compile step); pass a pre-quantized "
                "ModelOpt checkpoint (hf_quant_config.json) or use --runtime tensorrtllm"
            )
        if s.kv_cache_dtype == "int8":
            raise SpecError(
                "the LLM API KV cache is auto or fp8; use --kv-cache-dtype fp8 or --runtime tensorrtllm"
            )
    elif pre is not None:
        raise SpecError(
            f"{facts.path} is already quantized ({pre.quant_algo} in {pre.source}); serve it with "
            "--runtime llmapi, or build from the unquantized checkpoint with --quant"
        )
    if s.runtime == "tensorrtllm" and s.dtype == "float32" and s.quantized:
        raise SpecError("quantized engines need a 16-bit --dtype; use --dtype bfloat16 or float16")


def _check_portable_tp(s: BuildSettings, facts: CheckpointFacts) -> None:
    """The portable runtime splits heads and the MLP evenly (``trtbuild.runtime.parallel``), for
    the models its slot KV cache serves."""
    if facts.model_type not in SLOT_MODEL_TYPES:
        raise SpecError(
            f"--tp {s.tp} with --runtime torch splits Llama-family models "
            f"({', '.join(sorted(SLOT_MODEL_TYPES))}), not {facts.model_type!r}; drop --tp"
        )
    sizes = {
        "num_attention_heads": facts.num_attention_heads,
        "num_key_value_heads": facts.num_key_value_heads,
        "intermediate_size": facts.intermediate_size,
    }
    bad = [f"{key} {value}" for key, value in sizes.items() if value % s.tp]
    if bad:
        common = math.gcd(*sizes.values())
        fits = [str(d) for d in range(1, common + 1) if common % d == 0]
        raise SpecError(
            f"--tp {s.tp} does not divide the model's {', '.join(bad)}; use --tp "
            f"{' or '.join(fits)}"
        )


def _check_parallel(s: BuildSettings, facts: CheckpointFacts, target: Target | None) -> None:
    heads, kv = facts.num_attention_heads, facts.num_key_value_heads
    if heads % s.tp:
        raise SpecError(
            f"--tp {s.tp} does not divide the model's {heads} attention heads; use one of "
            f"{_divisors(heads)}"
        )
    if kv % s.tp and s.tp % kv:
        raise SpecError(
            f"--tp {s.tp} does not fit the model's {kv} KV heads (TP must divide them or be a "
            f"multiple of them); use one of {_divisors(heads, fits=kv)}"
        )
    if s.pp > facts.num_hidden_layers:
        raise SpecError(
            f"--pp {s.pp} exceeds the model's {facts.num_hidden_layers} layers; lower --pp"
        )
    on_gpus = s.runtime != "torch"  # the portable runtime's ranks may run on CPU
    if on_gpus and target is not None and target.count is not None and s.world_size > target.count:
        raise SpecError(
            f"TP x PP = {s.world_size} needs {s.world_size} GPUs but {target.count} {target.name} "
            f"{'is' if target.count == 1 else 'are'} visible here; lower --tp/--pp or build on a "
            "node with enough GPUs"
        )


def _divisors(heads: int, fits: int | None = None) -> str:
    ok = [
        d
        for d in range(1, heads + 1)
        if heads % d == 0 and (fits is None or fits % d == 0 or d % fits == 0)
    ]
    return ", ".join(str(d) for d in ok)


def _check_limits(s: BuildSettings, facts: CheckpointFacts) -> None:
    lim = s.limits
    if lim.max_input_len >= lim.max_seq_len:
        raise SpecError(
            f"--max-input-len ({lim.max_input_len}) must be below --max-seq-len ({lim.max_seq_len}) "
            "to leave room for output; raise --max-seq-len or lower --max-input-len"
        )
    context = facts.max_context
    if context is not None and lim.max_seq_len > context:
        raise SpecError(
            f"--max-seq-len {lim.max_seq_len} exceeds the model's max_position_embeddings "
            f"({context}); lower --max-seq-len to {context} or less"
        )
    if lim.max_num_tokens < lim.max_input_len and not s.chunked_context:
        raise SpecError(
            f"--max-num-tokens ({lim.max_num_tokens}) is below --max-input-len "
            f"({lim.max_input_len}), so the longest prompt cannot be prefilled; raise "
            "--max-num-tokens to at least --max-input-len"
        )
    if s.chunked_context and s.runtime == "tensorrtllm" and not paged_context_fmha(s):
        raise SpecError(
            "chunked context needs paged context FMHA, which TensorRT-LLM turns off for this KV "
            "cache type; drop chunked context or use --kv-cache-dtype fp8 with --quant fp8"
        )


def _check_hardware(s: BuildSettings, facts: CheckpointFacts, t: Target) -> None:
    where = f"{t.name} (SM {t.sm})"
    if s.dtype == "bfloat16" and t.sm < SM_BF16:
        raise SpecError(f"bfloat16 needs SM >= {SM_BF16}; {where} lacks it, use --dtype float16")
    if s.quant == "fp8" and t.sm < SM_FP8:
        raise SpecError(
            f"FP8 weights need SM >= {SM_FP8} (Ada, Hopper or newer); {where} lacks FP8, use "
            "--quant int8-sq or int4-awq"
        )
    if s.kv_cache_dtype == "fp8" and t.sm < SM_FP8:
        raise SpecError(
            f"an FP8 KV cache needs SM >= {SM_FP8}; {where} lacks FP8, use --kv-cache-dtype int8"
        )
    if s.runtime == "tensorrtllm" and t.sm in SM_NO_INT8_WEIGHTS:
        bad = [
            x
            for x, on in (
                ("--quant int8-sq", s.quant == "int8-sq"),
                ("--quant int4-awq", s.quant == "int4-awq"),
                ("--kv-cache-dtype int8", s.kv_cache_dtype == "int8"),
            )
            if on
        ]
        if bad:
            raise SpecError(
                f"TensorRT-LLM does not build {bad[0]} for {where}; use --quant fp8 and "
                "--kv-cache-dtype fp8"
            )
    pre = facts.prequant
    if pre is not None:
        algo = (pre.quant_algo or "").upper()
        if algo.startswith("NVFP4") and t.sm < SM_NVFP4:
            raise SpecError(
                f"{facts.path} is NVFP4, which needs SM >= {SM_NVFP4} (Blackwell); {where} cannot "
                "run it, use an FP8 or unquantized checkpoint"
            )
        if (algo.startswith("FP8") or pre.kv_cache_quant_algo == "FP8") and t.sm < SM_FP8:
            raise SpecError(
                f"{facts.path} is FP8 ({pre.source}), which needs SM >= {SM_FP8}; {where} cannot "
                "run it, use an unquantized checkpoint"
            )
