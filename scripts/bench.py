#!/usr/bin/env python3
"""`make bench`: the portable runtime alone vs the full ensemble, measured in one run.

Serves the embedded tiny model (the same repository `trtbuild demo` renders), then drives two
targets with perf_analyzer (gRPC streaming, C++ client so it takes little CPU from the server):

- runtime:  the `tensorrt_llm` model directly (token ids in, token ids out);
- ensemble: preprocessing -> tensorrt_llm -> postprocessing (text in, streamed text out).

at concurrency 1, 4 and 16, 64 output tokens per request (end tokens ignored), and computes
output tokens/s, time to first token and inter-token latency from perf_analyzer's per-response
timestamps (--profile-export-file). Writes JSON (default bench.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trtbuild import __version__, proc
from trtbuild.builder.portable import prepare_portable_engine
from trtbuild.perf_analyzer import find_perf_analyzer
from trtbuild.repository import render_repository
from trtbuild.server import TritonServer
from trtbuild.specs import RuntimeLimits, ServeSpec
from trtbuild.tiny_model import create_tiny_model, repo_spec

PROMPTS = [
    "Continuous batching keeps the GPU busy because requests join between steps",
    "The KV cache grows with sequence length and batch size, so plan memory",
    "Tensor parallelism splits each layer across GPUs connected by NVLink",
    "Streaming detokenization must hold back partial UTF-8 characters",
]


def input_data(target: str, tokenizer_dir: Path, output_len: int) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    rows = []
    for prompt in PROMPTS:
        if target == "runtime":
            ids = tok.encode(prompt).ids
            rows.append(
                {
                    "input_ids": {"content": ids, "shape": [len(ids)]},
                    "input_lengths": [len(ids)],
                    "request_output_len": [output_len],
                    "streaming": [True],
                    "end_id": [-1],
                }
            )
        else:
            rows.append(
                {
                    "text_input": [prompt],
                    "max_tokens": [output_len],
                    "stream": [True],
                    "end_id": [-1],
                }
            )
    return {"data": rows}


def summarize(export: dict[str, Any], output_len: int) -> dict[str, Any]:
    """Tokens/s, TTFT and ITL from the per-response timestamps of the measured windows."""
    exp = export["experiments"][0]
    every = [r for r in exp["requests"] if r.get("response_timestamps")]
    if not every:
        raise RuntimeError("perf_analyzer recorded no response")
    bounds = exp.get("window_boundaries") or []
    if len(bounds) < 2:  # seen once on an unstable run: use the whole run instead
        bounds = [
            min(r["timestamp"] for r in every),
            max(r["response_timestamps"][-1] for r in every),
        ]
    # the last three windows: the stable measurement perf_analyzer itself reports
    start_ns, end_ns = bounds[max(0, len(bounds) - 4)], bounds[-1]
    # throughput: every token (response) delivered inside the windows, whenever its request began
    in_window = sum(start_ns <= t <= end_ns for r in every for t in r["response_timestamps"])
    # latencies: the requests that began inside the windows
    reqs = [r for r in every if start_ns <= r["timestamp"] <= end_ns]
    if not reqs:
        raise RuntimeError("perf_analyzer recorded no complete request in the measured windows")
    ttft = [(r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in reqs]
    itl = [
        (b - a) / 1e6
        for r in reqs
        for a, b in zip(r["response_timestamps"], r["response_timestamps"][1:], strict=False)
    ]
    e2e = [(r["response_timestamps"][-1] - r["timestamp"]) / 1e6 for r in reqs]
    short = sum(1 for r in reqs if len(r["response_timestamps"]) != output_len)

    def pct(values: list[float], q: float) -> float:
        return (
            round(statistics.quantiles(values, n=100)[int(q) - 1], 2)
            if len(values) > 1
            else round(values[0], 2)
        )

    return {
        "requests": len(reqs),
        "requests_with_other_than_expected_tokens": short,
        "window_s": round((end_ns - start_ns) / 1e9, 2),
        "output_tokens_in_window": in_window,
        "output_tokens_per_s": round(in_window / ((end_ns - start_ns) / 1e9), 1),
        "ttft_ms": {
            "mean": round(statistics.fmean(ttft), 2),
            "p50": pct(ttft, 50),
            "p90": pct(ttft, 90),
        },
        "itl_ms": {
            "mean": round(statistics.fmean(itl), 2),
            "p50": pct(itl, 50),
            "p90": pct(itl, 90),
        },
        "e2e_ms": {
            "mean": round(statistics.fmean(e2e), 1),
            "p50": pct(e2e, 50),
            "p90": pct(e2e, 90),
        },
    }


def run_one(
    binary: Path,
    env: dict[str, str],
    url: str,
    model: str,
    data: Path,
    concurrency: int,
    work: Path,
    interval_ms: int,
    trials: int = 10,
) -> dict[str, Any]:
    export = work / f"{model}-c{concurrency}{'-warmup' if trials == 1 else ''}.json"
    export.unlink(missing_ok=True)  # never read a previous run's file
    argv = [
        binary,
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        url,
        "--streaming",
        "--input-data",
        data,
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        str(interval_ms),
        "--stability-percentage",
        "50",
        "--max-trials",
        str(trials),
        "--profile-export-file",
        export,
    ]
    result = proc.run(
        argv,
        env=env,
        what=f"perf_analyzer ({model}, concurrency {concurrency})",
        timeout=600,
        check=False,
    )
    if trials == 1:  # a warm-up: its numbers are not used
        return {}
    if not export.is_file():
        raise RuntimeError(
            f"perf_analyzer wrote no profile (exit {result.returncode}):\n{proc.tail(result.output)}"
        )
    parsed = read_export(export.read_text())
    parsed["stable"] = result.returncode == 0  # 2: no stable window within --max-trials
    return parsed


_REQUEST = re.compile(r'"timestamp":(\d+).*?"response_timestamps":\[([\d,\s]*)\]', re.S)
_WINDOWS = re.compile(r'"window_boundaries":\[([\d,\s]*)\]')


def read_export(text: str) -> dict[str, Any]:
    """The timestamps of a perf_analyzer profile export.

    perf_analyzer 2.51 copies response strings into the file without JSON escaping, so text
    outputs with quotes or control characters make it invalid JSON; only timestamps are read.
    """
    requests = [
        {"timestamp": int(t), "response_timestamps": [int(x) for x in r.split(",") if x.strip()]}
        for t, r in _REQUEST.findall(text)
    ]
    windows = _WINDOWS.search(text)
    bounds = [int(x) for x in windows.group(1).split(",") if x.strip()] if windows else []
    return {"experiments": [{"requests": requests, "window_boundaries": bounds}]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--interval-ms", type=int, default=5000, help="perf_analyzer measurement window"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the runtime")
    parser.add_argument(
        "--exports", type=Path, default=Path(".bench"), help="keep perf_analyzer's raw exports here"
    )
    args = parser.parse_args()

    tool = find_perf_analyzer()
    binary, env = tool.binary, tool.env
    args.exports.mkdir(parents=True, exist_ok=True)
    version = proc.run([binary, "--version"], env=env, quiet=True).output.strip()
    with tempfile.TemporaryDirectory(prefix="trtbuild-bench-") as tmp:
        work = Path(tmp)
        model = create_tiny_model(work / "model")
        engine = prepare_portable_engine(model, work / "engine")
        limits = RuntimeLimits(
            max_batch_size=max(args.concurrency),
            max_input_len=256,
            max_seq_len=512,
            max_num_tokens=512,
        )
        spec = repo_spec(engine, limits=limits, num_threads=args.threads)
        repo = render_repository(spec, work / "repository")
        data = {t: work / f"{t}.json" for t in ("runtime", "ensemble")}
        for target, path in data.items():
            path.write_text(json.dumps(input_data(target, engine, args.output_len)))
        results: dict[str, dict[str, Any]] = {"runtime": {}, "ensemble": {}}
        serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0)
        with TritonServer(serve, quiet=True) as server:
            targets = (("runtime", "tensorrt_llm"), ("ensemble", "ensemble"))
            for concurrency in args.concurrency:  # both targets at each level, back to back
                for target, model_name in targets:  # warm-up at this level, discarded
                    run_one(
                        binary,
                        env,
                        server.grpc_url,
                        model_name,
                        data[target],
                        concurrency,
                        args.exports,
                        1500,
                        trials=1,
                    )
                for target, model_name in targets:
                    export = run_one(
                        binary,
                        env,
                        server.grpc_url,
                        model_name,
                        data[target],
                        concurrency,
                        args.exports,
                        args.interval_ms,
                    )
                    results[target][str(concurrency)] = summarize(export, args.output_len)
                    results[target][str(concurrency)]["stable"] = export["stable"]
                    r = results[target][str(concurrency)]
                    print(
                        f"{target:>8} c={concurrency:<3} {r['output_tokens_per_s']:>8.1f} tok/s  "
                        f"TTFT p50 {r['ttft_ms']['p50']:>7.1f} ms  ITL p50 {r['itl_ms']['p50']:>6.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    ratio = {
        c: round(
            results["ensemble"][c]["output_tokens_per_s"]
            / results["runtime"][c]["output_tokens_per_s"],
            3,
        )
        for c in results["runtime"]
    }
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trtbuild": __version__,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "tool": version,
        "model": "embedded tiny Llama (seed 0), fp32, CPU",
        "output_len": args.output_len,
        "prompts": len(PROMPTS),
        "results": results,
        "ensemble_over_runtime_tokens_per_s": ratio,
        "target": {"ensemble_over_runtime_at_16": 0.9, "met": ratio.get("16", 0.0) >= 0.9},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ensemble_over_runtime_tokens_per_s": ratio}), flush=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from trtbuild.errors import TrtbuildError

    try:
        raise SystemExit(main())
    except TrtbuildError as exc:
        print(f"Error: {exc.message}\n{exc.details or ''}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
