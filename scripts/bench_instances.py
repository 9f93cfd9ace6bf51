#!/usr/bin/env python3
"""Replicas on one host: one tensorrt_llm instance against N, same model, same load.

    python scripts/bench_instances.py [--instances 2] [--concurrency 4,16] [--out .bench/instances]
                                      [--loader perf|grpc]

Renders the embedded tiny model (fp32, one torch thread per instance, the repository `make bench`
serves) with 1 and with N portable-runtime instances on CPU (`trtbuild repo --instances N
--device cpu`), and measures each under the same load:

- ``--loader perf`` (default): `trtbuild perf` (perf_analyzer) on ``--model`` (the streamed
  ensemble), OUT/<count>/results.json per repository;
- ``--loader grpc``: a closed loop of streaming gRPC clients (tritonclient, four processes) on the
  core model ``tensorrt_llm``, end tokens ignored, for machines without perf_analyzer.

Writes OUT/summary.json (output tokens/s, requests/s, TTFT p50/p99 per level, N-vs-1 ratios).
No test asserts a speed; this is the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import _grpc_load  # scripts/, beside this file
import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="2", help="instance counts to compare with 1: 2,4")
    parser.add_argument("--loader", choices=["perf", "grpc"], default="perf")
    parser.add_argument("--requests", type=int, default=8, help="grpc: requests per client")
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--model", default="ensemble")
    parser.add_argument("--out", type=Path, default=Path(".bench/instances"))
    args = parser.parse_args(argv)

    from trtbuild._perf_results import PerfResults
    from trtbuild.builder.engine import prepare_portable_engine
    from trtbuild.perf import run_perf
    from trtbuild.render import render_repository
    from trtbuild.repo import place_instances
    from trtbuild.specs import PerfSpec
    from trtbuild.tiny_model import create_tiny_model, repo_spec

    work = args.out / "work"
    model = create_tiny_model(work / "model") if not (work / "model").is_dir() else work / "model"
    engine = prepare_portable_engine(model, work / "engine", force=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    summary: dict[str, object] = {
        "model": "tiny Llama (seed 0, fp32), portable runtime on CPU, 1 torch thread per instance",
        "load": (
            f"trtbuild perf --model {args.model} --concurrency {args.concurrency} "
            if args.loader == "perf"
            else f"closed-loop streaming gRPC on tensorrt_llm, {args.requests} requests per "
            f"client, concurrency {args.concurrency}, "
        )
        + f"--input-len {args.input_len} --output-len {args.output_len} (end tokens ignored)",
        "runs": {},
    }
    runs: dict[str, dict[str, dict[str, float | None]]] = {}
    counts = [1, *(int(n) for n in args.instances.split(",") if int(n) > 1)]
    for count in counts:
        notes: list[str] = []
        spec = place_instances(repo_spec(engine, num_threads=1), count, "cpu", 0, notes)
        repo = render_repository(spec, work / f"repository-{count}", force=True)
        out = args.out / str(count)
        if args.loader == "grpc":
            runs[str(count)] = grpc_levels(repo, levels, args)
            summary["host_cpus"] = os.cpu_count()
            continue
        run_perf(
            PerfSpec(
                repo=repo,
                models=[args.model],
                concurrency=levels,
                input_len=args.input_len,
                output_len=args.output_len,
                out=out,
                force=True,
                label=f"tiny x{count} instance(s)",
            ),
            out=sys.stderr,
        )
        results = PerfResults.read(out)
        per_level: dict[str, dict[str, float | None]] = {}
        for _, level in results.levels():
            m = level.metrics
            if m is None:
                continue
            per_level[str(int(level.level))] = {
                "output_tokens_per_s": round(m.output_tokens_per_s, 1),
                "requests_per_s": round(m.requests_per_s, 2),
                "ttft_ms_p50": round(m.ttft_ms.p50, 2) if m.ttft_ms else None,
                "ttft_ms_p99": round(m.ttft_ms.p99, 2) if m.ttft_ms else None,
            }
        runs[str(count)] = per_level
        summary["host_cpus"] = results.context.host.cpus
    summary["runs"] = runs
    one = runs.get("1", {})
    summary["ratio_output_tokens_per_s"] = {
        f"{count} vs 1": {
            level: round(
                float(runs[str(count)][level]["output_tokens_per_s"] or 0)
                / float(one[level]["output_tokens_per_s"] or 1),
                2,
            )
            for level in one
            if level in runs[str(count)]
        }
        for count in counts[1:]
    }
    path = args.out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def grpc_levels(repo: Path, levels: list[int], args: Any) -> dict[str, dict[str, float | None]]:
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec

    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=20)
    found: dict[str, dict[str, float | None]] = {}
    with TritonServer(serve, quiet=True) as server:
        for level in levels:
            closed_loop(server.grpc_url, min(level, 8), args)  # warm-up
            found[str(level)] = closed_loop(server.grpc_url, level, args)
            print(f"{repo.name} c={level}: {found[str(level)]}", file=sys.stderr, flush=True)
    return found


def closed_loop(url: str, concurrency: int, args: Any) -> dict[str, float | None]:
    """``concurrency`` streams on the core model, each sending its next request when the last ends
    (scripts/_grpc_load.py); random prompts of ``--input-len`` ids."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, 200, size=args.input_len).tolist() for _ in range(64)]
    records = _grpc_load.closed_loop(
        url, "tensorrt_llm", concurrency, args.requests, prompts, args.output_len
    )
    found = _grpc_load.summarize(records)
    keys = ("output_tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p99")
    return {**{k: found.get(k) for k in keys}, "errors": float(found["error_count"])}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
