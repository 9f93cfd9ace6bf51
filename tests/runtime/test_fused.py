"""trtbuild.runtime.fused: the slot layout's fused decoder layers (tests/runtime/test_engine.py
also runs every engine test with them: the "fused" layout)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import Reference
from trtbuild.runtime import fused
from trtbuild.runtime.engine import Engine, EngineLimits, Event, Request

LIMITS = EngineLimits(max_batch_size=4, max_seq_len=128)
PROMPTS = [[1, 5, 9, 200], [1] + list(range(30, 70)), [7, 7, 7]]


def _load(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def _greedy_all(engine: Engine, n: int = 12) -> list[list[int]]:
    results: dict[int, list[int]] = {}
    done = [threading.Event() for _ in PROMPTS]

    def on(i: int) -> Any:
        def on_event(ev: Event) -> None:
            results.setdefault(i, []).extend(ev.tokens)
            if ev.finished:
                done[i].set()

        return on_event

    engine.submit_many(
        [
            Request(prompt=p, max_new_tokens=n, on_event=on(i), end_id=-1)
            for i, p in enumerate(PROMPTS)
        ]
    )
    for d in done:
        assert d.wait(60)
    return [results[i] for i in range(len(PROMPTS))]


def test_the_fused_layers_run_and_generate_what_transformers_generates(
    tiny_model: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"norm": 0, "add_norm": 0, "rotary": 0, "silu_mul": 0}
    for name in calls:
        original = getattr(fused, {"norm": "rms_norm", "add_norm": "add_rms_norm"}.get(name, name))

        def counted(*args: Any, _name: str = name, _fn: Any = original) -> Any:
            calls[_name] += 1
            return _fn(*args)

        monkeypatch.setattr(
            fused, {"norm": "rms_norm", "add_norm": "add_rms_norm"}.get(name, name), counted
        )
    eng = Engine("", model=_load(tiny_model), limits=LIMITS, fused_layers=True).start()
    try:
        got = _greedy_all(eng)
    finally:
        eng.stop()
    assert got == [reference.greedy(p, 12) for p in PROMPTS]
    layers = eng.model.config.num_hidden_layers
    assert all(count >= layers for count in calls.values()), calls  # every layer, every kernel


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_the_fused_layers_serve_q_k_v_biases_and_per_head_norms(model_type: str) -> None:
    """Qwen2's q/k/v biases and Qwen3's RMSNorm of each q and k head, through the fused layers
    (with mixed prefills and flex decode attention from 2 rows on): greedy output equals
    transformers' generate on the same random model, three requests at once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # biases start at zero: give them values that change the output
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(std=0.5)
    want = []
    with torch.no_grad():
        for p in PROMPTS:
            out = model.generate(
                torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                eos_token_id=None,
            )  # fmt: skip
            want.append(out[0][len(p) :].tolist())
    eng = Engine(
        "",
        model=model,
        limits=EngineLimits(max_batch_size=4, max_seq_len=512, max_num_tokens=512),
        kv_cache="slots",
        fused_layers=True,
        async_decode=True,
        mixed_prefill_tokens=256,
        flex_decode_batch=2,
    ).start()
    try:
        assert eng.fused_layers
        assert _greedy_all(eng) == want
    finally:
        eng.stop()


def test_merged_weights_are_views_so_memory_does_not_grow(tiny_model: Path) -> None:
    model = _load(tiny_model)
    before = sum(p.numel() for p in model.parameters())
    fused.fuse(model, lambda *a, **k: None, compile=False)
    layer = model.get_decoder().layers[0]
    f = getattr(layer, fused.FUSED_ATTR)
    attn, mlp = layer.self_attn, layer.mlp
    storage = f.qkv_weight.untyped_storage().data_ptr()
    for m in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert m.weight.untyped_storage().data_ptr() == storage
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == (
        f.gate_up_weight.untyped_storage().data_ptr()
    )
    assert torch.equal(f.gate_up_weight[mlp.gate_proj.out_features :], mlp.up_proj.weight)
    assert sum(p.numel() for p in model.parameters()) == before


def test_a_fused_model_served_by_the_dynamic_layout_runs_transformers_forward(
    tiny_model: Path, reference: Reference
) -> None:
    model = _load(tiny_model)
    Engine("", model=model, limits=LIMITS, fused_layers=True)  # rewrites the layers in place
    eng = Engine("", model=model, limits=LIMITS, kv_cache="dynamic").start()
    try:
        assert eng.kv_layout == "dynamic" and not eng.fused_layers
        assert _greedy_all(eng) == [reference.greedy(p, 12) for p in PROMPTS]
    finally:
        eng.stop()


def test_a_model_it_cannot_rewrite_is_refused_when_asked_and_left_alone_on_auto(
    tiny_model: Path,
) -> None:
    model = _load(tiny_model)
    model.config.hidden_act = "gelu"
    assert fused.unsupported(model) == "hidden_act 'gelu' (fused: silu)"
    with pytest.raises(ValueError, match=r"^fused_layers cannot serve this model: hidden_act"):
        Engine("", model=model, limits=LIMITS, fused_layers=True)
    assert not Engine("", model=model, limits=LIMITS).fused_layers  # auto: CPU does not fuse


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch's own
def test_the_compiled_kernels_compute_what_the_eager_ones_do() -> None:
    """torch.compile (inductor; on CPU here, Triton on CUDA) of each elementwise chain on tokens
    flattened into the first dimension, the only dynamic one: three token counts, one
    compilation of each kernel, no fallback to eager."""
    from torch._dynamo.utils import counters

    kernels = fused.Kernels(compile=True)
    gen = torch.Generator().manual_seed(0)
    weight = torch.rand(64, generator=gen) + 0.5
    graphs = counters["stats"]["unique_graphs"]
    for tokens in (3, 5, 9):
        x = torch.randn(tokens, 64, generator=gen)
        res = torch.randn(tokens, 64, generator=gen)
        # q and k as the layer has them: views of one q/k/v matrix multiply's output
        qkv = torch.randn(tokens, 4 * 16 + 2 * 16 + 2 * 16, generator=gen)
        q, k, _ = qkv.split([64, 32, 32], dim=-1)
        q, k = q.view(tokens, 4, 16), k.view(tokens, 2, 16)
        cos, sin = torch.randn(tokens, 16, generator=gen), torch.randn(tokens, 16, generator=gen)
        gate_up = torch.randn(tokens, 128, generator=gen)
        torch.testing.assert_close(kernels.norm(x, weight, 1e-5), fused.rms_norm(x, weight, 1e-5))
        for a, b in zip(
            kernels.add_norm(x, res, weight, 1e-5),
            fused.add_rms_norm(x, res, weight, 1e-5),
            strict=True,
        ):
            torch.testing.assert_close(a, b)
        for a, b in zip(kernels.rotary(q, k, cos, sin), fused.rotary(q, k, cos, sin), strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(kernels.silu_mul(gate_up), fused.silu_mul(gate_up))
    for name in ("norm", "add_norm", "rotary", "silu_mul"):
        wrapper = getattr(kernels, name)
        assert wrapper.fn is not wrapper.eager, f"{name} fell back to eager"
    assert kernels.status() == dict.fromkeys(("norm", "add_norm", "rotary", "silu_mul"), "compiled")
    assert counters["stats"]["unique_graphs"] - graphs == 4  # the token count was dynamic


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch's own
def test_the_compiled_rotary_store_writes_the_cache_in_place() -> None:
    """fused_kv_writes' kernel: rotary of q and k, and k and v written into the cache at each
    token's flat position, into the cache tensor itself (what attention reads next), nowhere
    else; the token count dynamic, the cache's size not."""
    from torch._dynamo.utils import counters

    kernels = fused.Kernels(compile=True, kv_writes=True)
    gen = torch.Generator().manual_seed(1)
    cache_k, cache_v = torch.zeros(400, 2, 16), torch.zeros(400, 2, 16)
    pointers = (cache_k.data_ptr(), cache_v.data_ptr())
    graphs = counters["stats"]["unique_graphs"]
    written = torch.zeros(400, dtype=torch.bool)
    for tokens in (3, 6, 11):
        qkv = torch.randn(tokens, 4 * 16 + 2 * 16 + 2 * 16, generator=gen)
        q, k, v = qkv.split([64, 32, 32], dim=-1)
        q, k, v = q.view(tokens, 4, 16), k.view(tokens, 2, 16), v.view(tokens, 2, 16)
        cos, sin = torch.randn(tokens, 16, generator=gen), torch.randn(tokens, 16, generator=gen)
        index = torch.randperm(400, generator=gen)[:tokens]
        before_k, before_v = cache_k.clone(), cache_v.clone()
        got_q, got_k = kernels.rotary_store(q, k, v, cos, sin, cache_k, cache_v, index)
        want_q, want_k = fused.rotary(q, k, cos, sin)
        torch.testing.assert_close(got_q, want_q)
        torch.testing.assert_close(got_k, want_k)
        torch.testing.assert_close(cache_k[index], want_k)
        torch.testing.assert_close(cache_v[index], v)
        others = torch.ones(400, dtype=torch.bool)
        others[index] = False
        assert torch.equal(cache_k[others], before_k[others])
        assert torch.equal(cache_v[others], before_v[others])
        written[index] = True
    assert (cache_k.data_ptr(), cache_v.data_ptr()) == pointers
    assert bool(cache_k[written].abs().sum(-1).gt(0).all())
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert kernels.status()["rotary_store"] == "compiled" and "rotary" not in kernels.status()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch's own
def test_only_the_token_dimension_of_a_compiled_kernel_is_dynamic() -> None:
    """The inner sizes are constants of the compiled kernel (a fully dynamic one indexes
    through symbolic sizes): a new hidden size compiles again, a new token count does not."""
    from torch._dynamo.utils import counters

    kernels = fused.Kernels(compile=True)
    graphs = counters["stats"]["unique_graphs"]
    for tokens, hidden in ((3, 48), (7, 48), (3, 40), (11, 40)):  # sizes no other test compiles
        gate_up = torch.randn(tokens, 2 * hidden)
        torch.testing.assert_close(kernels.silu_mul(gate_up), fused.silu_mul(gate_up))
    assert counters["stats"]["unique_graphs"] - graphs == 2


def test_each_compiled_set_of_kernels_raises_the_recompile_limit_by_what_it_needs() -> None:
    config = torch._dynamo.config
    before = config.recompile_limit
    fused.Kernels(compile=True)
    assert config.recompile_limit == before + fused.KERNEL_ENTRIES
    fused.Kernels(compile=False)
    assert config.recompile_limit == before + fused.KERNEL_ENTRIES
