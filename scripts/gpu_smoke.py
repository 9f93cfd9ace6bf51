#!/usr/bin/env python3
"""The portable runtime's engine on a CUDA GPU, in process (no Triton): parity and batching.

A quick check on a small checkpoint; scripts/bench_gpu.py (make bench-gpu) is the full benchmark.

Needs only torch and transformers (so it runs in a stock GPU image). Usage:
    python3 scripts/gpu_smoke.py MODEL_DIR [--out result.json]
MODEL_DIR: a checkpoint such as the one `trtbuild demo --workdir DIR` leaves in DIR/model.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from trtbuild.runtime.engine import Engine, EngineLimits  # noqa: E402


def prompts(n: int) -> list[list[int]]:
    return [[1] + [(i * 13 + j * 7) % 1500 + 5 for j in range(4 + 9 * i)] for i in range(n)]


def concurrent(engine: Engine, ps: list[list[int]], new: int) -> tuple[list[list[int]], float]:
    out: list[list[int]] = [[] for _ in ps]

    def run(i: int) -> None:
        out[i] = engine.generate(ps[i], new, end_id=-1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers

    report["transformers"] = transformers.__version__
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        ref_model = (
            AutoModelForCausalLM.from_pretrained(
                args.model, dtype=dtype, attn_implementation="sdpa"
            )
            .cuda()
            .eval()
        )
        ps = prompts(16)
        with torch.no_grad():
            ref = [
                ref_model.generate(
                    torch.tensor([p], device="cuda"),
                    max_new_tokens=32,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=3,
                )[0][len(p) :].tolist()
                for p in ps
            ]
        engine = Engine(
            str(args.model),
            device="cuda",
            dtype=dtype_name,
            limits=EngineLimits(max_batch_size=16, max_seq_len=512, max_num_tokens=512),
        ).start()
        engine.warmup()
        got, seconds = concurrent(engine, ps, 32)
        _, warm_seconds = concurrent(engine, ps, 32)  # the same shapes again: steady state
        same = sum(g == r for g, r in zip(got, ref, strict=True))
        first_diff = [
            next((k for k in range(32) if g[k] != r[k]), None)
            for g, r in zip(got, ref, strict=True)
        ]
        report[dtype_name] = {
            "sequences_identical_to_generate": f"{same}/16",
            "first_differing_token": first_diff,
            "tokens_per_s_16_concurrent_first_pass": round(16 * 32 / seconds, 1),
            "tokens_per_s_16_concurrent_second_pass": round(16 * 32 / warm_seconds, 1),
            "device": str(engine.device),
            "kv_layout": engine.kv_layout,
            "cuda_graphs": len(engine.graphs),
        }
        engine.stop()
        del ref_model
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["float32"]["sequences_identical_to_generate"] == "16/16" else 1


if __name__ == "__main__":
    raise SystemExit(main())
