#!/usr/bin/env python3
"""The portable runtime on a CUDA GPU: parity, speed and memory, in process and served.

`make bench-gpu` runs it. The model is Llama-3-8B-shaped (vocab 128256, hidden 4096, MLP 14336,
32 layers, 32 heads, 8 KV heads, untied) with random bf16 weights made on the GPU: the same bytes
and FLOPs as the real checkpoint, nothing downloaded. Tokens are random ids, end tokens ignored.

Phases (``--phases``, comma-separated; each writes its JSON to ``--out`` as it ends):
- env: GPU, versions, and the device-to-device copy bandwidth (the decode roofline's HBM rate).
- parity: greedy tokens of 16 concurrent streams vs transformers ``generate`` one prompt at a time
  on the same weights: the tiny model in fp32 and bf16, the 8B-shaped model in bf16 (match
  reported; random weights leave top-2 logit gaps that bf16 noise flips).
- engine: the 8B-shaped model in process (Engine, slot KV cache, CUDA graphs): closed loop at
  concurrency 1, 16, 64 with 128 prompt / 128 output tokens; graph-replay step times; prefill
  times; GPU memory.
- ab: the same loop without CUDA graphs (slots, eager) and with the dynamic layout, at 1 and 64.
- served: tritonserver (the nvidia-pytriton wheel) serving the model through trtbuild's rendered
  repository: first without a numpy<2 wheel (a host with numpy 2 must be refused with the fix),
  then with one (``--numpy-wheel``: trtbuild builds the stub environment); a gRPC streaming
  closed loop against the core model at 1, 16, 64 and the ensemble at 64; then, where
  perf_analyzer is on PATH, ``trtbuild perf`` against the same server (core model and ensemble at
  ``--perf-concurrency``), its results.json copied to --out.
- flex_tune: flex decode attention's kernel options, candidates timed in CUDA graphs; the
  A/B phases (``*_ab``) compare one setting against the defaults, same engine otherwise.
- parity8b32: the 8B-shaped model in fp32: 16 concurrent streams vs generate (token-identical).

Usage: python3 scripts/bench_gpu.py --out DIR [--phases env,parity,engine,ab,served]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import queue
import random
import shutil
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # installed (pip install .); else this checkout (enough for every phase but served)
    import trtbuild  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _grpc_load  # noqa: E402  (scripts/, beside this file)
import torch  # noqa: E402

from trtbuild import proc  # noqa: E402
from trtbuild.errors import TrtbuildError  # noqa: E402
from trtbuild.runtime import engine as engine_module  # noqa: E402
from trtbuild.runtime.engine import Engine, EngineLimits, Event, Request  # noqa: E402

PROMPT, OUTPUT = 128, 128
CONCURRENCY = (1, 16, 64)
LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 2)


# -- models ---------------------------------------------------------------------------------------
def llama_config(shape: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**shape, attn_implementation="sdpa")


def random_model(shape: dict[str, Any], dtype: torch.dtype, seed: int = 0) -> Any:
    """A Llama with random weights, made on the GPU in ``dtype`` (seconds, nothing read)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(llama_config(shape), dtype=dtype)
    return model.eval()


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def synthetic_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level BPE with exactly ``vocab_size`` ids (every id decodes): the 256 byte symbols,
    every pair of them, then pairs + one byte, as merges; no training needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab: dict[str, int] = {t: i for i, t in enumerate(specials)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    pairs = [(a, b) for a in alphabet for b in alphabet]
    for a, b in pairs:
        if len(vocab) >= vocab_size:
            break
        vocab[a + b] = len(vocab)
        merges.append((a, b))
    for a, b in pairs:
        for c in alphabet:
            if len(vocab) >= vocab_size:
                break
            vocab[a + b + c] = len(vocab)
            merges.append((a + b, c))
        if len(vocab) >= vocab_size:
            break
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "add_bos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# -- in-process closed loop -------------------------------------------------------------------------
def prompts_for(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(length)] for _ in range(n)]


def closed_loop(
    engine: Engine, concurrency: int, requests: int, vocab: int, seed: int = 1
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last one ends; events go
    through a queue to one consumer thread (as the Triton model's sender thread does)."""
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    prompts = prompts_for(requests, PROMPT, vocab, seed)
    sent: dict[int, float] = {}
    times: dict[int, list[float]] = {}
    errors: list[str] = []
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        i = submitted
        submitted += 1
        req = Request(
            prompt=prompts[i], max_new_tokens=OUTPUT, on_event=events.put, end_id=-1, tag=i
        )
        sent[i], times[i] = time.perf_counter(), []
        engine.submit(req)

    steps0, ended0, queued0 = engine.steps, engine.ended_row_steps, engine.ended_row_steps_queued
    start = time.perf_counter()
    for _ in range(min(concurrency, requests)):
        submit()
    finished = 0
    while finished < requests:
        ev = events.get()
        now = time.perf_counter()
        i = ev.request.tag
        times[i].extend([now] * len(ev.tokens))
        if ev.error:
            errors.append(ev.error)
        if ev.finished:
            finished += 1
            if submitted < requests:
                submit()
    wall = time.perf_counter() - start
    tokens = sum(len(t) for t in times.values())
    ttft = [times[i][0] - sent[i] for i in times if times[i]]
    itl = [b - a for t in times.values() for a, b in zip(t, t[1:], strict=False)]
    steps = engine.steps - steps0
    return {
        "concurrency": concurrency,
        "requests": requests,
        "output_tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": ms(pct(ttft, 50)),
        "ttft_p99_ms": ms(pct(ttft, 99)),
        "itl_p50_ms": ms(pct(itl, 50)),
        "itl_p99_ms": ms(pct(itl, 99)),
        "decode_steps": steps,
        "wall_per_step_ms": round(wall / max(steps, 1) * 1e3, 2),
        # rows kept in the batch after their request ended, and of those, while a request waited
        "ended_row_steps": engine.ended_row_steps - ended0,
        "ended_row_steps_queued": engine.ended_row_steps_queued - queued0,
        "errors": errors[:3],
    }


def run_loops(engine: Engine, vocab: int, plan: list[tuple[int, int]], tag: str) -> list[dict]:
    out = []
    for concurrency, requests in plan:
        closed_loop(engine, concurrency, min(concurrency, requests), vocab, seed=99)  # warm
        result = closed_loop(engine, concurrency, requests, vocab)
        result["variant"] = tag
        log(tag, json.dumps(result))
        out.append(result)
    return out


def graph_step_ms(engine: Engine, batch: int, length: int, reps: int = 30) -> float | None:
    return graph_ms(engine.graphs, (batch, length), reps)


def graph_ms(
    graphs: dict[tuple[int, ...], Any], key: tuple[int, ...], reps: int = 30
) -> float | None:
    """The mean GPU time of one replay of ``graphs[key]`` (None: not captured)."""
    graph = graphs.get(key)
    if graph is None:
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        graph.replay()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return round(start.elapsed_time(end) / reps, 3)


def eager_step_ms(engine: Engine, batch: int, length: int, reps: int = 5) -> float:
    engine._decode_body(batch, length)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        engine._decode_body(batch, length)
    torch.cuda.synchronize()
    return round((time.perf_counter() - t) / reps * 1e3, 3)


def prefill_ms(engine: Engine, k: int, n: int, vocab: int) -> float:
    reqs = [
        Request(prompt=p, max_new_tokens=1, on_event=lambda ev: None)
        for p in prompts_for(k, n, vocab, 7)
    ]
    engine._prefill_forward(reqs)
    torch.cuda.synchronize()
    t = time.perf_counter()
    engine._prefill_forward(reqs)
    torch.cuda.synchronize()
    return round((time.perf_counter() - t) * 1e3, 2)


def nvidia_smi(query: str) -> str | None:
    """One ``nvidia-smi --query-…`` answer as CSV without header or units; None where it fails."""
    try:
        done = proc.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"], quiet=True, timeout=20
        )
    except TrtbuildError:
        return None
    return done.output.strip()


def gpu_memory_used_mib() -> int | None:
    out = nvidia_smi("--query-gpu=memory.used")
    try:
        return int(out.split()[0]) if out else None
    except ValueError:
        return None


# -- phases -----------------------------------------------------------------------------------------
def phase_env(args: argparse.Namespace) -> dict[str, Any]:
    import numpy
    import transformers

    props = torch.cuda.get_device_properties(0)
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        y.copy_(x)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / 20
    bandwidth = 2 * x.numel() / seconds  # bytes read + written
    del x, y
    driver = nvidia_smi("--query-gpu=driver_version") or ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "hbm_copy_bytes_per_s": round(bandwidth),
        # which GPU this call got (calls may land on different ones) and its state at start
        "gpu_state": nvidia_smi(
            "--query-gpu=uuid,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        ),
    }


# the parity runs' 16 streams decode in batch buckets of 16 and below: flex attention from 8
# rows on, so that its kernels are among what parity checks (the default starts at 32)
PARITY_FLEX_DECODE_BATCH = 8


def parity_run(
    model: Any, dtype_name: str, prompts: list[list[int]], new: int, compile_decode: bool = False
) -> dict[str, Any]:
    with torch.no_grad():
        ref = [
            model.generate(
                torch.tensor([p], device="cuda"), max_new_tokens=new, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0][len(p) :].tolist()
            for p in prompts
        ]  # fmt: skip
    engine = Engine(
        "", model=model, dtype=dtype_name,
        limits=EngineLimits(max_batch_size=16, max_seq_len=512, max_num_tokens=2048),
        compile_decode=compile_decode, flex_decode_batch=PARITY_FLEX_DECODE_BATCH,
    ).start()  # fmt: skip
    engine.warmup()
    got: list[list[int]] = [[] for _ in prompts]

    def run(i: int) -> None:
        got[i] = engine.generate(prompts[i], new, end_id=-1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    layout, graphs, fused = engine.kv_layout, len(engine.graphs), fused_kernels(engine)
    chained = {
        "async_decode": engine.async_decode,
        "chained_steps": engine.chained_steps,
        "prefills": engine.prefills,
        "prefill_graphs": len(engine._prefill_captured),
        "mixed_steps": engine.mixed_steps,
        "flex_decode_batch": engine.flex_decode_batch,
        "mixed_graphs": len(engine._mixed_captured),
    }
    dispose(engine)
    same = sum(g == r for g, r in zip(got, ref, strict=True))
    first = [
        next((k for k in range(new) if g[k] != r[k]), None) for g, r in zip(got, ref, strict=True)
    ]
    return {
        "dtype": dtype_name,
        "sequences_identical": f"{same}/{len(prompts)}",
        "first_differing_token": first,
        "tokens_identical": sum(
            next((k for k in range(new) if g[k] != r[k]), new)
            for g, r in zip(got, ref, strict=True)
        ),
        "tokens_compared": new * len(prompts),
        "kv_layout": layout,
        "cuda_graphs": graphs,
        "fused_layers": fused,
        "compile_decode": compile_decode,
        **chained,
    }


def phase_parity(args: argparse.Namespace, tiny_only: bool = False) -> dict[str, Any]:
    tiny = {
        "vocab_size": 2048, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }  # fmt: skip
    out: dict[str, Any] = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = random_model(tiny, dtype)
        prompts = [[1] + [(i * 13 + j * 7) % 1500 + 5 for j in range(4 + 9 * i)] for i in range(16)]
        out[f"tiny_{name}"] = parity_run(model, name, prompts, 32, args.compile)
        log("parity tiny", name, out[f"tiny_{name}"]["sequences_identical"])
        del model
    if tiny_only:
        return out
    model = random_model(LLAMA3_8B, torch.bfloat16)
    prompts = prompts_for(16, 64, LLAMA3_8B["vocab_size"], 3)
    out["llama3_8b_shaped_bfloat16"] = parity_run(model, "bfloat16", prompts, 32, args.compile)
    log("parity 8b bf16", out["llama3_8b_shaped_bfloat16"]["sequences_identical"])
    del model
    torch.cuda.empty_cache()
    return out


def phase_parity8b32(args: argparse.Namespace) -> dict[str, Any]:
    model = random_model(LLAMA3_8B, torch.float32)
    prompts = prompts_for(16, 64, LLAMA3_8B["vocab_size"], 3)
    result = parity_run(model, "float32", prompts, 16, args.compile)
    log("parity 8b fp32", result["sequences_identical"])
    del model
    torch.cuda.empty_cache()
    return result


def dispose(engine: Engine) -> None:
    """Stop ``engine`` and give its KV cache and graph pool back to the GPU."""
    engine.stop()
    engine.graphs.clear()
    engine.slots = None
    engine.__dict__.pop("_out_logits", None)
    gc.collect()
    torch.cuda.empty_cache()


def make_engine(model: Any, **kwargs: Any) -> Engine:
    limits = EngineLimits(
        max_batch_size=64, max_seq_len=PROMPT + OUTPUT, max_num_tokens=4096, max_queue_size=1024
    )
    return Engine("", model=model, dtype="bfloat16", limits=limits, **kwargs)


# the in-process closed loops of the engine phases: (concurrency, requests)
LOOP_PLAN = [(1, 8), (16, 64), (64, 384)]


def phase_engine(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    return engine_run(model, "slots+graphs", LOOP_PLAN, compile_decode=args.compile)


def phase_engine64(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The engine at concurrency 64 only, for memory (run under each PYTORCH_CUDA_ALLOC_CONF)."""
    result = engine_run(model, "slots+graphs", [(64, 384)])
    result["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return result


def phase_fused_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The fused layers (trtbuild.runtime.fused) against transformers' layers, same engine."""
    plan = [(1, 8), (64, 384)]
    return {
        "unfused": engine_run(model, "slots+graphs, transformers layers", plan, fused_layers=False),
        "fused": engine_run(model, "slots+graphs+fused layers", plan, fused_layers=True),
    }


def fused_kernels(engine: Engine) -> dict[str, str] | None:
    """How the fused layers' elementwise kernels run (compiled, or eager after a failure)."""
    if not engine.fused_layers:
        return None
    from trtbuild.runtime.fused import FUSED_ATTR

    return getattr(engine.model.get_decoder().layers[0], FUSED_ATTR).kernels.status()


def phase_async_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """async_decode (the next step launched before this one's tokens are handed out) against
    the synchronous loop, same engine otherwise (fused layers, graphs)."""
    return {
        "sync": engine_run(model, "fused, sync", LOOP_PLAN, steps=False, async_decode=False),
        "async": engine_run(
            model, "fused, async_decode", LOOP_PLAN, steps=False, async_decode=True
        ),
    }


def phase_mixed_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Arrivals prefilled inside decode steps (mixed_prefill_tokens, the default) against
    prefilled on their own before the next step, same engine otherwise; and the GPU time of
    the batch-64 mixed steps' graphs against the plain step's."""
    return {
        "separate": engine_run(
            model, "prefills alone", LOOP_PLAN, steps=False, mixed_prefill_tokens=0
        ),
        "mixed": engine_run(model, "mixed prefills", LOOP_PLAN, steps=False, mixed_ms=True),
    }


def phase_flex_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Decode attention of batches of 32 rows or more through compiled flex attention (the
    default) against SDPA's memory-efficient kernel everywhere, same engine otherwise: graph
    step times, mixed steps' times and the in-process closed loops."""
    return {
        "sdpa": engine_run(model, "sdpa decode", LOOP_PLAN, mixed_ms=True, flex_decode_batch=0),
        "flex": engine_run(model, "flex decode", LOOP_PLAN, mixed_ms=True),
    }


def phase_kv_writes_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The fused layers writing the KV cache in their rotary kernel (fused_kv_writes, the
    default on CUDA since round 6) against two writes of the cache's own, same engine otherwise:
    graph step times, mixed steps' times and the in-process closed loops (round 6, call 1, ran
    them the other way round: "default" was the writes apart)."""
    return {
        "apart": engine_run(
            model, "kv writes apart", LOOP_PLAN, mixed_ms=True, fused_kv_writes=False
        ),
        "fused_kv_writes": engine_run(model, "kv writes in rotary", LOOP_PLAN, mixed_ms=True),
    }


def mixed_graph_ms(engine: Engine, batch: int = 64, length: int = 256) -> dict[str, Any]:
    """GPU ms of each (``batch``, ``length``, requests, width) mixed graph, inputs that write
    the scratch slot only (as at capture), and of the plain decode step beside them."""
    assert engine.slots is not None
    out: dict[str, Any] = {f"decode_b{batch}_L{length}": graph_step_ms(engine, batch, length)}
    for rows, width in engine.mixed_buckets:
        engine._load_scratch_mixed(batch, rows, width)
        key = (batch, length, rows, width)
        out[f"mixed_b{batch}_L{length}_{rows}x{width}"] = graph_ms(engine._mixed_captured, key)
    return out


GEMM_MARKS = ("gemm", "nvjet", "cutlass", "sm90_", "sm100_", "cublas")


def kernel_profile(run: Callable[[], Any], reps: int = 5, **about: Any) -> dict:
    """The GPU kernels of ``run`` (one step: a graph replay or an eager step; torch.profiler),
    summed per kernel name, with ``about`` (what was run) in front."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            run()
        torch.cuda.synchronize()
    rows = []
    for item in prof.key_averages():
        us = getattr(item, "device_time_total", 0) or getattr(item, "cuda_time_total", 0)
        if us > 0:
            rows.append((item.key, item.count / reps, us / reps))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    gemm = sum(r[2] for r in rows if any(m in r[0].lower() for m in GEMM_MARKS))
    return {
        **about,
        "kernels_per_step": round(sum(r[1] for r in rows), 1),
        "kernel_us_per_step": round(total, 1),
        "gemm_us_per_step": round(gemm, 1),
        "top": [
            {"kernel": k[:120], "calls": round(c, 1), "us": round(us, 1)} for k, c, us in rows[:40]
        ],
    }


# a Llama-3-8B decoder layer's matrix multiplies (N x K) and the output head
GEMM_SHAPES = {
    "qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096),
    "down": (4096, 14336), "lm_head": (128256, 4096),
}  # fmt: skip


def gemm_us(fn: Callable[[int], Any], copies: int, reps: int = 40) -> float:
    """Mean microseconds of ``fn(i)`` over weight copies ``i`` (cycled so that L2 never holds
    the next one)."""
    for i in range(copies):
        fn(i)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for r in range(reps):
        fn(r % copies)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def gemm_row(name: str, m: int, ws: list[torch.Tensor], bw: float) -> dict[str, Any]:
    """One shape at ``m`` rows: microseconds of each way of running it, and floor / that."""
    F = torch.nn.functional
    n, k = ws[0].shape
    copies = len(ws)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    floor_us = n * k * 2 / bw * 1e6
    row: dict[str, Any] = {"shape": name, "m": m, "n": n, "k": k, "floor_us": round(floor_us, 1)}
    row["linear_us"] = gemm_us(lambda i: F.linear(x, ws[i]), copies)
    wts = [w.t().contiguous() for w in ws]
    row["matmul_kn_us"] = gemm_us(lambda i: x @ wts[i], copies)
    wts.clear()
    try:
        torch.backends.cuda.preferred_blas_library("cublaslt")
        row["cublaslt_us"] = gemm_us(lambda i: F.linear(x, ws[i]), copies)
    finally:
        torch.backends.cuda.preferred_blas_library("cublas")
    if name == "gate_up":
        halves = [(w[: n // 2].contiguous(), w[n // 2 :].contiguous()) for w in ws]
        row["two_halves_us"] = gemm_us(
            lambda i: (F.linear(x, halves[i][0]), F.linear(x, halves[i][1])), copies
        )
        halves.clear()
    if name in ("gate_up", "down") and m == 64:
        try:
            t = time.perf_counter()
            tuned = torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)
            tuned(x, ws[0])
            row["autotune_compile_s"] = round(time.perf_counter() - t, 1)
            row["autotuned_us"] = gemm_us(lambda i: tuned(x, ws[i]), copies)
        except Exception as exc:  # noqa: BLE001 - the other variants still count
            row["autotuned_error"] = f"{type(exc).__name__}: {exc}"[:300]
    for key in [key for key in row if key.endswith("_us") and key != "floor_us"]:
        row[key] = round(row[key], 1)
        row[key.replace("_us", "_of_floor")] = round(floor_us / row[key], 2)
    return row


def phase_gemm(args: argparse.Namespace) -> dict[str, Any]:
    """Decode-shaped matrix multiplies (M rows) in bf16, several ways: F.linear on [N, K]
    weights (what the layers run), x @ W.T made contiguous, cuBLASLt, gate_up as two halves,
    and inductor's autotuned GEMM (torch.compile max-autotune) for the two MLP shapes."""
    env_file = args.out / "env.json"
    env = json.loads(env_file.read_text()) if env_file.exists() else {}
    bw = env.get("hbm_copy_bytes_per_s") or 4.25e12
    out: dict[str, Any] = {"hbm_bytes_per_s": bw, "rows": []}
    for name, (n, k) in GEMM_SHAPES.items():
        copies = max(2, -(-200_000_000 // (n * k * 2)))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        for m in args.gemm_m:
            row = gemm_row(name, m, ws, bw)
            log("gemm", json.dumps(row))
            out["rows"].append(row)
        ws.clear()
        torch.cuda.empty_cache()
    return out


ATTENTION_SHAPE = {"kv_heads": 8, "groups": 4, "head_dim": 128, "max_seq_len": 256}


def phase_attention(args: argparse.Namespace) -> dict[str, Any]:
    """One layer's decode attention (Llama-3-8B: 8 KV heads x 4 query heads, head_dim 128) over
    L cached positions, microseconds per call for several kernels: SDPA's memory-efficient and
    cuDNN backends on the slot layout's [slots, seq, kv_heads, d] cache (what runs), and plain
    batched matrix multiplies (+ softmax) on a head-major [slots, kv_heads, seq, d] copy."""
    rows = [attention_row(b, length) for b in (1, 16, 64) for length in (128, 256)]
    return {"shape": ATTENTION_SHAPE, "rows": rows}


def decode_attention_inputs(
    b: int, length: int, pos_high: int, copies: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``copies`` slot-layout K/V caches ``[2, b, max_seq_len, kv_heads, head_dim]``, one query
    per row ``[b, heads, head_dim]``, each row's position (``length // 2 .. pos_high - 1``) and
    the additive mask ``[b, 1, 1, length]`` that hides what lies past it."""
    kvh, groups, d, seq = (
        ATTENTION_SHAPE[k] for k in ("kv_heads", "groups", "head_dim", "max_seq_len")
    )
    caches = [
        torch.randn(2, b, seq, kvh, d, device="cuda", dtype=torch.bfloat16) for _ in range(copies)
    ]
    q = torch.randn(b, kvh * groups, d, device="cuda", dtype=torch.bfloat16)
    pos = torch.randint(length // 2, pos_high, (b,), device="cuda")
    visible = torch.arange(length, device="cuda")[None, :] <= pos[:, None]
    mask = torch.zeros(visible.shape, dtype=torch.bfloat16, device="cuda")
    return caches, q, pos, mask.masked_fill(~visible, float("-inf"))[:, None, None, :]


def attention_row(b: int, length: int, copies: int = 8) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    kvh, groups, d = (ATTENTION_SHAPE[k] for k in ("kv_heads", "groups", "head_dim"))
    caches, flat_q, _, mask = decode_attention_inputs(b, length, length, copies)
    heads_major = [c.permute(0, 1, 3, 2, 4).contiguous() for c in caches]
    q = flat_q.view(b, kvh, groups, d)
    scale = d**-0.5

    def sdpa(i: int) -> Any:
        k = caches[i][0].transpose(1, 2)[:, :, :length]
        v = caches[i][1].transpose(1, 2)[:, :, :length]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def bmm(i: int) -> Any:
        k = heads_major[i][0][:, :, :length]
        v = heads_major[i][1][:, :, :length]
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale + mask
        return torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), v)

    row: dict[str, Any] = {"batch": b, "length": length}
    row["kv_floor_us"] = round(2 * b * length * kvh * d * 2 / 4.25e12 * 1e6, 2)
    ref = None
    for name, fn, backend in (
        ("efficient", sdpa, SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", sdpa, SDPBackend.CUDNN_ATTENTION),
        ("math_sdpa", sdpa, SDPBackend.MATH),
        ("bmm_heads_major", bmm, None),
    ):
        try:
            with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
                got = fn(0)
                row[f"{name}_us"] = round(gemm_us(fn, copies), 1)
            ref = got if ref is None else ref
            row[f"{name}_max_diff"] = float((got.float() - ref.float()).abs().max())
        except Exception as exc:  # noqa: BLE001 - the other kernels still count
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
    if b == 64 and length == 256:
        try:
            compiled = torch.compile(bmm, dynamic=False)
            compiled(0)
            row["bmm_compiled_us"] = round(gemm_us(compiled, copies), 1)
        except Exception as exc:  # noqa: BLE001 - the other kernels still count
            row["bmm_compiled_error"] = f"{type(exc).__name__}: {exc}"[:200]
    log("attention", json.dumps(row))
    return row


def graph_us(fn: Callable[[int], Any], copies: int, reps: int = 16) -> float:
    """Mean microseconds of ``fn(i)`` replayed from one CUDA graph of ``reps`` calls (no launch
    gaps: what a captured decode step pays)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for r in range(reps):
            fn(r % copies)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * reps)


def phase_flash_decode(args: argparse.Namespace) -> dict[str, Any]:
    """Decode attention in CUDA graphs: SDPA memory-efficient on the folded query with a mask
    (what runs) against flash attention's variable-length forward reading each slot's first
    ``seqused_k`` positions (no mask, GQA native) and compiled flex attention (its decoding
    kernel splits the keys; the row's length as a score_mod), on the slot layout's cache."""
    flash = torch.ops.aten._flash_attention_forward
    rows = [flash_row(b) for b in (1, 16, 64)]
    return {"signature": str(getattr(flash.default, "_schema", ""))[:600], "rows": rows}


def flash_row(b: int, copies: int = 8) -> dict[str, Any]:
    F = torch.nn.functional
    flash = torch.ops.aten._flash_attention_forward
    kvh, groups, d, seq = (
        ATTENTION_SHAPE[k] for k in ("kv_heads", "groups", "head_dim", "max_seq_len")
    )
    heads = kvh * groups
    caches, q, pos, mask = decode_attention_inputs(b, seq, seq - 1, copies)
    cu_q = torch.arange(b + 1, device="cuda", dtype=torch.int32)
    cu_k = cu_q * seq
    used = (pos + 1).to(torch.int32)
    scale = d**-0.5

    def efficient(i: int) -> Any:
        k = caches[i][0].transpose(1, 2)
        v = caches[i][1].transpose(1, 2)
        folded = q.view(b, kvh, groups, d)
        o = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask, scale=scale)
        return o.reshape(b, heads, d)

    def varlen(i: int) -> Any:
        k = caches[i][0].view(b * seq, kvh, d)
        v = caches[i][1].view(b * seq, kvh, d)
        return flash(q, k, v, cu_q, cu_k, 1, seq, 0.0, False, False, scale=scale, seqused_k=used)[0]

    def flex(i: int) -> Any:
        k = caches[i][0].transpose(1, 2)
        v = caches[i][1].transpose(1, 2)
        o = flex_compiled(
            q.view(b, heads, 1, d), k, v, score_mod=visible_mod, enable_gqa=True, scale=scale
        )
        return o.reshape(b, heads, d)

    def visible_mod(score: Any, batch: Any, head: Any, q_idx: Any, kv_idx: Any) -> Any:
        return torch.where(kv_idx <= pos[batch], score, -float("inf"))

    from torch.nn.attention.flex_attention import flex_attention

    flex_compiled = torch.compile(flex_attention, dynamic=False)
    row: dict[str, Any] = {"batch": b, "length": seq}
    ref = efficient(0)
    for name, fn in (("efficient", efficient), ("flash_varlen", varlen), ("flex", flex)):
        try:
            got = fn(0)
            row[f"{name}_max_diff"] = float((got.float() - ref.float()).abs().max())
            row[f"{name}_graph_us"] = round(graph_us(fn, copies), 1)
        except Exception as exc:  # noqa: BLE001 - the other kernel still counts
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    log("flash_decode", json.dumps(row))
    caches.clear()
    return row


# flex_tune's candidates: flex_attention kernel_options for its decoding kernel (BLOCK_N keys a
# block, software-pipeline stages, warps, SPLIT_KV key splits per row and KV head); {} is
# inductor's own choice
FLEX_TUNE_OPTIONS: list[dict[str, int]] = [
    {},
    {"num_stages": 2},
    {"num_stages": 3},
    {"num_warps": 4},
    {"num_warps": 4, "num_stages": 2},
    {"num_warps": 4, "num_stages": 3},
    {"BLOCK_N": 32, "num_stages": 3},
    {"BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
    {"BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"SPLIT_KV": 2},
    {"SPLIT_KV": 2, "num_warps": 4, "num_stages": 2},
    {"SPLIT_KV": 4, "num_warps": 4, "num_stages": 2},
]
FLEX_TUNE_SHAPES = ((64, 256), (32, 256))  # (rows, L): the buckets flex serves most


def phase_flex_tune(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's compiled flex decode attention (``_flex_decoder``) with each of
    FLEX_TUNE_OPTIONS, one layer's call replayed in a CUDA graph at FLEX_TUNE_SHAPES: us per
    call, the largest difference from SDPA on the same inputs, compile seconds; then the set
    with the least time over all shapes among those within bf16 noise (``best``)."""
    from trtbuild.runtime import fused

    fused.raise_recompile_limit(2 * len(FLEX_TUNE_OPTIONS) * len(FLEX_TUNE_SHAPES))
    rows = [row for b, length in FLEX_TUNE_SHAPES for row in flex_tune_rows(b, length)]
    totals: dict[str, float] = {}
    for row in rows:
        key = json.dumps(row["options"], sort_keys=True)
        ok = "graph_us" in row and row["max_diff"] < 0.05
        totals[key] = totals.get(key, 0.0) + (row["graph_us"] if ok else float("inf"))
    best = min(totals, key=lambda k: totals[k])
    return {
        "rows": rows,
        "total_us": {k: (round(v, 1) if v != float("inf") else None) for k, v in totals.items()},
        "best": json.loads(best) if totals[best] != float("inf") else None,
        "engine_default": engine_module.FLEX_KERNEL_OPTIONS,
    }


def flex_tune_rows(b: int, length: int, copies: int = 8) -> list[dict[str, Any]]:
    """flex_tune at ``b`` rows over ``L`` = ``length`` positions: one row per candidate."""
    F = torch.nn.functional
    kvh, groups, d = (ATTENTION_SHAPE[k] for k in ("kv_heads", "groups", "head_dim"))
    caches, flat_q, _, mask = decode_attention_inputs(b, length, length, copies)
    q = flat_q.view(b, kvh * groups, 1, d)
    scale = d**-0.5
    kv = [
        (c[0].transpose(1, 2)[:, :, :length], c[1].transpose(1, 2)[:, :, :length]) for c in caches
    ]
    ref = F.scaled_dot_product_attention(
        flat_q.view(b, kvh, groups, d), *kv[0], attn_mask=mask, scale=scale
    ).reshape(b, kvh * groups, 1, d)
    rows = []
    for options in FLEX_TUNE_OPTIONS:
        row: dict[str, Any] = {"batch": b, "length": length, "options": options}
        attend = engine_module._flex_decoder(True, options)

        def call(i: int, attend: Callable[..., Any] = attend) -> Any:
            return attend((q, *kv[i]), mask, scale)

        try:
            t = time.perf_counter()
            got = call(0)
            torch.cuda.synchronize()
            row["compile_s"] = round(time.perf_counter() - t, 1)
            row["max_diff"] = float((got.float() - ref.float()).abs().max())
            row["graph_us"] = round(graph_us(call, copies), 1)
        except Exception as exc:  # noqa: BLE001 - the other candidates still count
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        log("flex_tune", json.dumps(row))
        rows.append(row)
    caches.clear()
    return rows


def phase_flex_options_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The engine's flex decode attention with inductor's own kernel options against
    FLEX_KERNEL_OPTIONS (and against flex_tune's ``best``, where this --out's flex_tune.json
    names another), same engine otherwise: graph step times, mixed steps' times, in-process
    closed loops."""
    out = {
        "inductor": engine_run(
            model, "flex inductor options", LOOP_PLAN, mixed_ms=True, flex_options={}
        ),
        "default": engine_run(model, "flex default options", LOOP_PLAN, mixed_ms=True),
    }
    tuned = args.out / "flex_tune.json"
    best = json.loads(tuned.read_text()).get("best") if tuned.is_file() else None
    if best is not None and best != engine_module.FLEX_KERNEL_OPTIONS:
        out["tuned"] = engine_run(
            model, "flex tuned options", LOOP_PLAN, mixed_ms=True, flex_options=best
        )
    return out


def mixed_replay(engine: Engine, key: tuple[int, int, int, int]) -> None:
    """Replay mixed graph ``key`` (batch, L, requests, width) on inputs that write the scratch
    slot only."""
    engine._load_scratch_mixed(key[0], key[2], key[3])
    engine._mixed_captured[key].replay()


def phase_kernels(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Where a decode step's GPU time goes: its kernels at batch 1 and 64 (L 256)."""
    engine = make_engine(model).start()
    engine.warmup()
    out: dict[str, Any] = {}

    def measure() -> None:
        engine._ids.zero_()
        engine._positions.zero_()
        assert engine.slots is not None
        for i in range(engine.slots.num_slots):
            engine.slots.touch(i, 1)
        runs: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {}
        for batch in (1, 64):
            about = {"batch": batch, "length": 256}
            runs[f"b{batch}_graph"] = (
                engine.graphs[(batch, 256)].replay,
                {**about, "from": "graph replay"},
            )
            runs[f"b{batch}_eager"] = (
                functools.partial(engine._decode_body, batch, 256),
                {**about, "from": "eager"},
            )
        for rows, width in ((1, 128), (2, 128)):  # a step with prompts riding on it
            key = (64, 256, rows, width)
            if key in engine._mixed_captured:
                runs[f"b64_mixed_{rows}x{width}"] = (
                    functools.partial(mixed_replay, engine, key),
                    {"batch": 64, "length": 256, "prompts": rows, "width": width},
                )
        for name, (run, about) in runs.items():
            try:
                out[name] = kernel_profile(run, **about)
            except Exception as exc:  # noqa: BLE001 - the other profiles still run
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log("kernels", name, json.dumps(out[name])[:600])
        out["graph_b64_L256_ms"] = graph_step_ms(engine, 64, 256)
        out["graph_b1_L256_ms"] = graph_step_ms(engine, 1, 256)
        vocab = model.config.vocab_size
        for k in (1, 32):  # a prefill graph's bucket, and one of its own
            out[f"prefill_{k}x{PROMPT}_ms"] = prefill_ms(engine, k, PROMPT, vocab)
        out.update(mixed_graph_ms(engine))

    engine._on_engine_thread(measure)
    dispose(engine)
    return out


def engine_run(
    model: Any,
    tag: str,
    plan: list[tuple[int, int]],
    steps: bool = True,
    mixed_ms: bool = False,
    flex_options: dict[str, int] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One engine: warm-up, the GPU time of its graph steps and prefills (``steps``), then the
    closed loops of ``plan`` (concurrency, requests). ``flex_options``: its flex decode
    attention compiled with these kernel options instead of FLEX_KERNEL_OPTIONS."""
    vocab = model.config.vocab_size
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    engine = make_engine(model, **kwargs).start()
    if flex_options is not None and engine.slots is not None and engine.slots.flex is not None:
        engine.slots.flex = engine_module._flex_decoder(True, flex_options)
    alloc_s = time.perf_counter() - t
    t = time.perf_counter()
    engine.warmup()
    warm_s = time.perf_counter() - t
    memory = {
        "weights_bytes": weight_bytes(model),
        "kv_cache_bytes": engine.kv_cache_bytes,
        "kv_slots": engine.limits.max_batch_size,
        "activation_reserve_bytes": engine.activation_reserve_bytes(),
        "allocated_after_warmup": torch.cuda.memory_allocated(),
        "reserved_after_warmup": torch.cuda.memory_reserved(),
        "nvidia_smi_used_mib_after_warmup": gpu_memory_used_mib(),
    }
    step_ms: dict[str, Any] = {}
    prefills = {}

    def measure() -> None:
        engine._ids.zero_()  # the timed steps write position 0 of free slots
        engine._positions.zero_()
        assert engine.slots is not None
        for i in range(engine.slots.num_slots):
            engine.slots.touch(i, 1)
        for batch in (1, 16, 64):
            step_ms[f"graph_b{batch}_L256_ms"] = graph_step_ms(engine, batch, 256)
        for k in (1, 16, 32):
            prefills[f"prefill_{k}x{PROMPT}_ms"] = prefill_ms(engine, k, PROMPT, vocab)
        step_ms["eager_b64_L256_ms"] = eager_step_ms(engine, 64, 256)
        step_ms["eager_b1_L256_ms"] = eager_step_ms(engine, 1, 256)

    if steps:
        engine._on_engine_thread(measure)
    loops = run_loops(engine, vocab, plan, tag)
    mixed: dict[str, Any] = {}
    if mixed_ms:
        engine._on_engine_thread(lambda: mixed.update(mixed_graph_ms(engine)))
    memory["peak_reserved"] = torch.cuda.max_memory_reserved()
    memory["peak_allocated"] = torch.cuda.max_memory_allocated()
    memory["nvidia_smi_used_mib_after_loops"] = gpu_memory_used_mib()
    result = {
        "engine_alloc_s": round(alloc_s, 2),
        "warmup_s": round(warm_s, 2),
        "compile_decode": bool(kwargs.get("compile_decode")),
        "fused_layers": engine.fused_layers,
        "fused_kernels": fused_kernels(engine),
        "first_calls_s": round(engine.compile_seconds, 2),
        "graphs": len(engine.graphs),
        "batch_buckets": engine.batch_buckets,
        "length_buckets": engine.length_buckets,
        "memory": memory,
        "async_decode": engine.async_decode,
        "decode_steps": engine.steps,
        "chained_steps": engine.chained_steps,
        "prefills": engine.prefills,
        "prefilled": engine.prefilled,
        "synced_launches": engine.synced_launches,
        "ended_row_steps": engine.ended_row_steps,
        "ended_row_steps_queued": engine.ended_row_steps_queued,
        "mixed_steps": engine.mixed_steps,
        "flex_decode_batch": engine.flex_decode_batch,
        "flex_kernel_options": (
            engine_module.FLEX_KERNEL_OPTIONS if flex_options is None else flex_options
        ),
        "fused_kv_writes": engine.fused_kv_writes,
        "graphs_mixed": len(engine._mixed_captured),
        "graphs_prefill": len(engine._prefill_captured),
        "step_gpu_ms": step_ms,
        "mixed_graph_ms": mixed,
        "prefill": prefills,
        "loops": loops,
    }
    dispose(engine)
    return result


def phase_ab(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    vocab = model.config.vocab_size
    out = []
    for tag, kwargs in (
        ("slots eager", {"cuda_graphs": False}),
        ("dynamic eager", {"kv_cache": "dynamic"}),
    ):
        engine = make_engine(model, **kwargs).start()
        engine.warmup()
        out += run_loops(engine, vocab, [(1, 3), (64, 64)], tag)
        dispose(engine)
    return {"loops": out}


# -- served -----------------------------------------------------------------------------------------
def engine_gauges(metrics_url: str | None) -> dict[str, int]:
    """The served engine's counters so far: ``steps`` (TensorRT-LLM's iteration counter gauge)
    and the portable runtime's own (``trtbuild_runtime_counters``), which it updates every
    cancellation poll; empty where the metrics cannot be read."""
    if not metrics_url:
        return {}
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith("nv_trt_llm_general_metrics{") and "iteration_counter" in line:
            out["steps"] = int(float(value))
        elif line.startswith("trtbuild_runtime_counters{") and 'counter="' in line:
            out[line.split('counter="', 1)[1].split('"', 1)[0]] = int(float(value))
    return out


def served_loop(
    url: str,
    model: str,
    concurrency: int,
    requests: int,
    prompts: list[Any],
    metrics_url: str | None = None,
) -> dict[str, Any]:
    """The closed loop of streaming gRPC clients (scripts/_grpc_load.py), in this file's keys
    (with ``metrics_url``, also the decode steps the engine ran meanwhile)."""
    before = engine_gauges(metrics_url)
    records = _grpc_load.closed_loop(
        url, model, concurrency, max(1, requests // concurrency), prompts, OUTPUT
    )
    found = _grpc_load.summarize(records)
    time.sleep(0.3)  # the gauges are refreshed every cancellation poll
    after = engine_gauges(metrics_url)
    counted = {k: after[k] - before[k] for k in after if k in before}
    steps = counted.pop("steps", None)
    seconds = found.get("seconds")
    return {
        "engine_counters": counted,
        "decode_steps": steps,
        "wall_per_step_ms": round(seconds / steps * 1e3, 2) if steps and seconds else None,
        "target": model,
        "concurrency": concurrency,
        "requests": found["requests"],
        "output_tokens": found.get("output_tokens", 0),
        "seconds": found.get("seconds"),
        "tokens_per_s": found.get("output_tokens_per_s"),
        "ttft_p50_ms": found.get("ttft_ms_p50"),
        "ttft_p99_ms": found.get("ttft_ms_p99"),
        "itl_p50_ms": found.get("itl_ms_p50"),
        "itl_p99_ms": found.get("itl_ms_p99"),
        "errors": found["errors"],
    }


def gpu_apps() -> dict[int, int]:
    """pid -> GPU memory used (MiB), per process, from nvidia-smi."""
    out = nvidia_smi("--query-compute-apps=pid,used_memory")
    if out is None:
        return {}
    apps = {}
    for line in out.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            apps[int(parts[0])] = int(parts[1])
    return apps


class MemoryPoll:
    """Peak GPU memory while serving: the whole GPU, and the processes other than this one;
    and the GPU's clocks, temperature, power and throttle reasons over the same samples (a
    slower call's numbers can then be told from a slower engine's)."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_others = 0
        self.clocks: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            used = gpu_memory_used_mib()
            if used:
                self.peak = max(self.peak, used)
            others = sum(m for pid, m in gpu_apps().items() if pid != os.getpid())
            self.peak_others = max(self.peak_others, others)
            self._sample_clocks()

    def _sample_clocks(self) -> None:
        fields = "clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active"
        answer = nvidia_smi(f"--query-gpu={fields}")
        if not answer:
            return
        parts = [p.strip() for p in answer.splitlines()[0].split(",")]
        if len(parts) != 5:
            return
        c = self.clocks
        for key, text in zip(("sm_mhz", "mem_mhz", "temp_c", "power_w"), parts[:4], strict=True):
            try:
                value = float(text)
            except ValueError:
                continue
            c[f"{key}_min"] = min(c.get(f"{key}_min", value), value)
            c[f"{key}_max"] = max(c.get(f"{key}_max", value), value)
        c.setdefault("throttle_reasons_seen", [])
        if parts[4] not in c["throttle_reasons_seen"]:
            c["throttle_reasons_seen"].append(parts[4])

    def __enter__(self) -> MemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def save_model(args: argparse.Namespace, model: Any | None) -> None:
    """The 8B-shaped checkpoint and a 128,256-id tokenizer in ``--model-dir`` (kept if there)."""
    model_dir = Path(args.model_dir)
    if (model_dir / "config.json").is_file():
        return
    t = time.perf_counter()
    if model is None:
        model = random_model(LLAMA3_8B, torch.bfloat16)
    model.save_pretrained(model_dir)
    synthetic_tokenizer(model_dir, LLAMA3_8B["vocab_size"])
    log("saved", model_dir, "in", round(time.perf_counter() - t, 1), "s")


def served_repo(args: argparse.Namespace) -> Any:
    """The served model's repository and the ServeSpec that serves it."""
    from trtbuild.render import render_repository
    from trtbuild.specs import RepoSpec, ServeSpec, ServingLimits

    model_dir = Path(args.model_dir)
    limits = ServingLimits(
        max_batch_size=64, max_input_len=PROMPT, max_seq_len=PROMPT + OUTPUT,
        max_num_tokens=args.max_num_tokens, max_queue_size=256,
    )  # fmt: skip
    spec = RepoSpec(
        runtime="torch", engine_dir=model_dir, tokenizer_dir=model_dir, end_id=2, pad_id=3,
        limits=limits, preprocessing_instance_count=4, num_threads=4, add_special_tokens=False,
    )  # fmt: skip
    repo = render_repository(spec, Path(args.workdir) / "repository", force=True)
    return ServeSpec(
        repo=repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=900, shutdown_grace=10
    )


# the served A/B: tensorrt_llm parameters per variant (the last is what a rendered repository
# gets by default)
def _variant(
    senders: int,
    fused: str,
    merge: bool = True,
    async_decode: str = "auto",
    wait_ms: int = 0,
    prefill_graphs: str = "auto",
    mixed: str = "auto",
    flex: str = "auto",
    kv_writes: str = "auto",
) -> dict[str, str]:
    return {
        "sender_threads": str(senders),
        "fused_layers": fused,
        "merge_responses": str(merge).lower(),
        "async_decode": async_decode,
        "admission_wait_ms": str(wait_ms),
        "prefill_graphs": prefill_graphs,
        "mixed_prefill_tokens": mixed,
        "flex_decode_batch": flex,
        "fused_kv_writes": kv_writes,
    }


# measured 2026-12-01, first round (before merged responses existed: one response per step):
# 1 sender with transformers' layers, 1 sender with fused layers, 4 senders with fused layers,
# and 4 senders with the GIL switch interval at 0.5 ms (sys.setswitchinterval, tried and dropped:
# no gain); docs/perf/h200.md has the numbers
# second call of round 2: "4 senders, fused, merged responses (the defaults)" _variant(4, "auto"),
# "4 senders, fused, one response per step" _variant(4, "auto", merge=False), "1 sender, fused,
# merged responses" _variant(1, "auto"); call 4: 4 against 2 senders, each twice (run to run
# variation at c=64 was 5,180-6,053 tok/s for one configuration): "4 senders" _variant(4, "auto"),
# "2 senders" _variant(2, "auto"), both with what async_decode "false" now asks for.
# Round 3, first call: async_decode against round 2's synchronous loop, and the sender count
# again with it: "2 senders, synchronous (round 2's defaults)" _variant(2, "auto",
# async_decode="false"), "2 senders, async_decode (the defaults)" _variant(2, "auto"), "1 sender,
# async_decode" _variant(1, "auto"), "4 senders, async_decode" _variant(4, "auto").
# Second call: the admission wait (and the served phase's defaults beside it): "2 senders,
# async_decode (the defaults)" _variant(2, "auto"), "2 senders, async_decode, admission_wait_ms
# 10" _variant(2, "auto", wait_ms=10), twice; both with what prefill_graphs "false" now asks for.
# Last call: graph-captured small prefills against none: "no prefill graphs (the previous
# defaults)" _variant(2, "auto", prefill_graphs="false", mixed="0"), "prefill graphs"
# _variant(2, "auto", mixed="0").
# Round 4: arrivals prefilled inside decode steps against on their own
SERVED_VARIANTS = {
    "mixed_prefill_tokens 0 (prefills alone)": _variant(2, "auto", mixed="0"),
    "mixed prefills (the defaults)": _variant(2, "auto"),
    "mixed_prefill_tokens 512": _variant(2, "auto", mixed="512"),
    "flex_decode_batch 0 (SDPA decode attention)": _variant(2, "auto", flex="0"),
    "fused_kv_writes false (round 5's default)": _variant(2, "auto", kv_writes="false"),
}


def ready_line(server: Any) -> str | None:
    """The tensorrt_llm model's "ready" log line (device, dtype, layout, graphs, fused)."""
    text = Path(server.log_path).read_text(errors="replace")
    return next(
        (line[-400:] for line in text.splitlines() if "portable runtime ready" in line), None
    )


SERVED_AB_LOOPS = ((1, 6), (64, 384))


def phase_served_ab(args: argparse.Namespace) -> dict[str, Any]:
    """The core model served with each of SERVED_VARIANTS: c=1 and c=64 (and a py-spy profile
    of the stub during the c=64 loop of the variants named in --py-spy-variants)."""
    from trtbuild.files.model_config import set_parameters
    from trtbuild.server import TritonServer, find_stubs

    if args.numpy_wheel:
        from trtbuild import _stub_env

        os.environ[_stub_env.NUMPY_WHEEL_ENV] = str(args.numpy_wheel)
    serve = served_repo(args)
    id_prompts = prompts_for(64, PROMPT, LLAMA3_8B["vocab_size"], 11)
    config = Path(serve.repo) / "tensorrt_llm" / "config.pbtxt"
    out: dict[str, Any] = {}
    profiled = set(filter(None, (args.py_spy_variants or "").split(",")))
    for index, (name, params) in enumerate(SERVED_VARIANTS.items()):
        if args.served_variants and str(index) not in args.served_variants.split(","):
            continue
        set_parameters(config, params)
        t = time.perf_counter()
        try:
            with TritonServer(serve, quiet=True) as server:
                result: dict[str, Any] = {
                    "params": params,
                    "startup_s": round(time.perf_counter() - t, 1),
                }
                stub = next(
                    (s for s in find_stubs(server._proc.pid) if s.model == "tensorrt_llm"), None
                )
                for concurrency, requests in SERVED_AB_LOOPS:
                    served_loop(
                        server.grpc_url, "tensorrt_llm", concurrency, concurrency, id_prompts
                    )
                    spy = None
                    if concurrency > 1 and str(index) in profiled and args.py_spy and stub:
                        spy = threading.Thread(
                            target=py_spy,
                            args=(args, stub.process.pid, args.out / f"py-spy-{index}"),
                        )
                        spy.start()
                    loop = served_loop(
                        server.grpc_url,
                        "tensorrt_llm",
                        concurrency,
                        requests,
                        id_prompts,
                        server.metrics_url,
                    )
                    if spy is not None:
                        spy.join()
                    result[f"c{concurrency}"] = loop
                result["ready"] = ready_line(server)
                result["log_tail"] = server.log_tail(4)
        except Exception as exc:  # noqa: BLE001 - the next variant still runs
            result = {"params": params, "error": f"{type(exc).__name__}: {exc}"}
        log("served_ab", name, json.dumps({k: v for k, v in result.items() if k != "log_tail"}))
        out[name] = result
    return out


def py_spy(args: argparse.Namespace, pid: int, prefix: Path) -> None:
    """Two py-spy samples of the stub (all threads; only the GIL holder), collapsed stacks."""
    for extra, suffix in (([], "threads"), (["--gil"], "gil")):
        argv = [
            str(args.py_spy), "record", "--pid", str(pid), "--duration", "5", "--rate", "250",
            "--format", "raw", "--threads", "--nonblocking", "-o", f"{prefix}-{suffix}.txt", *extra,
        ]  # fmt: skip
        try:
            result = proc.run(argv, timeout=60, check=False, quiet=True)
            log("py-spy", suffix, result.returncode, result.output[-300:])
        except TrtbuildError as exc:
            log("py-spy", suffix, "failed:", exc)


def phase_served(args: argparse.Namespace) -> dict[str, Any]:
    from trtbuild import _stub_env
    from trtbuild.server import TritonServer

    out: dict[str, Any] = {}
    model_dir = Path(args.model_dir)
    serve = served_repo(args)
    # 1. the host's own Python (numpy 2 on a stock GPU image) must be refused, with the fix
    os.environ.pop(_stub_env.NUMPY_WHEEL_ENV, None)
    try:
        TritonServer(serve, quiet=True)
        out["without_numpy_wheel"] = "accepted (the host's Python works for the stub)"
    except _stub_env.StubEnvError as exc:
        out["without_numpy_wheel"] = f"refused, exit {exc.exit_code}: {exc.message}"
    log("served: without a numpy<2 wheel:", out["without_numpy_wheel"])
    if args.numpy_wheel:
        os.environ[_stub_env.NUMPY_WHEEL_ENV] = str(args.numpy_wheel)
    t = time.perf_counter()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rng = random.Random(5)
    texts = []
    while len(texts) < 64:
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(3 * PROMPT))
        ids = tok.encode(text).ids
        while len(ids) > PROMPT:
            text = text[: -max(1, (len(ids) - PROMPT))]
            ids = tok.encode(text).ids
        texts.append(text)
    out["ensemble_prompt_tokens_mean"] = statistics.mean(len(tok.encode(x).ids) for x in texts)
    id_prompts = prompts_for(64, PROMPT, LLAMA3_8B["vocab_size"], 11)
    with MemoryPoll() as memory, TritonServer(serve, quiet=True) as server:
        out["startup_s"] = round(time.perf_counter() - t, 1)
        out["stub_env_path"] = server.install.env.get("PATH", "").split(os.pathsep)[0]
        out["gpu_memory_used_mib_ready"] = gpu_memory_used_mib()
        out["gpu_apps_mib_ready"] = gpu_apps()
        log("served: ready in", out["startup_s"], "s; stub PATH", out["stub_env_path"])
        loops = []
        for kind, target, concurrency, requests in (
            ("core", "tensorrt_llm", 1, 6),
            ("core", "tensorrt_llm", 16, 64),
            *[("core", "tensorrt_llm", 64, 384)] * args.served_repeats,
            ("ensemble", "ensemble", 64, 384),
        ):
            prompts = id_prompts if kind == "core" else texts
            served_loop(server.grpc_url, target, concurrency, concurrency, prompts)  # warm-up
            result = served_loop(
                server.grpc_url, target, concurrency, requests, prompts, server.metrics_url
            )
            log("served", json.dumps(result))
            loops.append(result)
        out["loops"] = loops
        out["trtbuild_perf"] = trtbuild_perf(args, serve.repo, server)
        out["ready"] = ready_line(server)
        out["log_tail"] = server.log_tail(15)
    out["gpu_memory_used_mib_peak"] = memory.peak
    out["gpu_memory_server_processes_mib_peak"] = memory.peak_others
    out["gpu_clocks_while_serving"] = memory.clocks
    return out


def trtbuild_perf(args: argparse.Namespace, repo: Path, server: Any) -> dict[str, Any]:
    """``trtbuild perf`` (perf_analyzer's measurement windows, the issue's own measure) against
    the running server: the core model and the ensemble at ``--perf-concurrency``, 128 in / 128
    out. Its results.json is copied to --out as trtbuild_perf_results.json; the summary here
    is one row per model and level. Skipped (with the reason) where perf_analyzer is missing."""
    from trtbuild._perf_results import PerfResults
    from trtbuild.perf_analyzer import find_perf_analyzer

    try:
        find_perf_analyzer()
    except TrtbuildError as exc:
        return {"skipped": str(exc)}
    results_dir = Path(args.workdir) / "trtbuild-perf"
    shutil.rmtree(results_dir, ignore_errors=True)  # never read an earlier run's results
    argv = [
        sys.executable, "-m", "trtbuild", "perf", str(repo),
        "--url", server.grpc_url, "--metrics-url", server.metrics_url,
        "--model", "tensorrt_llm", "--model", "ensemble",
        "--concurrency", args.perf_concurrency,
        "--input-len", str(PROMPT), "--output-len", str(OUTPUT),
        "--measurement-interval", str(args.perf_interval_ms), "--max-trials", "6",
        "--stability-percentage", str(args.perf_stability_percentage),
        "--out", str(results_dir), "--force", "--report", "md",
    ]  # fmt: skip
    t = time.perf_counter()
    shown = ["trtbuild", *argv[3:]]
    try:
        # cwd: away from a checkout, whose trtbuild/ would shadow the installed package
        run = proc.run(argv, quiet=True, check=False, timeout=900, cwd=Path(args.workdir))
    except TrtbuildError as exc:
        return {"argv": shown, "error": str(exc)}
    found: dict[str, Any] = {
        "argv": shown,
        "returncode": run.returncode,
        "seconds": round(time.perf_counter() - t, 1),
        "output_tail": run.output[-2500:],
    }
    if not (results_dir / "results.json").is_file():
        return found
    results = PerfResults.read(results_dir)
    results.write(args.out / "trtbuild_perf_results.json")
    rows = []
    for series, level in results.levels():
        m = level.metrics
        rows.append({
            "model": series.model, "concurrency": level.level, "stable": level.stable,
            "error": level.error,
            "output_tokens_per_s": m.output_tokens_per_s if m else None,
            "requests": m.requests if m else None,
            "window_s": m.window_s if m else None,
            "ttft_p50_ms": m.ttft_ms.p50 if m and m.ttft_ms else None,
            "itl_p50_ms": m.itl_ms.p50 if m and m.itl_ms else None,
        })  # fmt: skip
    found["rows"] = rows
    found["ratios"] = [r.model_dump(mode="json") for r in results.ratios]
    found["notes"] = results.notes
    log("trtbuild perf", json.dumps(rows))
    return found


# -- plot -------------------------------------------------------------------------------------------
def plot(results: Path, out: Path, roofline: dict[int, float]) -> None:
    """An SVG bar chart of output tok/s by concurrency, one bar per variant, from the phases'
    JSON in ``results`` (no plotting library needed)."""
    series: dict[str, dict[int, float]] = {}
    for name in ("ab.json", "engine.json", "async_ab.json", "served.json"):
        path = results / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        # a phase's own loops, or (an A/B phase) the loops of each of its runs
        runs = [data] if "loops" in data else [r for r in data.values() if isinstance(r, dict)]
        for loop in (loop for run in runs for loop in run.get("loops", [])):
            label = loop.get("variant") or f"served {loop['target']}"
            if label == "slots+graphs":
                label = "in process: slots + CUDA graphs"
            elif label.endswith("eager") or label.startswith("fused"):
                label = f"in process: {label}"
            series.setdefault(label, {})[loop["concurrency"]] = loop["tokens_per_s"]
        for row in data.get("trtbuild_perf", {}).get("rows", []):  # the served phase's
            if row.get("output_tokens_per_s") is not None:
                label = f"trtbuild perf {row['model']}"
                series.setdefault(label, {})[int(row["concurrency"])] = row["output_tokens_per_s"]
    levels = sorted({c for s in series.values() for c in s})
    colors = ["#9e9e9e", "#bdbdbd", "#1565c0", "#2e7d32", "#66bb6a", "#ef6c00"]
    width, height, left, bottom = 900, 420, 70, 60
    top = max([v for s in series.values() for v in s.values()] + list(roofline.values()))
    scale = (height - bottom - 30) / top
    group = (width - left - 20) / max(len(levels), 1)
    bar = group / (len(series) + 1.5)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24 * len(series)}" font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="18" font-size="14">Output tok/s, Llama-3-8B-shaped bf16, 128 in / 128 out (H200)</text>',
    ]  # fmt: skip
    y0 = height - bottom
    parts.append(f'<line x1="{left}" y1="{y0}" x2="{width - 10}" y2="{y0}" stroke="black"/>')
    for gi, level in enumerate(levels):
        x = left + gi * group + bar * 0.5
        for si, values in enumerate(series.values()):
            value = values.get(level)
            if value is None:
                continue
            h = value * scale
            bx = x + si * bar
            parts.append(
                f'<rect x="{bx:.1f}" y="{y0 - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" fill="{colors[si % len(colors)]}"/>'
                f'<text x="{bx + bar * 0.45:.1f}" y="{y0 - h - 3:.1f}" text-anchor="middle" font-size="10">{value:,.0f}</text>'
            )  # fmt: skip
        if level in roofline:
            ry = y0 - roofline[level] * scale
            parts.append(
                f'<line x1="{x:.1f}" y1="{ry:.1f}" x2="{x + bar * len(series):.1f}" y2="{ry:.1f}" stroke="#c62828" stroke-dasharray="4 3"/>'
                f'<text x="{x:.1f}" y="{ry - 4:.1f}" fill="#c62828" font-size="10">roofline {roofline[level]:,.0f}</text>'
            )  # fmt: skip
        parts.append(
            f'<text x="{x + bar * len(series) / 2:.1f}" y="{y0 + 18}" text-anchor="middle">concurrency {level}</text>'
        )  # fmt: skip
    for si, label in enumerate(series):
        ly = height + 24 * si - 10
        parts.append(
            f'<rect x="{left}" y="{ly - 10}" width="12" height="12" fill="{colors[si % len(colors)]}"/>'
            f'<text x="{left + 18}" y="{ly}">{label}</text>'
        )  # fmt: skip
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n")


# each phase: what it needs ("model": the 8B-shaped bf16 model in this process; "served": that
# model saved for a server and none here; "own": nothing) and how it runs
PHASES: dict[str, tuple[str, Callable[[argparse.Namespace, Any], dict[str, Any]]]] = {
    "env": ("own", lambda args, model: phase_env(args)),
    "parity": ("own", lambda args, model: phase_parity(args)),
    "parity_tiny": ("own", lambda args, model: phase_parity(args, tiny_only=True)),
    "engine": ("model", phase_engine),
    "engine64": ("model", phase_engine64),
    "ab": ("model", phase_ab),
    "fused_ab": ("model", phase_fused_ab),
    "async_ab": ("model", phase_async_ab),
    "mixed_ab": ("model", phase_mixed_ab),
    "kernels": ("model", phase_kernels),
    "gemm": ("own", lambda args, model: phase_gemm(args)),
    "attention": ("own", lambda args, model: phase_attention(args)),
    "flash_decode": ("own", lambda args, model: phase_flash_decode(args)),
    "flex_ab": ("model", phase_flex_ab),
    "flex_tune": ("own", lambda args, model: phase_flex_tune(args)),
    "flex_options_ab": ("model", phase_flex_options_ab),
    "kv_writes_ab": ("model", phase_kv_writes_ab),
    "served": ("served", lambda args, model: phase_served(args)),
    "served_ab": ("served", lambda args, model: phase_served_ab(args)),
    "parity8b32": ("own", lambda args, model: phase_parity8b32(args)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phases", default="env,parity,engine,ab,served,parity8b32")
    parser.add_argument("--model-dir", default="/dev/shm/trtbuild-llama3-8b-shaped")
    parser.add_argument("--workdir", default="/dev/shm/trtbuild-bench")
    parser.add_argument(
        "--max-num-tokens",
        type=int,
        default=4096,
        help="the served repository's max_num_tokens (trtbuild plan assumes 8192)",
    )
    parser.add_argument("--numpy-wheel", type=Path, help="a numpy<2 wheel for the stub environment")
    parser.add_argument(
        "--compile", action="store_true", help="in-process engines fuse decode with torch.compile"
    )
    parser.add_argument("--plot", type=Path, help="only draw the SVG from the JSON in --out")
    parser.add_argument("--py-spy", type=Path, help="py-spy, to profile the stub in served_ab")
    parser.add_argument(
        "--py-spy-variants",
        default="",
        help="served_ab variants to profile (indexes, comma-separated)",
    )
    parser.add_argument(
        "--served-variants",
        default="",
        help="served_ab variants to run (indexes into SERVED_VARIANTS, comma-separated; all if empty)",
    )
    parser.add_argument(
        "--served-repeats",
        type=int,
        default=1,
        help="the served phase's core c=64 loop, this many times on one server",
    )
    parser.add_argument(
        "--perf-concurrency",
        default="1,64",
        help="the served phase's trtbuild perf levels (needs perf_analyzer on PATH)",
    )
    parser.add_argument(
        "--perf-interval-ms",
        type=int,
        default=5000,
        help="the served phase's trtbuild perf measurement window",
    )
    parser.add_argument(
        "--perf-stability-percentage",
        type=int,
        default=50,
        help="the served phase's trtbuild perf stability criterion (999 takes any window)",
    )
    parser.add_argument(
        "--gemm-m",
        type=lambda v: [int(m) for m in v.split(",")],
        default=[1, 16, 64],
        help="the gemm phase's row counts (comma-separated)",
    )
    args = parser.parse_args()
    if args.plot:
        env = json.loads((args.out / "env.json").read_text())
        per_token = 16060522496  # the 8B-shaped model's weight bytes: a decode step reads them once
        roofline = {c: c * env["hbm_copy_bytes_per_s"] / per_token for c in CONCURRENCY}
        plot(args.out, args.plot, roofline)
        return 0
    assert torch.cuda.is_available(), "bench_gpu.py needs a CUDA GPU"
    args.out.mkdir(parents=True, exist_ok=True)
    phases = args.phases.split(",")
    model = None
    status = 0
    for phase in phases:
        log("phase", phase)
        try:
            if phase not in PHASES:
                raise ValueError(f"unknown phase {phase}; phases: {', '.join(PHASES)}")
            kind, run = PHASES[phase]
            if kind == "model" and model is None:
                model = random_model(LLAMA3_8B, torch.bfloat16)
            if kind == "served":
                save_model(args, model)
                model = None  # the server loads its own copy; this process keeps no weights
                gc.collect()
                torch.cuda.empty_cache()
            result = run(args, model)
        except Exception as exc:  # noqa: BLE001 - later phases still run
            status = 1
            result = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
            log("phase", phase, "failed:", result["error"])
        suffix = "-compiled" if args.compile and phase != "env" else ""
        (args.out / f"{phase}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
