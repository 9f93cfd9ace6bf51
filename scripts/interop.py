#!/usr/bin/env python3
"""`make interop`: third-party clients against a trtbuild repository, for real.

Serves the embedded tiny model (the repository `trtbuild demo` renders) and runs NVIDIA's
genai-perf (installed by `make interop` into its own virtual environment, with the perf_analyzer
of tritonclient 2.51.0) the way Triton's docs run it for TensorRT-LLM:

- `ensemble`, streaming over gRPC (time to first token, inter-token latency);
- `tensorrt_llm_bls`, whole responses.

Each run must exit 0 and write genai-perf's profile export with a positive request throughput.
Writes a JSON summary (default interop.json). Not part of `make test`: it needs extra installs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from trtbuild import proc
from trtbuild.builder.engine import prepare_portable_engine
from trtbuild.render import render_repository
from trtbuild.server import TritonServer
from trtbuild.specs import ServeSpec, ServingLimits
from trtbuild.tiny_model import create_tiny_model, repo_spec

RUNS = (("ensemble", True), ("tensorrt_llm_bls", False))


def genai_perf_env(genai_perf: Path) -> dict[str, str]:
    """genai-perf runs `perf_analyzer` from PATH; that binary needs libcudart on the library path
    (trtbuild.perf_analyzer explains why), here from genai-perf's own environment."""
    python = genai_perf.parent / "python"
    libdir = proc.run(
        [python, "-c", "import nvidia.cuda_runtime as m; print(m.__path__[0])"], quiet=True
    ).output.strip()
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    return {
        "PATH": f"{genai_perf.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{libdir}/lib{os.pathsep}{ld}" if ld else f"{libdir}/lib",
    }


def profile(
    genai_perf: Path, env: dict[str, str], url: str, model: str, stream: bool, args: Any, work: Path
) -> dict[str, Any]:
    argv = [
        genai_perf, "profile", "-m", model, "--service-kind", "triton", "--backend", "tensorrtllm",
        "--url", url, "--tokenizer", str(args.tokenizer),
        "--synthetic-input-tokens-mean", "32", "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(args.output_len), "--output-tokens-stddev", "0",
        "--num-prompts", "20", "--concurrency", "2", "--measurement-interval", "3000",
        "--random-seed", "1", "--artifact-dir", str(work / model),
    ]  # fmt: skip
    if stream:
        argv.append("--streaming")
    proc.run(argv, env=env, cwd=work, what=f"genai-perf ({model})")
    (export,) = (work / model).rglob("profile_export_genai_perf.json")
    metrics = json.loads(export.read_text())
    throughput = metrics["request_throughput"]["avg"]
    if not throughput > 0:
        raise SystemExit(f"genai-perf measured no request against {model}")
    if stream and not metrics["time_to_first_token"]["avg"] > 0:
        raise SystemExit(f"genai-perf measured no time to first token against {model}")
    return {
        "model": model,
        "streaming": stream,
        "request_throughput": throughput,
        "time_to_first_token_ms": metrics.get("time_to_first_token", {}).get("avg"),
        "inter_token_latency_ms": metrics.get("inter_token_latency", {}).get("avg"),
        "request_latency_ms": metrics["request_latency"]["avg"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--genai-perf", type=Path, required=True, help="the genai-perf executable")
    parser.add_argument("--out", type=Path, default=Path("interop.json"))
    parser.add_argument("--output-len", type=int, default=16)
    args = parser.parse_args()
    args.genai_perf = args.genai_perf.absolute()
    env = genai_perf_env(args.genai_perf)
    version = proc.run([args.genai_perf, "--version"], env=env, quiet=True).output.strip()
    results = []
    with tempfile.TemporaryDirectory(prefix="trtbuild-interop-") as tmp:
        work = Path(tmp)
        engine = prepare_portable_engine(create_tiny_model(work / "model"), work / "engine")
        args.tokenizer = engine
        limits = ServingLimits(max_batch_size=8, max_input_len=256, max_seq_len=512)
        repo = render_repository(repo_spec(engine, limits=limits), work / "repository")
        serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0)
        with TritonServer(serve, quiet=True) as server:
            for model, stream in RUNS:
                results.append(
                    profile(args.genai_perf, env, server.grpc_url, model, stream, args, work)
                )
                print(f"genai-perf {model}: ok {results[-1]}", file=sys.stderr)
    args.out.write_text(json.dumps({"genai_perf": version, "runs": results}, indent=2) + "\n")
    print(f"interop passed: {len(results)} genai-perf runs ({version}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
