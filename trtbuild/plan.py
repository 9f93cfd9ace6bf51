"""The deployment planner: model facts + GPU facts + a request -> a frozen ``Plan``.

``make_plan`` is pure (no files, no GPU detection): the same inputs give the same plan on any
machine. Every number it uses is shown in ``Plan.arithmetic`` and every choice in ``Plan.reasons``.

The order of choices (split the model when the model is the problem, add replicas when the
traffic is):

1. Fits on one GPU with room for the KV cache the target concurrency needs -> replicas only.
2. Else the smallest tensor-parallel size inside one node (TP must divide the attention heads;
   all-reduce every layer wants NVLink).
3. Else pipeline parallelism across nodes (one node of TP per stage).
4. Replicas = GPUs / (TP x PP).

A layout must leave KV-cache room for its share of the target concurrency, not only hold the
weights: 70B FP8 "fits" one 80 GB H100 but leaves ~8 GiB of KV, and TensorRT-LLM's published
throughput for it collapses at long outputs (344 tok/s at 128/2048 vs 5,654 at TP2, in
TensorRT-LLM's published H100 performance tables), so such a layout is rejected unless the KV for
the target fits.

Estimates (labelled as such in the output): a fixed 2 GiB per GPU for the CUDA context and
cuBLAS/TensorRT/NCCL workspaces (1.5 GiB for the portable runtime on one GPU); activations of
``max_num_tokens x (4 x hidden + 3 x MLP width / TP)`` values; fp32 logits for ``max_batch_size`` last tokens; 60% of the roofline as the "stated
efficiency" for cost. Rooflines are upper bounds, not predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

from pydantic import Field

from trtbuild.errors import SpecError, UserError
from trtbuild.files.checkpoint_manifest import read_model_facts
from trtbuild.gpus import GpuSpec, get_gpu, known_gpus
from trtbuild.model_facts import ModelFacts, ParamCount
from trtbuild.specs import PlanRequest, PlanSpec, ServingLimits, StrictModel
from trtbuild.vocab import DEFAULT_MAX_NUM_TOKENS, SM_FP8

GiB = 2**30
RUNTIME_RESERVE_BYTES = 2 * GiB  # CUDA context, cuBLAS / TensorRT / NCCL workspaces (estimate)
# the portable runtime on one GPU: tritonserver's and the stub's CUDA contexts, cuBLAS and the
# CUDA-graph pool; no TensorRT or NCCL workspaces (estimate; on an H200 the served processes held
# 1.9 GiB beyond weights and KV cache, activations included: docs/perf/h200.md round 4)
PORTABLE_RESERVE_BYTES = 3 * GiB // 2
KV_CACHE_FREE_GPU_MEM_FRACTION = 0.9  # TensorRT-LLM's default kv_cache_free_gpu_mem_fraction
TOKENS_PER_BLOCK = 32  # trtllm-build --tokens_per_block default: the KV cache is paged in blocks
EFFICIENCY = 0.6  # fraction of the roofline a well-tuned deployment reaches (assumption, stated)
AWQ_GROUP_SIZE = 128  # one fp16 scale per 128 int4 weights

Dtype16 = Literal["bfloat16", "float16"]
Quant = Literal["none", "fp8", "int8-sq", "int4-awq"]
KvDtype = Literal["auto", "fp8", "int8"]

_WEIGHT_BYTES: dict[str, float] = {
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "int8-sq": 1.0,
    "int4-awq": 0.5 + 2 / AWQ_GROUP_SIZE,
}
_LABEL = {
    "bfloat16": "BF16",
    "float16": "FP16",
    "fp8": "FP8",
    "int8-sq": "INT8 (SmoothQuant)",
    "int4-awq": "INT4-AWQ",
    "int8": "INT8",
}
_QUANT_ALGO = {"fp8": "FP8", "int8-sq": "W8A8_SQ_PER_CHANNEL", "int4-awq": "W4A16_AWQ"}
_KV_QUANT_ALGO = {"fp8": "FP8", "int8": "INT8"}


class PlanDoesNotFit(UserError):
    """No layout holds the model (or the KV cache for the target) on the GPUs given."""


class Step(StrictModel):
    """One line of arithmetic: what, the number, and how it was computed."""

    name: str
    value: float
    unit: str
    formula: str


class Plan(StrictModel):
    """A deployment layout and the limits to build and render with. ``--json`` writes this."""

    model: str
    gpu: str
    gpu_sm: int
    gpus_per_node: int
    nodes: int
    # precisions, with the TensorRT-LLM names the engine builder passes on
    dtype: Dtype16
    quant: Quant
    kv_cache_dtype: KvDtype
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    # model arithmetic
    params: int
    active_params: int
    weight_bytes: int = Field(description="the whole model at the chosen precision")
    weight_bytes_per_rank: int = Field(
        description="the fullest GPU: its layers, embedding, lm_head"
    )
    kv_bytes_per_token: int = Field(description="all layers and KV heads")
    kv_bytes_per_token_per_rank: int
    reserve_bytes_per_rank: int = Field(description="runtime + activations + logits (estimate)")
    gpu_memory_bytes: int
    kv_cache_bytes_per_rank: int
    # layout
    tp: int
    pp: int
    replicas: int
    gpus_used: int
    # capacity per replica
    kv_cache_tokens: int = Field(description="per replica, in whole 32-token blocks")
    max_concurrent_sequences: int = Field(description="per replica, at max_seq_len each")
    concurrency: int
    concurrency_per_replica: int
    # limits to build and render with
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    max_seq_len: int
    max_num_tokens: int
    kv_cache_free_gpu_mem_fraction: float
    runtime: Literal["tensorrtllm", "torch"] = Field(
        "tensorrtllm", description="torch: trtbuild's portable runtime (KV: max_batch_size slots)"
    )
    # speed (per replica; upper bounds)
    decode_roofline_tokens_per_s: float = Field(
        description="per replica at concurrency_per_replica"
    )
    decode_roofline_tokens_per_s_per_sequence: float = Field(description="batch 1")
    prefill_tokens_per_s: float = Field(description="compute bound, per replica")
    time_to_first_token_ms: float = Field(description="compute bound, one max_input_len prompt")
    efficiency: float
    price_per_gpu_hour: float | None
    cost_per_million_output_tokens_roofline: float | None
    cost_per_million_output_tokens: float | None = Field(description="at `efficiency`")
    reasons: list[str]
    arithmetic: list[Step]

    @property
    def gpu_memory_used_bytes_per_rank(self) -> int:
        """What serving takes on the fullest GPU: weights + KV cache + reserve."""
        return (
            self.weight_bytes_per_rank + self.kv_cache_bytes_per_rank + self.reserve_bytes_per_rank
        )

    def serving_limits(self, **overrides: int) -> ServingLimits:
        """The serving limits for the repository and the portable runtime."""
        values = {
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len,
            "max_num_tokens": self.max_num_tokens,
            **overrides,
        }
        return ServingLimits(**values)


# -- the pure core ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ctx:
    facts: ModelFacts
    gpu: GpuSpec
    request: PlanRequest
    counts: ParamCount
    dtype: Dtype16
    quant: Quant
    kv_cache_dtype: KvDtype
    reasons: tuple[str, ...]

    @property
    def weight_precision(self) -> str:
        return self.dtype if self.quant == "none" else self.quant

    @property
    def linear_bytes_per_param(self) -> float:
        return _WEIGHT_BYTES[self.weight_precision]

    @property
    def act_bytes(self) -> int:
        return 2

    @property
    def kv_bytes_per_value(self) -> int:
        return 1 if self.kv_cache_dtype in ("fp8", "int8") else 2

    @property
    def max_seq_len(self) -> int:
        return self.request.max_input_len + self.request.max_output_len

    @property
    def max_num_tokens(self) -> int:
        return max(DEFAULT_MAX_NUM_TOKENS, self.request.max_input_len)

    @property
    def peak_flops(self) -> float:
        """Dense tensor-core FLOP/s per GPU for this precision (INT8 TOPS are 2x BF16 on these GPUs)."""
        if self.quant == "fp8" and self.gpu.fp8_dense_tflops:
            return self.gpu.fp8_dense_tflops * 1e12
        if self.quant == "int8-sq":
            return 2 * self.gpu.bf16_dense_tflops * 1e12
        return self.gpu.bf16_dense_tflops * 1e12

    @property
    def label(self) -> str:
        return f"{self.facts.name} {_LABEL[self.weight_precision]}"

    @property
    def gpus_total(self) -> int:
        return self.request.gpus_per_node * self.request.nodes

    @property
    def ridge_batch(self) -> int:
        """Decode batch above which a step is compute-bound, not bandwidth-bound (rounded up to 8)."""
        bytes_per_param = self.linear_bytes_per_param
        flop_per_byte = self.peak_flops / (self.gpu.hbm_bandwidth_gbps * 1e9)
        batch = flop_per_byte * bytes_per_param / 2  # 2 FLOPs per parameter per token
        return max(8, math.ceil(batch / 8) * 8)

    @property
    def portable(self) -> bool:
        """trtbuild's portable runtime: one KV slot of max_seq_len per batch row, preallocated."""
        return self.request.runtime == "torch"

    @property
    def batch_cap(self) -> int:
        """The largest max_batch_size the plan may pick (sizes the logits reserve)."""
        if self.portable:  # every row is a preallocated slot: no more rows than the traffic
            return min(4096, self.request.concurrency)
        return min(4096, max(self.ridge_batch, self.request.concurrency))


@dataclass(frozen=True)
class _Layout:
    tp: int
    pp: int
    replicas: int
    layers_per_stage: int
    weights_rank: int
    linear_rank: float
    embedding_rank: int
    lm_head_rank: int
    expert_bytes_rank: float
    runtime_reserve: int
    activation_bytes: int
    logits_bytes: int
    kv_per_token_rank: int
    kv_bytes_rank: int
    kv_tokens: int
    max_sequences: int
    needed_per_replica: int
    fits_weights: bool

    @property
    def reserve(self) -> int:
        return self.runtime_reserve + self.activation_bytes + self.logits_bytes

    @property
    def ok(self) -> bool:
        return self.fits_weights and self.max_sequences >= max(1, self.needed_per_replica)


def make_plan(facts: ModelFacts, gpu: GpuSpec, request: PlanRequest) -> Plan:
    """Choose TP, PP and replicas and the engine limits; raise ``PlanDoesNotFit`` with what would fit."""
    ctx = _resolve(facts, gpu, request)
    layouts = [_evaluate(ctx, tp, pp) for tp, pp in _candidates(ctx)]
    chosen = next((lay for lay in layouts if lay.ok), None)
    if chosen is None:
        raise _does_not_fit(ctx, layouts)
    return _build(ctx, chosen, layouts)


def _resolve(facts: ModelFacts, gpu: GpuSpec, request: PlanRequest) -> _Ctx:
    reasons: list[str] = []
    dtype: Dtype16
    if request.dtype != "auto":
        dtype = request.dtype
    elif facts.dtype == "float16":
        dtype = "float16"
    else:
        dtype = "bfloat16"
        if facts.dtype != "bfloat16":
            reasons.append(f"dtype=bfloat16: the checkpoint is {facts.dtype}; serving uses 16-bit")
    pre = facts.quantization
    pre_quant = pre.trtbuild_quant if pre else None
    if pre is not None and pre_quant is None:
        raise SpecError(
            f"{facts.name} is pre-quantized with {pre.method} ({pre.weight_bits} bits), which trtbuild "
            "does not serve; use the unquantized checkpoint with --quant fp8|int8-sq|int4-awq."
        )
    quant: Quant
    if request.quant == "auto":
        quant = pre_quant or "none"
        if pre_quant:
            reasons.append(
                f"quant={quant}: the checkpoint is pre-quantized ({pre.method if pre else ''})"
            )
    else:
        quant = request.quant
        if pre_quant and quant != pre_quant:
            raise SpecError(
                f"{facts.name} is already quantized ({pre_quant}); drop --quant or start from the "
                "unquantized checkpoint."
            )
    kv: KvDtype = request.kv_cache_dtype
    if kv == "auto" and pre is not None and pre.kv_cache in ("fp8", "int8"):
        kv = cast(KvDtype, pre.kv_cache)
    for what, value in (("FP8 weights", quant), ("an FP8 KV cache", kv)):
        if value == "fp8" and not gpu.supports_fp8:
            raise SpecError(
                f"{what} need SM >= {SM_FP8} (Ada, Hopper, Blackwell); {gpu.name} is SM {gpu.sm}. "
                "Use --quant int8-sq or int4-awq, --kv-cache-dtype int8, or a newer GPU."
            )
    if quant == "fp8":
        reasons.append(f"quant=fp8: {gpu.name} is SM {gpu.sm} (FP8 needs SM >= {SM_FP8})")
    if request.runtime == "torch" and (quant != "none" or kv != "auto"):
        raise SpecError(
            "the portable runtime (--runtime torch) does not quantize; drop --quant/"
            "--kv-cache-dtype, or plan for --runtime tensorrtllm"
        )
    seq = request.max_input_len + request.max_output_len
    if seq > facts.max_position_embeddings:
        raise SpecError(
            f"max_input_len + max_output_len = {seq:,} exceeds {facts.name}'s context of "
            f"{facts.max_position_embeddings:,} tokens; lower --max-input-len or --max-output-len."
        )
    return _Ctx(
        facts=facts,
        gpu=gpu,
        request=request,
        counts=facts.params,
        dtype=dtype,
        quant=quant,
        kv_cache_dtype=kv,
        reasons=tuple(reasons),
    )


def _valid_tp(facts: ModelFacts, tp: int) -> bool:
    kv = facts.num_kv_heads
    return facts.num_attention_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


def _candidates(ctx: _Ctx) -> list[tuple[int, int]]:
    per_node = ctx.request.gpus_per_node
    tps = [tp for tp in range(1, per_node + 1) if _valid_tp(ctx.facts, tp)]
    layouts = [(tp, 1) for tp in tps]
    widest = tps[-1]
    if ctx.portable:  # the portable runtime splits by TP only
        return layouts
    for pp in range(2, min(ctx.request.nodes, ctx.facts.num_layers) + 1):
        layouts.append((widest, pp))
    return layouts


def _evaluate(ctx: _Ctx, tp: int, pp: int) -> _Layout:
    c, f, req = ctx.counts, ctx.facts, ctx.request
    layers = math.ceil(f.num_layers / pp)
    dense_bytes = ctx.act_bytes  # embedding, lm_head, norms and routers stay 16-bit
    linear_rank = layers * c.linear_per_layer * ctx.linear_bytes_per_param / tp
    expert_params = c.mlp_per_layer if f.is_moe else 0
    expert_bytes_rank = layers * expert_params * ctx.linear_bytes_per_param / tp
    embedding = (
        c.embedding * dense_bytes
    )  # replicated on every TP rank (use_parallel_embedding off)
    lm_head = math.ceil(c.lm_head * dense_bytes / tp)
    if pp == 1:
        embedding_rank, lm_head_rank = embedding, lm_head
    elif embedding >= lm_head:  # the first stage is the fullest
        embedding_rank, lm_head_rank = embedding, 0
    else:
        embedding_rank, lm_head_rank = 0, lm_head
    other = (layers * (c.norm_per_layer + c.router_per_layer) + c.final_norm) * dense_bytes
    weights_rank = math.ceil(linear_rank) + embedding_rank + lm_head_rank + other

    mlp_width = (
        f.moe_intermediate_size * f.experts_per_token + f.shared_expert_intermediate_size
        if f.is_moe
        else f.intermediate_size
    )
    activation = ctx.max_num_tokens * ctx.act_bytes * (4 * f.hidden_size + 3 * mlp_width // tp)
    logits = ctx.batch_cap * math.ceil(f.vocab_size / tp) * 4
    runtime = PORTABLE_RESERVE_BYTES if ctx.portable and tp * pp == 1 else RUNTIME_RESERVE_BYTES
    reserve = runtime + activation + logits
    memory = ctx.gpu.memory_bytes

    kv_heads_rank = math.ceil(f.num_kv_heads / tp)  # TP > KV heads replicates them
    kv_per_token_rank = 2 * layers * kv_heads_rank * f.head_dim * ctx.kv_bytes_per_value
    free = memory - weights_rank - reserve
    kv_bytes_rank = int(max(0, free) * KV_CACHE_FREE_GPU_MEM_FRACTION)
    replicas = ctx.gpus_total // (tp * pp)
    needed = math.ceil(req.concurrency / replicas) if replicas else req.concurrency
    if ctx.portable:  # the portable runtime: min(that budget, one slot per sequence needed)
        slot_bytes = ctx.max_seq_len * kv_per_token_rank
        sequences = min(kv_bytes_rank // slot_bytes, needed)
        kv_bytes_rank = sequences * slot_bytes
        kv_tokens = sequences * ctx.max_seq_len
    else:
        blocks = kv_bytes_rank // (kv_per_token_rank * TOKENS_PER_BLOCK)
        sequences = blocks // math.ceil(ctx.max_seq_len / TOKENS_PER_BLOCK)
        kv_tokens = blocks * TOKENS_PER_BLOCK
    return _Layout(
        tp=tp,
        pp=pp,
        replicas=replicas,
        layers_per_stage=layers,
        weights_rank=weights_rank,
        linear_rank=linear_rank,
        embedding_rank=embedding_rank,
        lm_head_rank=lm_head_rank,
        expert_bytes_rank=expert_bytes_rank,
        runtime_reserve=runtime,
        activation_bytes=activation,
        logits_bytes=logits,
        kv_per_token_rank=kv_per_token_rank,
        kv_bytes_rank=kv_bytes_rank,
        kv_tokens=kv_tokens,
        max_sequences=sequences,
        needed_per_replica=needed,
        fits_weights=free > 0 and replicas > 0,
    )


def _weight_bytes(ctx: _Ctx) -> int:
    c = ctx.counts
    linear = c.layers * c.linear_per_layer * ctx.linear_bytes_per_param
    dense = c.total - c.layers * c.linear_per_layer
    return math.ceil(linear) + dense * ctx.act_bytes


def _decode(ctx: _Ctx, lay: _Layout, batch: int) -> float:
    """Tokens/s per replica at ``batch`` sequences: min(bandwidth bound, compute bound)."""
    f, c = ctx.facts, ctx.counts
    context = ctx.request.max_input_len + ctx.request.max_output_len / 2
    touched = 1.0
    if f.is_moe:  # expected share of experts a step of `batch` tokens reads
        touched = 1 - (1 - f.experts_per_token / f.num_experts) ** batch
    weights_read = (
        lay.weights_rank - lay.embedding_rank - lay.expert_bytes_rank * (1 - touched)
    )  # of the embedding only `batch` rows are read
    bytes_per_step = lay.pp * weights_read + batch * context * lay.kv_per_token_rank
    memory_time = bytes_per_step / (ctx.gpu.hbm_bandwidth_gbps * 1e9)
    flops_per_token = 2 * (c.active - c.embedding) + 4 * f.num_layers * _q_dim(f) * context
    compute_time = batch * flops_per_token / (lay.tp * lay.pp * ctx.peak_flops)
    return batch / max(memory_time, compute_time)


def _q_dim(f: ModelFacts) -> int:
    return f.num_attention_heads * f.head_dim


def _prefill_flops_per_token(ctx: _Ctx) -> float:
    c, f = ctx.counts, ctx.facts
    linear_active = c.active - c.embedding - (0 if c.tied else c.lm_head)
    return 2 * linear_active + 2 * f.num_layers * _q_dim(f) * ctx.request.max_input_len


def _build(ctx: _Ctx, lay: _Layout, layouts: list[_Layout]) -> Plan:
    f, c, req, gpu = ctx.facts, ctx.counts, ctx.request, ctx.gpu
    reasons = list(ctx.reasons)
    for rejected in layouts:
        if rejected is lay:
            break
        reasons.append(_rejection(ctx, rejected))
    reasons.extend(_layout_reasons(ctx, lay))

    per_replica = lay.needed_per_replica
    max_batch = max(per_replica, min(lay.max_sequences, ctx.batch_cap))
    if ctx.portable:
        reasons.append(
            f"max_batch_size={max_batch}: the portable runtime preallocates one KV slot of "
            f"{ctx.max_seq_len:,} tokens per row, so as many rows as sequences per replica"
        )
    else:
        reasons.append(
            f"max_batch_size={max_batch}: the KV cache holds {lay.max_sequences:,} sequences of "
            f"{ctx.max_seq_len:,} tokens per replica; above ~{ctx.ridge_batch} a decode step on "
            f"{gpu.name} is compute-bound, so a larger batch adds latency, not throughput"
            if max_batch < lay.max_sequences
            else f"max_batch_size={max_batch}: all the sequences the KV cache holds at "
            f"{ctx.max_seq_len:,} tokens each (target {per_replica} per replica)"
        )
    reasons.append(
        f"max_num_tokens={ctx.max_num_tokens}: TensorRT-LLM's default prefill budget per step, "
        f">= max_input_len {req.max_input_len:,} so the longest prompt prefills in one step"
    )
    reasons.append(f"max_seq_len={ctx.max_seq_len}: max_input_len + max_output_len")
    reasons.append(
        f"kv_cache_free_gpu_mem_fraction={KV_CACHE_FREE_GPU_MEM_FRACTION}: the portable runtime's "
        "KV cache is the smaller of that share of the free memory and max_batch_size slots"
        if ctx.portable
        else f"kv_cache_free_gpu_mem_fraction={KV_CACHE_FREE_GPU_MEM_FRACTION}: TensorRT-LLM's "
        "default; the rest of the free memory is slack for fragmentation"
    )

    decode = _decode(ctx, lay, max(1, min(per_replica, max_batch)))
    single = _decode(ctx, lay, 1)
    prefill = lay.tp * lay.pp * ctx.peak_flops / _prefill_flops_per_token(ctx)
    gpus_per_replica = lay.tp * lay.pp
    cost_roofline = cost = None
    if req.price_per_gpu_hour is not None:
        cost_roofline = req.price_per_gpu_hour * gpus_per_replica / 3600 / decode * 1e6
        cost = cost_roofline / EFFICIENCY
    return Plan(
        model=f.name,
        gpu=gpu.name,
        gpu_sm=gpu.sm,
        gpus_per_node=req.gpus_per_node,
        nodes=req.nodes,
        dtype=ctx.dtype,
        quant=ctx.quant,
        kv_cache_dtype=ctx.kv_cache_dtype,
        quant_algo=_QUANT_ALGO.get(ctx.quant),
        kv_cache_quant_algo=_KV_QUANT_ALGO.get(ctx.kv_cache_dtype),
        params=c.total,
        active_params=c.active,
        weight_bytes=_weight_bytes(ctx),
        weight_bytes_per_rank=lay.weights_rank,
        kv_bytes_per_token=f.kv_bytes_per_token(ctx.kv_bytes_per_value),
        kv_bytes_per_token_per_rank=lay.kv_per_token_rank,
        reserve_bytes_per_rank=lay.reserve,
        gpu_memory_bytes=gpu.memory_bytes,
        kv_cache_bytes_per_rank=lay.kv_bytes_rank,
        tp=lay.tp,
        pp=lay.pp,
        replicas=lay.replicas,
        gpus_used=lay.replicas * gpus_per_replica,
        kv_cache_tokens=lay.kv_tokens,
        max_concurrent_sequences=lay.max_sequences,
        concurrency=req.concurrency,
        concurrency_per_replica=per_replica,
        max_batch_size=max_batch,
        max_input_len=req.max_input_len,
        max_output_len=req.max_output_len,
        max_seq_len=ctx.max_seq_len,
        max_num_tokens=ctx.max_num_tokens,
        kv_cache_free_gpu_mem_fraction=KV_CACHE_FREE_GPU_MEM_FRACTION,
        runtime=req.runtime,
        decode_roofline_tokens_per_s=round(decode, 1),
        decode_roofline_tokens_per_s_per_sequence=round(single, 1),
        prefill_tokens_per_s=round(prefill, 1),
        time_to_first_token_ms=round(req.max_input_len / prefill * 1000, 2),
        efficiency=EFFICIENCY,
        price_per_gpu_hour=req.price_per_gpu_hour,
        cost_per_million_output_tokens_roofline=_round_money(cost_roofline),
        cost_per_million_output_tokens=_round_money(cost),
        reasons=reasons,
        arithmetic=_arithmetic(ctx, lay, max_batch, decode, single, prefill),
    )


def _round_money(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _layout_reasons(ctx: _Ctx, lay: _Layout) -> list[str]:
    f, gpu, req = ctx.facts, ctx.gpu, ctx.request
    reasons = []
    if lay.tp == 1 and lay.pp == 1:
        reasons.append(
            f"TP=1: {ctx.label} weights ({_gib(_weight_bytes(ctx))}) and the KV cache for "
            f"{lay.needed_per_replica} sequences fit on one {gpu.name} ({gpu.memory_gib} GiB): "
            "scale with replicas only"
        )
    elif lay.pp == 1:
        link = (
            f"NVLink {gpu.nvlink_gbps:g} GB/s"
            if gpu.nvlink_gbps
            else "PCIe only (no NVLink): expect slower all-reduce"
        )
        reasons.append(
            f"TP={lay.tp}: the smallest tensor-parallel size that fits within one node "
            f"({f.num_attention_heads} heads / {lay.tp} = {f.num_attention_heads // lay.tp} per GPU; {link})"
        )
    else:
        reasons.append(
            f"TP={lay.tp}, PP={lay.pp}: one node ({req.gpus_per_node} GPU"
            f"{'s' if req.gpus_per_node > 1 else ''}) is not enough; "
            f"pipeline {lay.layers_per_stage} layers per stage across {lay.pp} nodes"
        )
    idle = ctx.gpus_total - lay.replicas * lay.tp * lay.pp
    reasons.append(
        f"replicas={lay.replicas}: {ctx.gpus_total} GPUs / (TP {lay.tp} x PP {lay.pp})"
        + (f", {idle} GPU(s) left idle" if idle else "")
        + f"; {req.concurrency} concurrent sequences -> {lay.needed_per_replica} per replica"
    )
    return reasons


def _rejection(ctx: _Ctx, lay: _Layout) -> str:
    gpu = ctx.gpu
    name = f"TP={lay.tp}" + (f", PP={lay.pp}" if lay.pp > 1 else "")
    if not lay.fits_weights:
        what = (
            f"{ctx.label} weights are {_gib(_weight_bytes(ctx))}"
            if lay.tp * lay.pp == 1
            else f"{_gib(lay.weights_rank)} of weights per GPU"
        )
        return (
            f"not {name}: {what} + {_gib(lay.reserve)} runtime reserve > "
            f"{gpu.memory_gib} GiB per {gpu.name}"
        )
    return (
        f"not {name}: the weights fit ({_gib(lay.weights_rank)} of {gpu.memory_gib} GiB) but the "
        f"KV cache left ({_gib(lay.kv_bytes_rank)}) holds {lay.max_sequences} sequences of "
        f"{ctx.max_seq_len:,} tokens, fewer than the {lay.needed_per_replica} per replica the "
        f"target concurrency needs"
    )


def _does_not_fit(ctx: _Ctx, layouts: list[_Layout]) -> PlanDoesNotFit:
    req, gpu = ctx.request, ctx.gpu
    where = f"{req.nodes} x {req.gpus_per_node}" if req.nodes > 1 else f"{req.gpus_per_node}"
    where += f" x {gpu.name}"
    fitting = [lay for lay in layouts if lay.fits_weights]
    if not fitting:
        widest = layouts[-1]
        message = (
            f"{ctx.label} does not fit on {where}: weights are {_gib(_weight_bytes(ctx))}; the widest "
            f"layout (TP={widest.tp}, PP={widest.pp}) needs {_gib(widest.weights_rank)} + "
            f"{_gib(widest.reserve)} reserve per GPU of {gpu.memory_gib} GiB."
        )
    else:
        best = max(fitting, key=lambda lay: lay.max_sequences * lay.replicas)
        message = (
            f"{ctx.label} fits on {where} but leaves KV-cache room for at most "
            f"{best.max_sequences * best.replicas} concurrent sequences of {ctx.max_seq_len:,} tokens "
            f"(TP={best.tp}, PP={best.pp}, {best.replicas} replica(s)), not the {req.concurrency} asked for."
        )
    fixes = _suggestions(ctx, fitting)
    details = "To make it fit:\n" + "\n".join(f"  {fix}" for fix in fixes) if fixes else None
    return PlanDoesNotFit(message, details=details)


def _attempt(facts: ModelFacts, gpu: GpuSpec, request: PlanRequest) -> tuple[_Layout | None, int]:
    """The layout ``make_plan`` would choose (or None) and the most sequences any layout holds."""
    try:
        ctx = _resolve(facts, gpu, request)
    except SpecError:
        return None, 0
    layouts = [_evaluate(ctx, tp, pp) for tp, pp in _candidates(ctx)]
    capacity = max(
        (lay.max_sequences * lay.replicas for lay in layouts if lay.fits_weights), default=0
    )
    return next((lay for lay in layouts if lay.ok), None), capacity


def _suggestions(ctx: _Ctx, fitting: list[_Layout]) -> list[str]:
    """Single changes that make a plan, each with the layout it gives; else the change plus the
    concurrency it can carry."""
    f, gpu, req = ctx.facts, ctx.gpu, ctx.request
    fixes: list[str] = []
    partial: list[str] = []
    if fitting:
        best = max(fitting, key=lambda lay: lay.max_sequences * lay.replicas)
        fixes.append(
            f"--concurrency {best.max_sequences * best.replicas} "
            f"(TP={best.tp}, PP={best.pp}, {best.replicas} replica(s))"
        )

    def consider(option: str, target: GpuSpec, **update: object) -> bool:
        lay, capacity = _attempt(f, target, req.model_copy(update=update))
        if lay is not None:
            fixes.append(f"{option} (TP={lay.tp}, PP={lay.pp}, {lay.replicas} replica(s))")
            return True
        if capacity > 0:
            partial.append(f"{option} --concurrency {capacity}")
        return False

    kv_options = ("fp8", "int8") if gpu.supports_fp8 else ("int8",)
    for kv in kv_options:
        if kv != ctx.kv_cache_dtype and consider(
            f"--kv-cache-dtype {kv}", gpu, kv_cache_dtype=kv, quant=ctx.quant
        ):
            break
    if f.quantization is None:
        for quant in ("fp8", "int4-awq") if gpu.supports_fp8 else ("int8-sq", "int4-awq"):
            if quant != ctx.quant and consider(
                f"--quant {quant.removesuffix('-sq')}", gpu, quant=quant
            ):
                break
    for gpus in (n for n in (2, 4, 8) if n > req.gpus_per_node):
        if consider(f"--gpus {gpus}", gpu, gpus_per_node=gpus):
            break
    if req.gpus_per_node >= 8:
        for nodes in range(req.nodes + 1, req.nodes * 4 + 1):
            if consider(f"--nodes {nodes}", gpu, nodes=nodes):
                break
    for name in known_gpus():
        other = get_gpu(name)
        if other.memory_gib > gpu.memory_gib and consider(f"--gpu {name}", other):
            break
    return fixes + partial[: max(0, 4 - len(fixes))]


def _arithmetic(
    ctx: _Ctx, lay: _Layout, max_batch: int, decode: float, single: float, prefill: float
) -> list[Step]:
    f, c, gpu, req = ctx.facts, ctx.counts, ctx.gpu, ctx.request
    wb = ctx.linear_bytes_per_param
    linear = c.layers * c.linear_per_layer
    dense = c.total - linear
    kv_b = ctx.kv_bytes_per_value
    batch = max(1, min(lay.needed_per_replica, max_batch))
    context = req.max_input_len + req.max_output_len / 2
    head = "" if c.tied else f" + lm_head {c.lm_head:,}"
    steps = [
        Step(
            name="params",
            value=c.total,
            unit="parameters",
            formula=(
                f"embedding {c.embedding:,}{head} + {c.layers} layers x "
                f"{c.linear_per_layer + c.router_per_layer + c.norm_per_layer:,} + final norm {c.final_norm:,}"
                + (
                    f"; active per token {c.active:,} ({f.experts_per_token} of {f.num_experts} experts)"
                    if f.is_moe
                    else ""
                )
            ),
        ),
        Step(
            name="weight_bytes",
            value=_weight_bytes(ctx),
            unit="bytes",
            formula=(
                f"{linear:,} linear params x {wb:g} B + {dense:,} embedding/lm_head/norm params x 2 B "
                f"= {_gb(_weight_bytes(ctx))} ({_gib(_weight_bytes(ctx))})"
            ),
        ),
        Step(
            name="weight_bytes_per_rank",
            value=lay.weights_rank,
            unit="bytes",
            formula=(
                f"{lay.layers_per_stage} layers x {c.linear_per_layer:,} x {wb:g} B / TP {lay.tp}"
                f" + embedding {_gib(lay.embedding_rank)} (replicated) + lm_head {_gib(lay.lm_head_rank)}"
                f" (split by TP) + norms = {_gib(lay.weights_rank)}"
            ),
        ),
        Step(
            name="kv_bytes_per_token",
            value=f.kv_bytes_per_token(kv_b),
            unit="bytes",
            formula=(
                f"2 x {f.num_layers} layers x {f.num_kv_heads} KV heads x {f.head_dim} head_dim x {kv_b} B"
                f" = {f.kv_bytes_per_token(kv_b):,} B ({f.kv_bytes_per_token(kv_b) / 1024:g} KiB)"
            ),
        ),
        Step(
            name="kv_bytes_per_token_per_rank",
            value=lay.kv_per_token_rank,
            unit="bytes",
            formula=(
                f"2 x {lay.layers_per_stage} layers x {math.ceil(f.num_kv_heads / lay.tp)} KV heads x "
                f"{f.head_dim} x {kv_b} B = {lay.kv_per_token_rank / 1024:g} KiB"
            ),
        ),
        Step(
            name="reserve_bytes_per_rank",
            value=lay.reserve,
            unit="bytes",
            formula=(
                f"runtime {_gib(lay.runtime_reserve)} + activations {ctx.max_num_tokens} tokens x "
                f"(4 x {f.hidden_size} + 3 x MLP / TP) x 2 B = {_gib(lay.activation_bytes)} + logits "
                f"{ctx.batch_cap} x {f.vocab_size:,} / TP x 4 B = {_gib(lay.logits_bytes)} (estimate)"
            ),
        ),
        Step(
            name="kv_cache_bytes_per_rank",
            value=lay.kv_bytes_rank,
            unit="bytes",
            formula=(
                f"min(({gpu.memory_gib} GiB - {_gib(lay.weights_rank)} weights - "
                f"{_gib(lay.reserve)} reserve) x {KV_CACHE_FREE_GPU_MEM_FRACTION}, "
                f"{lay.max_sequences} slots x {ctx.max_seq_len:,} tokens x "
                f"{lay.kv_per_token_rank / 1024:g} KiB) = {_gib(lay.kv_bytes_rank)} (portable runtime)"
                if ctx.portable
                else f"({gpu.memory_gib} GiB - {_gib(lay.weights_rank)} weights - "
                f"{_gib(lay.reserve)} reserve) x {KV_CACHE_FREE_GPU_MEM_FRACTION} = "
                f"{_gib(lay.kv_bytes_rank)}"
            ),
        ),
        Step(
            name="kv_cache_tokens",
            value=lay.kv_tokens,
            unit="tokens",
            formula=(
                f"{lay.max_sequences} slots x {ctx.max_seq_len:,} tokens = {lay.kv_tokens:,} "
                "tokens per replica"
                if ctx.portable
                else f"{_gib(lay.kv_bytes_rank)} / {lay.kv_per_token_rank / 1024:g} KiB per token, "
                f"in {TOKENS_PER_BLOCK}-token blocks = {lay.kv_tokens:,} tokens per replica"
            ),
        ),
        Step(
            name="max_concurrent_sequences",
            value=lay.max_sequences,
            unit="sequences",
            formula=(
                f"{lay.kv_tokens:,} tokens / {ctx.max_seq_len:,} tokens per sequence "
                f"({req.max_input_len:,} in + {req.max_output_len:,} out) = {lay.max_sequences:,} per replica"
            ),
        ),
        Step(
            name="decode_roofline_tokens_per_s",
            value=round(decode, 1),
            unit="tokens/s",
            formula=(
                f"batch {batch}: {batch} / ((PP {lay.pp} x weights read + {batch} x {context:,.0f} avg "
                f"context x {lay.kv_per_token_rank / 1024:g} KiB) / {gpu.hbm_bandwidth_gbps:,.0f} GB/s), "
                f"capped by compute; batch 1: {single:,.1f} tokens/s "
                f"({1000 / single:.2f} ms per token)"
            ),
        ),
        Step(
            name="prefill_tokens_per_s",
            value=round(prefill, 1),
            unit="tokens/s",
            formula=(
                f"{lay.tp * lay.pp} GPUs x {ctx.peak_flops / 1e12:,.0f} TFLOPS / "
                f"{_prefill_flops_per_token(ctx) / 1e9:,.1f} GFLOP per prompt token "
                f"(2 x active params + attention at {req.max_input_len:,} tokens)"
            ),
        ),
    ]
    if req.price_per_gpu_hour is not None:
        roof = req.price_per_gpu_hour * lay.tp * lay.pp / 3600 / decode * 1e6
        steps.append(
            Step(
                name="cost_per_million_output_tokens",
                value=round(roof / EFFICIENCY, 4),
                unit="$",
                formula=(
                    f"${req.price_per_gpu_hour:g}/GPU-hour x {lay.tp * lay.pp} GPUs / 3600 / "
                    f"{decode:,.1f} tokens/s x 1e6 = ${roof:.4f} at the roofline, "
                    f"${roof / EFFICIENCY:.4f} at {EFFICIENCY:.0%} of it"
                ),
            )
        )
    return steps


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# -- presentation (pure: a rich renderable) ---------------------------------------------------------
def _value(step: Step) -> str:
    if step.unit == "bytes":
        return (
            f"{step.value / GiB:,.1f} GiB" if step.value >= GiB else f"{step.value / 1024:,.0f} KiB"
        )
    if step.unit == "$":
        return f"${step.value:,.4f}"
    if step.unit == "tokens/s":
        return f"{step.value:,.1f} tok/s"
    return f"{step.value:,.0f}"


def plan_table(plan: Plan) -> object:
    """The plan as rich tables: the layout and limits, the arithmetic, and the reasons."""
    from rich.console import Group
    from rich.table import Table

    precision = _LABEL[plan.dtype if plan.quant == "none" else plan.quant]
    kv = plan.kv_cache_dtype if plan.kv_cache_dtype != "auto" else _LABEL[plan.dtype]
    where = f"{plan.nodes} x {plan.gpus_per_node}" if plan.nodes > 1 else str(plan.gpus_per_node)
    layout = Table(
        title=f"{plan.model} on {where} x {plan.gpu}: {precision} weights, {kv.upper()} KV cache",
        title_justify="left",
        show_header=False,
    )
    layout.add_column(style="bold")
    layout.add_column()
    rows = [
        (
            "layout",
            f"TP={plan.tp} x PP={plan.pp}, {plan.replicas} replica(s), "
            f"{plan.gpus_used} GPU(s) used",
        ),
        (
            "weights",
            f"{plan.params / 1e9:,.2f}B params"
            + (
                f" ({plan.active_params / 1e9:,.2f}B active)"
                if plan.active_params != plan.params
                else ""
            )
            + f", {plan.weight_bytes / GiB:,.1f} GiB, {plan.weight_bytes_per_rank / GiB:,.1f} GiB per GPU",
        ),
        (
            "KV cache",
            f"{plan.kv_bytes_per_token / 1024:g} KiB per token; {plan.kv_cache_tokens:,} tokens = "
            f"{plan.max_concurrent_sequences:,} sequences of {plan.max_seq_len:,} per replica",
        ),
        (
            "build with",
            f"max_batch_size={plan.max_batch_size} max_input_len={plan.max_input_len} "
            f"max_seq_len={plan.max_seq_len} max_num_tokens={plan.max_num_tokens}",
        ),
        ("serve with", f"kv_cache_free_gpu_mem_fraction={plan.kv_cache_free_gpu_mem_fraction}"),
        (
            "GPU memory",
            f"{plan.gpu_memory_used_bytes_per_rank / GiB:,.2f} GiB per GPU: weights "
            f"{plan.weight_bytes_per_rank / GiB:,.2f} + KV cache "
            f"{plan.kv_cache_bytes_per_rank / GiB:,.2f} + reserve "
            f"{plan.reserve_bytes_per_rank / GiB:,.2f} (of {plan.gpu_memory_bytes / GiB:,.1f})",
        ),
        (
            "decode roofline",
            f"{plan.decode_roofline_tokens_per_s:,.0f} tok/s per replica at "
            f"{plan.concurrency_per_replica} sequences; "
            f"{plan.decode_roofline_tokens_per_s_per_sequence:,.0f} tok/s for one",
        ),
        (
            "prefill bound",
            f"{plan.prefill_tokens_per_s:,.0f} tok/s per replica; time to first token "
            f">= {plan.time_to_first_token_ms:,.0f} ms at {plan.max_input_len:,} tokens",
        ),
    ]
    if plan.cost_per_million_output_tokens is not None:
        rows.append(
            (
                "cost",
                f"${plan.cost_per_million_output_tokens_roofline:,.4f} per 1M output tokens "
                f"at the roofline, ${plan.cost_per_million_output_tokens:,.4f} at "
                f"{plan.efficiency:.0%} of it",
            )
        )
    for key, value in rows:
        layout.add_row(key, value)

    arithmetic = Table(title="Arithmetic", title_justify="left")
    arithmetic.add_column("quantity", style="bold")
    arithmetic.add_column("value", justify="right")
    arithmetic.add_column("how")
    for step in plan.arithmetic:
        arithmetic.add_row(step.name, _value(step), step.formula)

    why = Table(title="Why", title_justify="left", show_header=False, box=None)
    why.add_column()
    for reason in plan.reasons:
        why.add_row(f"- {reason}")
    return Group(layout, arithmetic, why)


# -- the edge: the two helpers that read files ------------------------------------------------------
def plan_from_spec(spec: PlanSpec) -> Plan:
    """Load the model facts ``spec.model`` names and plan for ``spec.gpu``."""

    return make_plan(read_model_facts(spec.model), get_gpu(spec.gpu), spec.request)


__all__ = ["Plan", "PlanDoesNotFit", "Step", "make_plan", "plan_from_spec"]
