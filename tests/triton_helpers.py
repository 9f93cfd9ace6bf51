"""Small raw-tritonclient helpers for tests that talk to the core model directly."""

from __future__ import annotations

import queue
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

CORE_DTYPES = {
    "input_ids": ("INT32", np.int32), "input_lengths": ("INT32", np.int32),
    "request_output_len": ("INT32", np.int32), "end_id": ("INT32", np.int32),
    "streaming": ("BOOL", bool), "beam_width": ("INT32", np.int32),
    "return_log_probs": ("BOOL", bool), "exclude_input_in_output": ("BOOL", bool),
    "temperature": ("FP32", np.float32), "runtime_top_p": ("FP32", np.float32),
    "seed": ("UINT64", np.uint64), "lora_task_id": ("UINT64", np.uint64),
}  # fmt: skip


@dataclass
class StreamResult:
    tokens: list[int] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    finished: bool = False


def core_inputs(ids: list[int], max_tokens: int, **extra: Any) -> list[grpcclient.InferInput]:
    values: dict[str, Any] = {
        "input_ids": [ids],
        "input_lengths": [[len(ids)]],
        "request_output_len": [[max_tokens]],
    }
    values.update({k: [[v]] for k, v in extra.items()})
    tensors = []
    for name, value in values.items():
        dtype, np_type = CORE_DTYPES[name]
        arr = np.array(value, dtype=np_type)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return tensors


def stream_core(
    url: str,
    inputs: list[grpcclient.InferInput],
    *,
    cancel_after: int | None = None,
    model: str = "tensorrt_llm",
    timeout: float = 60.0,
) -> StreamResult:
    """Send one request to the core model over the gRPC stream; optionally cancel it."""
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    result = StreamResult()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        while True:
            r, e = got.get(timeout=timeout)
            if e is not None:
                result.error = str(e)
                return result
            response = r.get_response()
            ids = r.as_numpy("output_ids")
            if ids is not None:
                result.tokens += [int(x) for x in ids.reshape(-1)]
                result.responses.append({o.name: r.as_numpy(o.name) for o in response.outputs})
            if cancel_after is not None and len(result.responses) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return result
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                result.finished = True
                return result
    finally:
        client.stop_stream(cancel_requests=not result.finished)  # see trtbuild.client
        client.close()


def metric(metrics_url: str, name: str, **labels: str) -> float | None:
    """One sample from Triton's Prometheus endpoint (None when absent)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
