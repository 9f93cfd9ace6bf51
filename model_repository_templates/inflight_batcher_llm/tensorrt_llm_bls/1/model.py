"""trtbuild BLS front: the ensemble's dataflow run from Python, whole or streamed.

An ensemble whose core model is decoupled is itself decoupled, so Triton's HTTP ``/infer``
refuses it. This model runs the same steps as the ensemble (its ``ensemble_steps`` parameter is
rendered from the same wiring as ``ensemble/config.pbtxt``), so the two can never disagree:

- not decoupled (the default): one whole response per request, for plain HTTP and gRPC ``/infer``
  clients; ``stream=true`` is refused with a pointer to the ensemble.
- decoupled (``trtbuild repo --bls-decoupled``, upstream's ``decoupled_mode``): with
  ``stream=true`` each core-model response becomes a response (steps after the core model, e.g.
  postprocessing, run per response); without it, one response.

A request whose batch dimension is B > 1 runs as B generations; whole responses stack the rows
(``text_output`` holds one string per row, like upstream's postprocessing), streamed responses
carry ``batch_index``. Requests run concurrently on a thread pool. When a streaming client goes
away, the core request is stopped with TensorRT-LLM's ``stop`` input (same request id).
"""

import json
import os
import queue
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_requests import marked_invalid  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_DONE = object()


class _Failed(Exception):
    def __init__(self, message, code=None):
        if code is not None and code == _code("INVALID_ARG"):
            message = marked_invalid(message)  # a decoupled BLS's gRPC stream drops the code
        super().__init__(message)
        self.code = code


def _code(name):
    return getattr(pb_utils.TritonError, name, None)


def _error_response(exc):
    code = getattr(exc, "code", None)
    error = (
        pb_utils.TritonError(str(exc), code) if code is not None else pb_utils.TritonError(str(exc))
    )
    return pb_utils.InferenceResponse(error=error)


def _check(response, model, invalid=False):
    """Raise for an error response, keeping its code (preprocessing only rejects bad input)."""
    if response.has_error():
        error = response.error()
        code = error.code() if hasattr(error, "code") else None
        if invalid and code in (None, _code("INTERNAL"), _code("UNKNOWN")):
            code = _code("INVALID_ARG")
        raise _Failed(f"{model}: {error.message()}", code)
    return response


def _stack(rows):
    """Rows of one output ([1, ...] each) into one [B, ...] array, padding ragged last axes."""
    if len(rows) == 1:
        return rows[0]
    if rows[0].dtype == object:
        return np.concatenate([r.reshape(-1) for r in rows])
    width = max(r.shape[-1] for r in rows) if rows[0].ndim > 1 else None
    if width is not None:
        rows = [np.pad(r, [(0, 0)] * (r.ndim - 1) + [(0, width - r.shape[-1])]) for r in rows]
    return np.concatenate(rows, axis=0)


def _each_row(fn, rows):
    """``[fn(0), ..., fn(rows - 1)]``, the rows at once (each waits on the core model)."""
    if rows == 1:
        return [fn(0)]
    results, failures = [None] * rows, []

    def run(row):
        try:
            results[row] = fn(row)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(row,), daemon=True) for row in range(rows)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.core = params.get("tensorrt_llm_model_name", "tensorrt_llm")
        self.steps = json.loads(params["ensemble_steps"])
        self.client_inputs = [i["name"] for i in config["input"]]
        self.client_outputs = [o["name"] for o in config["output"]]
        # the client input that asks the core model to stream (the ensemble maps it to `streaming`)
        core_step = next(s for s in self.steps if s["model"] == self.core)
        self.stream_input = next(
            (ens for key, ens in core_step["inputs"].items() if key == "streaming"), None
        )
        self.pool = ThreadPoolExecutor(max_workers=int(params.get("max_concurrency", "16")))

    # -- requests --------------------------------------------------------------------------------
    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self.pool.submit(self._stream, request, request.get_response_sender())
            return None
        futures = [self.pool.submit(self._whole, r) for r in requests]
        return [f.result() for f in futures]

    def _given(self, request):
        given = {}
        for name in self.client_inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                value = tensor.as_numpy()
                # scalars reshaped to [] arrive as [B]; the ensemble's steps take them as [B, 1]
                given[name] = value.reshape(-1, 1) if value.ndim == 1 else value
        if "text_input" not in given:
            raise _Failed("text_input is required", _code("INVALID_ARG"))
        rows = given["text_input"].shape[0] if given["text_input"].ndim > 1 else 1
        for name, value in given.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise _Failed(
                    f"{name} has batch dimension {value.shape[0] if value.ndim else 0} but "
                    f"text_input has {rows}; send one row per prompt in every input",
                    _code("INVALID_ARG"),
                )
        return given, rows

    def _wants_stream(self, given):
        value = given.get(self.stream_input) if self.stream_input else None
        return value is not None and bool(np.asarray(value).reshape(-1)[0])

    def _whole(self, request):
        try:
            given, rows = self._given(request)
            if self._wants_stream(given):
                raise _Failed(
                    "tensorrt_llm_bls is not decoupled and answers whole responses; stream through "
                    "the ensemble (gRPC streaming or POST /v2/models/ensemble/generate_stream), "
                    "or render with --bls-decoupled",
                    _code("INVALID_ARG"),
                )
            per_row = _each_row(lambda b: self._last(given, b), rows)
            outputs = [
                pb_utils.Tensor(name, _stack([row[name] for row in per_row]))
                for name in self.client_outputs
                if all(name in row for row in per_row)
            ]
            return pb_utils.InferenceResponse(outputs)
        except Exception as exc:  # noqa: BLE001 - report it to the client, keep the model up
            failure = exc if isinstance(exc, _Failed) else _Failed(f"tensorrt_llm_bls: {exc}")
            return _error_response(failure)

    def _last(self, given, row):
        last = None
        for outputs in self._run(given, row, stream=False, cancelled=lambda: False):
            last = outputs
        if last is None:
            raise _Failed(f"{self.core} returned no output")
        return last

    def _stream(self, request, sender):
        try:
            given, rows = self._given(request)
            stream = self._wants_stream(given)
            if rows == 1:
                for outputs in self._run(given, 0, stream, sender.is_cancelled):
                    sender.send(self._response(outputs))
            else:
                self._stream_rows(given, rows, stream, sender)
            sender.send(flags=FINAL)
        except Exception as exc:  # noqa: BLE001 - report it to the client, keep the model up
            failure = exc if isinstance(exc, _Failed) else _Failed(f"tensorrt_llm_bls: {exc}")
            try:
                sender.send(_error_response(failure), flags=FINAL)
            except Exception as send_exc:  # noqa: BLE001 - the client is gone
                pb_utils.Logger.log_verbose(f"tensorrt_llm_bls: error not delivered: {send_exc}")

    def _stream_rows(self, given, rows, stream, sender):
        """B generations at once; each response says its row (batch_index)."""
        out = queue.Queue()

        def run(row):
            try:
                for outputs in self._run(given, row, stream, sender.is_cancelled):
                    outputs["batch_index"] = np.array([[row]], dtype=np.int32)
                    out.put(outputs)
            except Exception as exc:  # noqa: BLE001 - handed to the sending thread
                out.put(exc)
            finally:
                out.put(_DONE)

        for row in range(rows):
            threading.Thread(target=run, args=(row,), daemon=True).start()
        finished = 0
        while finished < rows:
            item = out.get()
            if item is _DONE:
                finished += 1
            elif isinstance(item, Exception):
                raise item
            else:
                sender.send(self._response(item))

    def _response(self, outputs):
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(n, outputs[n]) for n in self.client_outputs if n in outputs]
        )

    # -- the ensemble's dataflow for one row --------------------------------------------------------
    def _inputs(self, step, tensors):
        return [
            pb_utils.Tensor(model_input, tensors[name])
            for model_input, name in step["inputs"].items()
            if name in tensors
        ]

    def _call(self, step, tensors):
        response = pb_utils.InferenceRequest(
            model_name=step["model"],
            inputs=self._inputs(step, tensors),
            requested_output_names=list(step["outputs"]),
        ).exec()
        _check(response, step["model"], invalid=step["model"] == "preprocessing")
        for model_output, name in step["outputs"].items():
            tensor = pb_utils.get_output_tensor_by_name(response, model_output)
            if tensor is not None:
                tensors[name] = tensor.as_numpy()

    def _run(self, given, row, stream, cancelled):
        """Yield the client outputs of each core-model response for batch row ``row``."""
        tensors = {name: value[row : row + 1] for name, value in given.items()}
        if self.stream_input is not None:
            tensors[self.stream_input] = np.array([[stream]], dtype=bool)
        for index, step in enumerate(self.steps):
            if step["model"] != self.core:
                self._call(step, tensors)
                continue
            request_id = f"bls-{uuid.uuid4().hex}"
            responses = pb_utils.InferenceRequest(
                model_name=self.core,
                inputs=self._inputs(step, tensors),
                requested_output_names=list(step["outputs"]),
                request_id=request_id,
            ).exec(decoupled=True)
            for response in responses:
                if cancelled():
                    self._stop(step, tensors, request_id)
                    return
                _check(response, self.core)
                if not response.output_tensors():
                    continue  # the bare final flag
                current = dict(tensors)
                for model_output, name in step["outputs"].items():
                    tensor = pb_utils.get_output_tensor_by_name(response, model_output)
                    if tensor is not None:
                        # a copy: as_numpy() can view the response's shared memory, and a whole
                        # (non-streaming) answer keeps the last outputs after the response is gone
                        current[name] = tensor.as_numpy().copy()
                for later in self.steps[index + 1 :]:
                    self._call(later, current)
                yield {n: current[n] for n in self.client_outputs if n in current}
            return

    def _stop(self, step, tensors, request_id):
        """TensorRT-LLM's convention: a request with ``stop`` true and the same id ends it."""
        try:
            inputs = self._inputs(step, tensors)
            inputs.append(pb_utils.Tensor("stop", np.array([[True]], dtype=bool)))
            for _ in pb_utils.InferenceRequest(
                model_name=self.core,
                inputs=inputs,
                requested_output_names=[],
                request_id=request_id,
            ).exec(decoupled=True):
                pass
        except Exception as exc:  # noqa: BLE001 - best effort: the request ends at its length
            pb_utils.Logger.log_warn(f"tensorrt_llm_bls: could not stop {request_id}: {exc}")

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
