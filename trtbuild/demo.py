"""``trtbuild demo``: the whole path, for real, on the embedded tiny model.

create the model -> prepare the portable engine -> render the inflight-batching repository ->
serve it with tritonserver -> stream a few prompts over HTTP and gRPC -> print text, time to first
token and tokens/s -> shut down. With a workdir, everything is kept for ``trtbuild serve``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from trtbuild._atomic import check_writable
from trtbuild._safepath import check_safe_path
from trtbuild.builder.engine import prepare_portable_engine
from trtbuild.client import Client, Generation
from trtbuild.render import render_repository
from trtbuild.server import TritonServer
from trtbuild.specs import DemoSpec, InferSpec, ServeSpec
from trtbuild.tiny_model import create_tiny_model, repo_spec

PROMPTS = [
    ("grpc", "Continuous batching keeps the GPU busy because"),
    ("http", "Triton 服务器 streams tokens 🚀 to"),
    ("grpc", "The KV cache grows with"),
]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _workdir(spec: DemoSpec) -> Iterator[Path]:
    if spec.workdir is None:
        with tempfile.TemporaryDirectory(prefix="trtbuild-demo-") as tmp:
            yield Path(tmp)
        return
    check_safe_path(spec.workdir.resolve(), "--workdir")  # before writing: serving would refuse it
    for sub in ("model", "engine", "repository"):
        check_writable(spec.workdir / sub, force=spec.force)
    spec.workdir.mkdir(parents=True, exist_ok=True)
    yield spec.workdir


def run_demo(spec: DemoSpec) -> list[Generation]:
    started = time.perf_counter()
    results: list[Generation] = []
    with _workdir(spec) as work:
        t = time.perf_counter()
        model = create_tiny_model(work / "model", seed=spec.seed, force=spec.force)
        _say(
            f"[1/5] tiny Llama + byte-level BPE tokenizer (seed {spec.seed}) -> {model} "
            f"({time.perf_counter() - t:.1f} s)"
        )
        t = time.perf_counter()
        engine = prepare_portable_engine(model, work / "engine", force=spec.force)
        _say(f"[2/5] portable-runtime engine -> {engine} ({time.perf_counter() - t:.1f} s)")
        repo = render_repository(repo_spec(engine), work / "repository", force=spec.force)
        _say(
            f"[3/5] Triton repository (ensemble, preprocessing, tensorrt_llm, postprocessing, "
            f"tensorrt_llm_bls) -> {repo}"
        )
        t = time.perf_counter()
        serve = ServeSpec(
            repo=repo, http_port=spec.http_port, grpc_port=spec.grpc_port, metrics_port=0
        )
        with TritonServer(serve, quiet=True) as server:
            _say(
                f"[4/5] tritonserver ready in {time.perf_counter() - t:.1f} s: "
                f"HTTP {server.http_url}, gRPC {server.grpc_url}"
            )
            _say("[5/5] streaming through the ensemble:")
            for protocol, prompt in PROMPTS:
                url = server.grpc_url if protocol == "grpc" else server.http_url
                with Client(url, protocol) as client:
                    result = client.generate(
                        InferSpec(
                            prompt=prompt,
                            url=url,
                            protocol=protocol,
                            stream=True,
                            max_tokens=spec.max_tokens,
                        )
                    )
                results.append(result)
                ttft = (result.ttft_s or 0.0) * 1000
                print(f"\n{protocol.upper():>4} | {prompt}")
                print(f"     | -> {result.text!r}")
                print(
                    f"     | {result.tokens} tokens, TTFT {ttft:.1f} ms, "
                    f"{result.tokens_per_s:.0f} tokens/s, {len(result.pieces)} streamed pieces"
                )
            _say("\nshutting down tritonserver")
        if spec.workdir is not None:
            _say(
                f"kept: {work}/model, {work}/engine, {work}/repository\n"
                f"serve again: trtbuild serve {work}/repository"
            )
    _say(f"demo finished in {time.perf_counter() - started:.1f} s")
    return results
