"""What the planner, the engine builder and the repository need to know about a model.

``facts_from_config`` turns a Hugging Face ``config.json`` (a dict) into ``ModelFacts``: pure, no IO.
``trtbuild.files.checkpoint_manifest.read_model_facts`` is the edge that reads them from disk.

Parameter counts assume the decoder layout every supported family shares: q/k/v/o projections
(plus q/k/v biases where the family has them), a gated MLP of three matrices (gate, up, down) or
``num_experts`` of them with a router, two RMSNorms per layer and a final norm. Checked against the
published sizes: Llama-3.1-8B 8,030,261,248; Llama-3.1-70B 70,553,706,496; Mixtral-8x7B
46,702,792,704; Qwen2.5-7B 7,615,616,512 (tests/test_model_facts.py does the arithmetic by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from trtbuild.errors import SpecError
from trtbuild.specs import StrictModel

# Families whose q/k/v projections carry a bias (Qwen2 and its MoE; Llama-style configs say so with
# ``attention_bias``).
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}


class QuantInfo(StrictModel):
    """How a pre-quantized checkpoint is quantized (from ``quantization_config`` or ModelOpt's
    ``hf_quant_config.json``)."""

    method: str = Field(description="awq, gptq, fp8, modelopt, compressed-tensors, ...")
    weight_bits: int | None = None
    group_size: int | None = None
    kv_cache: str | None = Field(None, description="fp8 or int8 when the KV cache is quantized too")

    @property
    def trtbuild_quant(self) -> Literal["fp8", "int4-awq"] | None:
        """The matching ``--quant`` value, or None when trtbuild cannot serve it as is."""
        if self.weight_bits == 8 and self.method in ("fp8", "fbgemm_fp8", "modelopt"):
            return "fp8"
        if self.weight_bits == 4 and self.method in ("awq", "modelopt"):
            return "int4-awq"
        return None


class ModelFacts(StrictModel):
    """The numbers a decoder-only LLM's memory and speed follow from."""

    name: str
    architecture: str
    model_type: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=1)
    dtype: str = Field(description="the checkpoint's torch dtype: bfloat16, float16, float32")
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    num_experts: int = Field(0, ge=0, description="0 for a dense model")
    experts_per_token: int = Field(0, ge=0)
    moe_intermediate_size: int = Field(0, ge=0)
    shared_expert_intermediate_size: int = Field(0, ge=0)
    quantization: QuantInfo | None = None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def params(self) -> ParamCount:
        return count_params(self)

    def kv_bytes_per_token(self, bytes_per_value: float) -> int:
        """K and V for every layer and KV head: 2 x layers x kv_heads x head_dim x bytes."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value)


@dataclass(frozen=True)
class ParamCount:
    """Parameters by where they live (so the planner can quantize and shard each kind right)."""

    embedding: int
    lm_head: int  # a separate matrix unless tied (engines still hold a copy for the last rank)
    tied: bool
    layers: int
    attention_per_layer: int  # q, k, v, o weights and q/k/v biases
    mlp_per_layer: int  # all experts for MoE
    active_mlp_per_layer: int  # the experts one token uses
    router_per_layer: int
    norm_per_layer: int
    final_norm: int

    @property
    def linear_per_layer(self) -> int:
        """Weights that quantize (attention and MLP/expert matrices)."""
        return self.attention_per_layer + self.mlp_per_layer

    @property
    def total(self) -> int:
        per_layer = self.linear_per_layer + self.router_per_layer + self.norm_per_layer
        head = 0 if self.tied else self.lm_head
        return self.embedding + head + self.layers * per_layer + self.final_norm

    @property
    def active(self) -> int:
        """Parameters used per token (MoE: only the routed experts)."""
        return self.total - self.layers * (self.mlp_per_layer - self.active_mlp_per_layer)


def count_params(facts: ModelFacts) -> ParamCount:
    h, hd = facts.hidden_size, facts.head_dim
    q, kv = facts.num_attention_heads * hd, facts.num_kv_heads * hd
    attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if facts.attention_bias else 0)
    if facts.is_moe:
        expert = 3 * h * facts.moe_intermediate_size
        shared = 3 * h * facts.shared_expert_intermediate_size
        shared_gate = h if facts.shared_expert_intermediate_size else 0
        mlp = facts.num_experts * expert + shared
        active = facts.experts_per_token * expert + shared
        router = h * facts.num_experts + shared_gate
    else:
        mlp = active = 3 * h * facts.intermediate_size
        router = 0
    return ParamCount(
        embedding=facts.vocab_size * h,
        lm_head=facts.vocab_size * h,
        tied=facts.tie_word_embeddings,
        layers=facts.num_layers,
        attention_per_layer=attention,
        mlp_per_layer=mlp,
        active_mlp_per_layer=active,
        router_per_layer=router,
        norm_per_layer=2 * h,
        final_norm=h,
    )


def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _int(config: dict[str, Any], what: str, *keys: str, default: int | None = None) -> int:
    value = _first(config, *keys)
    if value is None:
        if default is not None:
            return default
        raise SpecError(
            f"config.json has no {what} ({' / '.join(keys)}); is it a decoder LLM config?"
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"config.json {keys[0]} must be an integer, got {value!r}")
    return value


def parse_quantization(
    config: dict[str, Any], hf_quant_config: dict[str, Any] | None = None
) -> QuantInfo | None:
    """``quantization_config`` from config.json, or ModelOpt's ``hf_quant_config.json``."""
    if hf_quant_config and isinstance(hf_quant_config.get("quantization"), dict):
        q = hf_quant_config["quantization"]
        algo = str(q.get("quant_algo") or "").upper()
        kv = str(q.get("kv_cache_quant_algo") or "").lower() or None
        bits = 8 if "FP8" in algo or "W8" in algo or "INT8" in algo else 4 if "W4" in algo else None
        return QuantInfo(
            method="modelopt", weight_bits=bits, group_size=q.get("group_size"), kv_cache=kv
        )
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method") or "unknown").lower()
    bits = qc.get("bits") or qc.get("w_bit")
    if method in ("fp8", "fbgemm_fp8"):
        bits = 8
    if method == "compressed-tensors":
        groups: dict[str, Any] = qc.get("config_groups") or {}
        first: dict[str, Any] = next(iter(groups.values()), {})
        weights: dict[str, Any] = first.get("weights") or {}
        bits = weights.get("num_bits")
        if weights.get("type") == "float" and bits == 8:
            method = "fp8"
    kv = qc.get("kv_cache_scheme")
    kv_dtype = "fp8" if isinstance(kv, dict) and kv.get("type") == "float" else None
    return QuantInfo(
        method=method,
        weight_bits=int(bits) if isinstance(bits, int) else None,
        group_size=qc.get("group_size") or qc.get("q_group_size"),
        kv_cache=kv_dtype,
    )


def facts_from_config(
    config: dict[str, Any], *, name: str, hf_quant_config: dict[str, Any] | None = None
) -> ModelFacts:
    """Parse a Hugging Face ``config.json`` dict. Unknown or unsupported layouts raise SpecError."""
    top = config
    if "text_config" in config and _first(config, "num_hidden_layers", "n_layer") is None:
        config = {**config["text_config"], "quantization_config": config.get("quantization_config")}
    if config.get("kv_lora_rank"):
        raise SpecError(
            f"{name} uses multi-head latent attention (kv_lora_rank); the planner does not model it yet."
        )
    architectures = top.get("architectures") or [""]
    model_type = str(config.get("model_type") or top.get("model_type") or "unknown")
    hidden = _int(config, "hidden size", "hidden_size", "n_embd", "d_model")
    heads = _int(config, "attention head count", "num_attention_heads", "n_head")
    kv_heads = _int(config, "KV head count", "num_key_value_heads", "num_kv_heads", default=heads)
    if config.get("multi_query") is True:
        kv_heads = 1
    for key, value in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if value < 1:
            raise SpecError(f"config.json {key} must be at least 1, got {value}; fix the config")
    head_dim = _int(config, "head dim", "head_dim", default=hidden // heads)
    intermediate = _int(
        config, "MLP size", "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden
    )
    experts = _int(
        config, "expert count", "num_local_experts", "num_experts", "n_routed_experts", default=0
    )
    dtype = str(_first(config, "torch_dtype", "dtype") or top.get("torch_dtype") or "float32")
    bias = config.get("attention_bias")
    if heads % kv_heads:
        raise SpecError(
            f"config.json: num_attention_heads {heads} is not a multiple of KV heads {kv_heads}"
        )
    return ModelFacts(
        name=name,
        architecture=str(architectures[0]),
        model_type=model_type,
        num_layers=_int(config, "layer count", "num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=_int(config, "vocabulary size", "vocab_size"),
        max_position_embeddings=_int(
            config, "context length", "max_position_embeddings", "n_positions", "seq_length"
        ),
        dtype=dtype.removeprefix("torch."),
        tie_word_embeddings=bool(
            config.get("tie_word_embeddings", top.get("tie_word_embeddings", False))
        ),
        attention_bias=bool(bias) if bias is not None else model_type in _QKV_BIAS_TYPES,
        num_experts=experts,
        experts_per_token=_int(config, "experts per token", "num_experts_per_tok", default=0)
        if experts
        else 0,
        moe_intermediate_size=(
            _int(config, "expert MLP size", "moe_intermediate_size", default=intermediate)
            if experts
            else 0
        ),
        shared_expert_intermediate_size=(
            _int(config, "shared expert size", "shared_expert_intermediate_size", default=0)
            if experts
            else 0
        ),
        quantization=parse_quantization(config, hf_quant_config),
    )
