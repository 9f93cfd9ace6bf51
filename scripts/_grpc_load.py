"""A closed loop of streaming gRPC clients for the benchmark scripts (bench_gpu.py served phase,
bench_instances.py --loader grpc), for machines without perf_analyzer.

``closed_loop`` spreads ``concurrency`` streams over up to four client processes (spawned, so
the clients' Python does not share the measured process's GIL); each stream sends its next
request when the last one's final response arrives. End tokens are ignored (``end_id`` -1), so
every request generates ``output_len`` tokens. ``summarize`` turns the records into tokens/s and
TTFT/ITL percentiles.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from typing import Any

PROCESSES = 4
TIMEOUT_S = 1200


def closed_loop(
    url: str,
    model: str,
    concurrency: int,
    per_stream: int,
    prompts: list[Any],
    output_len: int,
) -> list[dict[str, Any]]:
    """One record per request: ``{"t0", "times"}`` (a time per response with tokens) or
    ``{"error"}``. ``prompts`` are token-id lists for the core model, strings for an ensemble."""
    ctx = multiprocessing.get_context("spawn")
    procs = min(PROCESSES, concurrency)
    results = ctx.Queue()
    workers = []
    for p in range(procs):
        streams = concurrency // procs + (1 if p < concurrency % procs else 0)
        job = (url, model, p, streams, per_stream, prompts, output_len, results)
        workers.append(ctx.Process(target=_worker, args=job))
    for w in workers:
        w.start()
    records: list[dict[str, Any]] = []
    for _ in workers:
        records += results.get(timeout=TIMEOUT_S)
    for w in workers:
        w.join()
    return records


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens/s, requests/s, TTFT and ITL (ms) over the span from the first send to the last
    token; how many requests failed and the first three messages."""
    ok = [r for r in records if r.get("times")]
    errors = [r["error"] for r in records if "error" in r]
    if not ok:
        return {"requests": 0, "error_count": len(errors), "errors": errors[:3]}
    start, end = min(r["t0"] for r in ok), max(r["times"][-1] for r in ok)
    tokens = sum(len(r["times"]) for r in ok)  # one time per token
    ttft = [r["times"][0] - r["t0"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:], strict=False)]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1e3, 2)

    return {
        "requests": len(ok),
        "output_tokens": tokens,
        "seconds": round(end - start, 3),
        "output_tokens_per_s": round(tokens / (end - start), 1),
        "requests_per_s": round(len(ok) / (end - start), 2),
        "ttft_ms_p50": ms(statistics.median(ttft)),
        "ttft_ms_p99": ms(percentile(ttft, 99)),
        "itl_ms_p50": ms(percentile(itl, 50)),
        "itl_ms_p99": ms(percentile(itl, 99)),
        "error_count": len(errors),
        "errors": errors[:3],
    }


def _inputs(prompt: Any, output_len: int) -> list[Any]:
    import numpy as np
    import tritonclient.grpc as grpcclient

    if isinstance(prompt, str):  # an ensemble (or BLS): text in
        arrays = {
            "text_input": np.array([[prompt.encode()]], dtype=object),
            "max_tokens": np.array([[output_len]], dtype=np.int32),
            "stream": np.array([[True]], dtype=bool),
            "end_id": np.array([[-1]], dtype=np.int32),
            # a response may carry several tokens (the sender merges what waited): count them
            "return_num_output_tokens": np.array([[True]], dtype=bool),
        }
    else:  # the core model: token ids in
        arrays = {
            "input_ids": np.array([prompt], dtype=np.int32),
            "input_lengths": np.array([[len(prompt)]], dtype=np.int32),
            "request_output_len": np.array([[output_len]], dtype=np.int32),
            "streaming": np.array([[True]], dtype=bool),
            "end_id": np.array([[-1]], dtype=np.int32),
        }
    tensors = []
    for name, arr in arrays.items():
        dtype = {np.int32: "INT32", np.bool_: "BOOL", np.object_: "BYTES"}[arr.dtype.type]
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return tensors


def _worker(
    url: str,
    model: str,
    process: int,
    streams: int,
    per_stream: int,
    prompts: list[Any],
    output_len: int,
    results: Any,
) -> None:
    import tritonclient.grpc as grpcclient

    records: list[dict[str, Any]] = []
    lock, all_done = threading.Lock(), threading.Event()
    left = [streams]

    class Stream:
        def __init__(self, index: int) -> None:
            self.index, self.sent, self.counted = index, 0, 0
            self.times: list[float] = []
            self.t0 = 0.0
            self.client = grpcclient.InferenceServerClient(url)
            self.client.start_stream(callback=self.on_response)

        def send(self) -> None:
            prompt = prompts[(self.index * per_stream + self.sent) % len(prompts)]
            self.sent += 1
            self.times, self.t0, self.counted = [], time.perf_counter(), 0
            self.client.async_stream_infer(
                model,
                _inputs(prompt, output_len),
                request_id=f"{process}-{self.index}-{self.sent}",
                enable_empty_final_response=True,
            )

        def on_response(self, result: Any, error: Any) -> None:
            now = time.perf_counter()
            if error is not None:
                with lock:
                    records.append({"error": str(error)})
                self.finish()
                return
            response = result.get_response()
            names = {o.name for o in response.outputs}
            tokens = 0
            if "output_ids" in names:
                tokens = int(result.as_numpy("output_ids").size)
            elif "num_output_tokens" in names:  # cumulative while streaming
                total = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
                tokens, self.counted = total - self.counted, total
            elif "text_output" in names:
                tokens = 1
            self.times.extend([now] * tokens)  # one time per token, as it reached the client
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                with lock:
                    records.append({"t0": self.t0, "times": self.times})
                if self.sent < per_stream:
                    self.send()
                else:
                    self.finish()

        def finish(self) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

    pool = [Stream(process * 10_000 + i) for i in range(streams)]
    for stream in pool:
        stream.send()
    all_done.wait(TIMEOUT_S)
    for stream in pool:
        stream.client.stop_stream()
    results.put(records)
