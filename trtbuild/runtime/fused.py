"""Fused decoder layers for the slot layout of trtbuild's portable runtime (Llama family).

This module is copied verbatim next to the Triton ``model.py`` (as ``_trtbuild_fused.py``), so it
imports only torch.

A transformers Llama decoder layer runs ~44 kernels per token step (RMSNorm alone is 7: cast,
square, mean, add, rsqrt, multiply, scale), and in a CUDA-graph-captured decode step each kernel
still costs a few microseconds however little it does (docs/perf/h200.md measured ~1,420 kernels
and ~3.4 ms of them per step). ``fuse`` rewrites each layer of a loaded model in place:

- q/k/v become one matrix multiply and gate/up another: their weights are concatenated once
  (the original modules keep views of the merged weight, so memory does not grow, and transformers'
  own forward still works on them);
- the elementwise chains become one kernel each, through ``torch.compile`` where ``compile`` is
  asked (CUDA with Triton): RMSNorm, the residual add fused with the next RMSNorm, the rotary
  embedding of q and k, SiLU(gate) x up. Elsewhere they run eagerly, the same arithmetic in the
  same order as transformers'. Each takes the layer's tokens flattened into one leading dimension
  (``[tokens, ...]``, the layout the matrix multiplies produce), and only that dimension is
  dynamic: one compilation serves every batch, length and prefill (and one more a single token),
  while the inner sizes stay constants of the kernel. A kernel compiled with every dimension
  dynamic indexes through symbolic sizes and strides, and measured twice as slow on an H200
  (docs/perf/h200.md, round 5).

A fused layer takes this path only when the cache it is given says so (``cache.fused_layers``),
so the same model object served by a dynamic-layout engine, or by an engine that did not fuse,
runs transformers' forward unchanged. o_proj and down_proj stay modules, so forward hooks on
them (the tensor-parallel all-reduce) still run.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("trtbuild.runtime")

FUSED_ATTR = "_trtbuild_fused"


# -- the arithmetic (transformers' Llama, op for op) ------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(residual + x), residual + x): the residual add fused with the next norm."""
    total = residual + x
    return rms_norm(total, weight, eps), total


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[tokens, heads, d]``, k ``[tokens, kv_heads, d]``, cos and sin ``[tokens, d]`` (or
    transformers' ``[batch, heads, t, d]`` with ``[batch, t, d]``: the heads dimension is the
    second either way)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def rotary_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotary`` of q and k, and k and v written into one layer's KV cache (``cache_k`` /
    ``cache_v`` ``[positions, kv_heads, d]``) at ``index`` (one flat position per token), in
    place: compiled, one kernel where it would be three (inductor writes into the cache
    itself, it does not copy it)."""
    q, k = rotary(q, k, cos, sin)
    cache_k.index_put_((index,), k)
    cache_v.index_put_((index,), v)
    return q, k


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def raise_recompile_limit(entries: int) -> None:
    """Let each function ``torch.compile`` compiles take ``entries`` more compilations in this
    process: past its limit (8 by default) a function runs eagerly, and every engine of a process
    (the bench makes several) compiles the same functions for its own shapes and dtype."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, getattr(config, name) + entries)


# compilations of one elementwise function per Kernels (one model, one dtype): a single token
# (static) and any other number of tokens (dynamic)
KERNEL_ENTRIES = 2


# each function's tensor arguments whose first dimension is the token count (the dynamic one);
# None: every argument with more than one dimension (a norm's weight is the one left static)
_TOKEN_ARGS: dict[str, tuple[int, ...] | None] = {
    "norm": None,
    "add_norm": None,
    "rotary": None,
    "rotary_store": (0, 1, 2, 3, 4, 7),  # not the cache: its size is fixed
    "silu_mul": None,
}


class Kernels:
    """The elementwise functions, compiled (``torch.compile``, the token count dynamic) or
    eager. A compiled function that fails on its first call (warm-up, before any CUDA graph is
    captured) is replaced by the eager one, with a warning. ``rotary_store`` serves layers that
    write the KV cache themselves (``kv_writes``); the others, ``rotary``."""

    def __init__(self, compile: bool, kv_writes: bool = False) -> None:
        if compile:
            raise_recompile_limit(KERNEL_ENTRIES)
        self.kv_writes = kv_writes
        for name, fn in (
            ("norm", rms_norm),
            ("add_norm", add_rms_norm),
            ("rotary", rotary),
            ("rotary_store", rotary_store),
            ("silu_mul", silu_mul),
        ):
            setattr(self, name, _FirstCallFallback(name, fn, compile, _TOKEN_ARGS[name]))

    def status(self) -> dict[str, str]:
        """Each function the layers call: ``compiled``, ``eager`` (not asked, or it fell back)
        or ``pending`` (compiled, not called yet)."""
        out = {}
        for name in _TOKEN_ARGS:
            if name == ("rotary" if self.kv_writes else "rotary_store"):
                continue
            w: _FirstCallFallback = getattr(self, name)
            out[name] = "eager" if w.fn is w.eager else ("compiled" if w.proven else "pending")
        return out

    norm: Callable[..., torch.Tensor]
    add_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rotary_store: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_mul: Callable[..., torch.Tensor]


class _FirstCallFallback:
    """``fn`` compiled with only the first dimension of its token arguments dynamic (``tokens``:
    their positions; None: every tensor argument with more than one dimension)."""

    def __init__(
        self, name: str, fn: Callable[..., Any], compile: bool, tokens: tuple[int, ...] | None
    ) -> None:
        self.name, self.eager = name, fn
        self.fn = torch.compile(fn, dynamic=False, fullgraph=True) if compile else fn
        self.tokens = tokens
        self.proven = not compile

    def __call__(self, *args: Any) -> Any:
        if self.fn is not self.eager:  # compiled, and it has not fallen back
            for i, a in enumerate(args):
                if not isinstance(a, torch.Tensor):
                    continue
                if (i in self.tokens) if self.tokens is not None else a.dim() > 1:
                    torch._dynamo.maybe_mark_dynamic(a, 0)
        if self.proven:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as exc:  # noqa: BLE001 - the eager function computes the same
            log.warning(
                "trtbuild: torch.compile of %s failed (%s: %s); running it eagerly",
                self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
            )  # fmt: skip
            self.fn = self.eager
            out = self.fn(*args)
        self.proven = True
        return out


# -- rewriting a model ------------------------------------------------------------------------------
class _Fused:
    """One layer's merged weights and what its forward needs."""

    def __init__(self, layer: Any, kernels: Kernels) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.kernels = kernels
        self.qkv_weight, self.qkv_bias = _merge([attn.q_proj, attn.k_proj, attn.v_proj])
        self.splits = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        self.gate_up_weight, self.gate_up_bias = _merge([mlp.gate_proj, mlp.up_proj])
        self.head_dim = int(attn.head_dim)
        self.eps_in = float(layer.input_layernorm.variance_epsilon)
        self.eps_post = float(layer.post_attention_layernorm.variance_epsilon)
        self.qk_norm = hasattr(attn, "q_norm")  # Qwen3: RMSNorm of each head of q and k


def _merge(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for ``linears`` (same input); each module keeps a view of its rows."""
    weight = torch.cat([m.weight.data for m in linears])
    bias = None
    if linears[0].bias is not None:
        bias = torch.cat([m.bias.data for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = weight[start : start + rows]
        if bias is not None:
            m.bias.data = bias[start : start + rows]
        start += rows
    return weight, bias


def unsupported(model: Any) -> str | None:
    """Why ``fuse`` cannot rewrite ``model``'s layers (None: it can)."""
    try:
        layers = model.get_decoder().layers
    except AttributeError:
        return "the model has no decoder layers"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return f"{type(layer).__name__} has no self_attn/mlp"
        for module, names in (
            (attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (mlp, ("gate_proj", "up_proj", "down_proj")),
        ):
            if not all(isinstance(getattr(module, n, None), torch.nn.Linear) for n in names):
                return f"{type(module).__name__} is not the Llama layout"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            if not hasattr(getattr(layer, norm, None), "variance_epsilon"):
                return f"{type(layer).__name__}.{norm} is not an RMSNorm"
        if getattr(model.config, "hidden_act", "silu") != "silu":
            return f"hidden_act {model.config.hidden_act!r} (fused: silu)"
    return None


def fuse(
    model: Any, attention: Callable[..., Any], *, compile: bool, kv_writes: bool = False
) -> None:
    """Rewrite every decoder layer of ``model`` in place (see the module docstring); ``attention``
    is the slot layout's attention function (transformers' attention-interface signature).
    ``kv_writes``: each layer writes its keys and values into the cache itself, in the rotary
    kernel (``rotary_store``), where the cache offers it (``write_targets``)."""
    reason = unsupported(model)
    if reason is not None:
        raise ValueError(f"cannot fuse this model's layers: {reason}")
    kernels = Kernels(compile, kv_writes)
    for layer in model.get_decoder().layers:
        if getattr(layer, FUSED_ATTR, None) is None:
            setattr(layer, FUSED_ATTR, _Fused(layer, kernels))
        else:
            getattr(layer, FUSED_ATTR).kernels = kernels
        layer.forward = types.MethodType(_layer_forward, layer)
        layer._trtbuild_attention = attention


def _layer_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    if not getattr(past_key_values, "fused_layers", False):  # not ours: transformers' forward
        return type(self).forward(
            self,
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    f: _Fused = getattr(self, FUSED_ATTR)
    k = f.kernels
    attn = self.self_attn
    b, t, width = hidden_states.shape
    n, d = b * t, f.head_dim
    tokens = hidden_states.reshape(n, width)  # every token in one dimension: see the docstring
    h = k.norm(tokens, self.input_layernorm.weight, f.eps_in)
    q, key, value = F.linear(h, f.qkv_weight, f.qkv_bias).split(f.splits, dim=-1)
    q, key = q.view(n, -1, d), key.view(n, -1, d)
    if f.qk_norm:
        q, key = attn.q_norm(q), attn.k_norm(key)
    assert position_embeddings is not None
    cos, sin = (x.reshape(n, d) for x in position_embeddings)

    def heads_first(x: torch.Tensor) -> torch.Tensor:  # [b, heads, t, d], as attention takes it
        return x.view(b, t, -1, d).transpose(1, 2)

    if k.kv_writes:  # the rotary kernel writes the cache: the cache only says what to read
        cache_k, cache_v, index = past_key_values.write_targets(attn.layer_idx)
        value = value.view(n, -1, d)
        q, key = k.rotary_store(q, key, value, cos, sin, cache_k, cache_v, index)
        key, value = past_key_values.read(heads_first(key), heads_first(value), attn.layer_idx)
    else:
        q, key = k.rotary(q, key, cos, sin)
        key, value = past_key_values.update(heads_first(key), heads_first(value), attn.layer_idx)
    out, _ = self._trtbuild_attention(
        attn,
        heads_first(q),
        key,
        value,
        attention_mask,
        scaling=attn.scaling,
        slot_cache=past_key_values,
    )
    h = attn.o_proj(out.reshape(n, -1))
    h, residual = k.add_norm(h, tokens, self.post_attention_layernorm.weight, f.eps_post)
    gate_up = F.linear(h, f.gate_up_weight, f.gate_up_bias)
    return (residual + self.mlp.down_proj(k.silu_mul(gate_up))).view(b, t, width)
