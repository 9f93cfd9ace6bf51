"""Talk to a running server: prompt in, text out, over HTTP or gRPC, streaming or not.

The transport follows the model: a decoupled model (an ensemble whose core model streams counts
as one) is called through the gRPC bidirectional stream or HTTP ``generate``/``generate_stream``;
a plain model (``tensorrt_llm_bls``) through ``infer``. Callers do not have to know which.

Every streamed request carries a request id (``trtbuild-<hex>`` unless the caller picks one).
When this client walks away from a stream before it ends (an error, a timeout, Ctrl-C, a callback
that raises), it cancels the stream and also sends TensorRT-LLM's ``stop`` for that id to the core
model, because Triton 2.51 does not forward a client's cancellation to an ensemble's composing
models: a client that only cancels an ensemble stream gets its stream closed, but the
``tensorrt_llm`` request behind it keeps generating, holding its batch slot, until max_tokens, an
end id or a stop word (the ensemble discards its responses). ``stop`` frees the slot at the next
decode step.

Errors: INVALID_ARGUMENT / HTTP 400, or a message marked ``(invalid request)``, raise
``InvalidRequest`` (exit 2); a server at capacity (UNAVAILABLE / HTTP 503, or a message marked
``(retryable)``) raises ``ServerBusy`` (exit 1, "retry later"); anything else ``InferenceError``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from trtbuild.errors import InferenceError, InvalidRequest, RuntimeFailure, UserError

# how trtbuild's models mark a refusal worth retrying and one that is the request's fault: the
# marks are what survives Triton 2.51's gRPC stream, which drops status codes
from trtbuild.runtime.requests import INVALID, RETRYABLE
from trtbuild.specs import InferSpec

STOP_TIMEOUT_S = 5.0


class ServerBusy(InferenceError):
    """The server is at capacity (UNAVAILABLE / HTTP 503); the same request may succeed later."""


@dataclass
class Generation:
    text: str = ""
    pieces: list[str] = field(default_factory=list)
    ttft_s: float | None = None  # time to the first non-empty piece
    latency_s: float = 0.0
    piece_times: list[float] = field(default_factory=list)  # seconds since the request was sent
    tokens: int = 0  # generated tokens, as the server counted them

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.latency_s if self.latency_s > 0 else 0.0


def request_inputs(spec: InferSpec) -> dict[str, Any]:
    """The ensemble/BLS inputs for ``spec`` (TensorRT-LLM's client names)."""
    inputs: dict[str, Any] = {
        "text_input": spec.prompt,
        "max_tokens": spec.max_tokens,
        "stream": spec.stream,
        "return_num_output_tokens": True,
    }
    s = spec.sampling
    for name, value in (
        ("temperature", s.temperature),
        ("top_k", s.top_k),
        ("top_p", s.top_p),
        ("seed", s.seed),
        ("repetition_penalty", s.repetition_penalty),
        ("min_tokens", s.min_tokens),
        ("end_id", spec.end_id),
    ):
        if value is not None:
            inputs[name] = value
    if spec.stop_words:
        inputs["stop_words"] = list(spec.stop_words)
    return inputs


_DTYPES = {
    "text_input": "BYTES",
    "stop_words": "BYTES",
    "bad_words": "BYTES",
    "max_tokens": "INT32",
    "stream": "BOOL",
    "temperature": "FP32",
    "top_k": "INT32",
    "top_p": "FP32",
    "seed": "UINT64",
    "repetition_penalty": "FP32",
    "min_tokens": "INT32",
    "end_id": "INT32",
    "pad_id": "INT32",
    "exclude_input_in_output": "BOOL",
    "return_log_probs": "BOOL",
    "return_num_output_tokens": "BOOL",
}
_NP = {"BYTES": object, "INT32": np.int32, "BOOL": bool, "FP32": np.float32, "UINT64": np.uint64}


# Inputs trtbuild adds on its own: left out, silently, for a model that does not declare them.
_IMPLICIT = {"return_num_output_tokens", "stream"}


@dataclass(frozen=True)
class ModelIO:
    """What a served model accepts, read from its config."""

    decoupled: bool
    batched: bool  # max_batch_size > 0: every tensor carries a leading batch dimension
    inputs: frozenset[str]
    outputs: frozenset[str]
    # the model that takes TensorRT-LLM's `stop` for this model's requests (itself, or the
    # ensemble's core model); None when there is none
    stop_model: str | None = None

    def select(self, model: str, values: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(n for n in values if n not in self.inputs and n not in _IMPLICIT)
        if unknown:
            raise UserError(
                f"model {model!r} has no input {', '.join(unknown)}; pick another --model"
            )
        return {n: v for n, v in values.items() if n in self.inputs}

    def wanted(self) -> list[str]:
        return [n for n in ("text_output", "num_output_tokens") if n in self.outputs]


def _array(name: str, value: Any, batched: bool) -> tuple[np.ndarray, str]:
    dtype = _DTYPES.get(name, "INT32")
    if dtype == "BYTES":
        values = value if isinstance(value, list) else [value]
        arr = np.array([v.encode("utf-8") for v in values], dtype=object)
    else:
        arr = np.array([value], dtype=_NP[dtype])
    return (arr[np.newaxis] if batched else arr), dtype


def _infer_inputs(module: Any, inputs: dict[str, Any], batched: bool) -> list[Any]:
    """``InferInput`` objects of ``module`` (tritonclient.grpc or .http) for the named values."""
    tensors = []
    for name, value in inputs.items():
        arr, dtype = _array(name, value, batched)
        tensor = module.InferInput(name, list(arr.shape), dtype)
        tensor.set_data_from_numpy(arr)
        tensors.append(tensor)
    return tensors


class Client:
    """A connection to one server. ``protocol`` is ``grpc`` or ``http``."""

    def __init__(self, url: str, protocol: str = "grpc", timeout: float = 120.0) -> None:
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self._io: dict[str, ModelIO] = {}
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._grpc = grpcclient.InferenceServerClient(url)
        elif protocol == "http":
            import tritonclient.http as httpclient

            self._http = httpclient.InferenceServerClient(
                url, network_timeout=timeout, connection_timeout=timeout
            )
        else:
            raise UserError(f"protocol must be http or grpc, got {protocol!r}")

    def close(self) -> None:
        (self._grpc if self.protocol == "grpc" else self._http).close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model facts ------------------------------------------------------------------------------
    def model_config(self, model: str) -> dict[str, Any]:
        try:
            if self.protocol == "grpc":
                from google.protobuf.json_format import MessageToDict

                cfg = self._grpc.get_model_config(model).config
                return MessageToDict(cfg, preserving_proto_field_name=True)
            return dict(self._http.get_model_config(model))
        except Exception as exc:  # tritonclient raises its own exception types per protocol
            raise RuntimeFailure(
                f"cannot read the config of model {model!r} at {self.url} ({self.protocol}): {exc}. "
                "Is the server running (trtbuild serve) and the model name right?"
            ) from exc

    def model_io(self, model: str) -> ModelIO:
        if model not in self._io:
            cfg = self.model_config(model)
            decoupled = bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))
            inputs = frozenset(t["name"] for t in cfg.get("input", []))
            stop_model = model if "stop" in inputs else None
            if cfg.get("platform") == "ensemble":
                steps = [self.model_io(s["model_name"]) for s in _steps(cfg)]
                decoupled = any(s.decoupled for s in steps)
                stop_model = next((s.stop_model for s in steps if s.stop_model), None)
            self._io[model] = ModelIO(
                decoupled=decoupled,
                batched=int(cfg.get("max_batch_size", 0)) > 0,
                inputs=inputs,
                outputs=frozenset(t["name"] for t in cfg.get("output", [])),
                stop_model=stop_model,
            )
        return self._io[model]

    # -- stop -------------------------------------------------------------------------------------
    def stop(self, model: str, request_id: str) -> bool:
        """Send TensorRT-LLM's ``stop`` for ``request_id`` to the model behind ``model`` (the
        ensemble's core model). Returns False when ``model`` has none. Raises on failure."""
        io = self.model_io(model)
        core = io.stop_model
        if core is None:
            return False
        core_io = self.model_io(core)
        values = {"input_ids": [0], "input_lengths": 1, "request_output_len": 1, "stop": True}
        if self.protocol == "http":
            body = {"id": request_id, **{n: v for n, v in values.items() if n in core_io.inputs}}
            request = urllib.request.Request(
                f"http://{self.url}/v2/models/{core}/generate",
                data=json.dumps(body).encode("utf-8"),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=STOP_TIMEOUT_S) as resp:  # noqa: S310
                    resp.read()
            except urllib.error.HTTPError as exc:
                raise _classify(core, exc.read().decode("utf-8", "replace"), exc.code) from exc
            except urllib.error.URLError as exc:
                raise RuntimeFailure(
                    f"cannot reach http://{self.url}: {exc.reason}; is the server running?"
                ) from exc
            return True
        import tritonclient.grpc as grpcclient

        tensors = []
        for name, value in values.items():
            if name not in core_io.inputs:
                continue
            arr = np.array(value if isinstance(value, list) else [value])
            arr = arr.astype(bool if name == "stop" else np.int32)
            arr = arr[np.newaxis] if core_io.batched else arr
            tensor = grpcclient.InferInput(
                name, list(arr.shape), "BOOL" if name == "stop" else "INT32"
            )
            tensor.set_data_from_numpy(arr)
            tensors.append(tensor)
        done: queue.Queue[Any] = queue.Queue()
        with grpcclient.InferenceServerClient(self.url) as client:
            client.start_stream(callback=lambda result, error: done.put(error))
            try:
                client.async_stream_infer(
                    core, tensors, request_id=request_id, enable_empty_final_response=True
                )
                error = done.get(timeout=STOP_TIMEOUT_S)
            finally:
                client.stop_stream()
        if error is not None:
            raise _server_error(core, error)
        return True

    def _abandon(self, model: str, request_id: str) -> None:
        """Best effort while walking away from a stream: never hides the reason we left."""
        with contextlib.suppress(Exception):
            self.stop(model, request_id)

    # -- generation -------------------------------------------------------------------------------
    def generate(
        self,
        spec: InferSpec,
        on_piece: Callable[[str], None] | None = None,
        *,
        request_id: str | None = None,
    ) -> Generation:
        """Run one request to completion (streamed or not) and collect every piece.

        If ``on_piece`` raises (or anything else ends the wait early), the stream is cancelled and
        its generation stopped (see the module docstring) before the exception propagates.
        """
        result = Generation()
        start = time.perf_counter()
        rid = request_id or f"trtbuild-{uuid.uuid4().hex}"
        with contextlib.closing(self._pieces(spec, rid)) as pieces:
            for piece, tokens in pieces:
                now = time.perf_counter() - start
                if piece and result.ttft_s is None:
                    result.ttft_s = now
                result.pieces.append(piece)
                result.piece_times.append(now)
                result.tokens = max(result.tokens, tokens)
                if on_piece is not None:
                    on_piece(piece)
        result.latency_s = time.perf_counter() - start
        result.text = "".join(result.pieces)
        return result

    def _pieces(self, spec: InferSpec, request_id: str) -> Generator[tuple[str, int], None, None]:
        """(text piece, generated tokens so far) for each response."""
        io = self.model_io(spec.model)
        if spec.stream and not io.decoupled:
            raise UserError(
                f"model {spec.model!r} is not decoupled and cannot stream; use --model ensemble "
                "or drop --stream"
            )
        inputs = io.select(spec.model, request_inputs(spec))
        if not io.decoupled:
            yield self._infer(spec.model, inputs, io, request_id)
        elif self.protocol == "grpc":
            yield from self._grpc_stream(spec.model, inputs, io, request_id)
        else:
            yield from self._http_generate(spec.model, inputs, spec.stream, request_id)

    def _infer(
        self, model: str, inputs: dict[str, Any], io: ModelIO, request_id: str
    ) -> tuple[str, int]:
        if self.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        tensors = _infer_inputs(mod, inputs, io.batched)
        outputs = [mod.InferRequestedOutput(name) for name in io.wanted()]
        client = self._grpc if self.protocol == "grpc" else self._http
        try:
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = client.infer(model, tensors, outputs=outputs, request_id=request_id, **kwargs)
        except Exception as exc:
            raise _server_error(model, exc) from exc
        return _text(result.as_numpy("text_output")), _count(result.as_numpy("num_output_tokens"))

    def _grpc_stream(
        self, model: str, inputs: dict[str, Any], io: ModelIO, request_id: str
    ) -> Iterator[tuple[str, int]]:
        import tritonclient.grpc as grpcclient

        responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        tensors = _infer_inputs(grpcclient, inputs, io.batched)
        self._grpc.start_stream(
            callback=lambda result, error: responses.put((result, error)),
            stream_timeout=self.timeout,
        )
        finished = False
        try:
            wanted = [grpcclient.InferRequestedOutput(name) for name in io.wanted()]
            self._grpc.async_stream_infer(
                model,
                tensors,
                request_id=request_id,
                enable_empty_final_response=True,
                outputs=wanted,
            )
            while True:
                try:
                    result, error = responses.get(timeout=self.timeout)
                except queue.Empty as exc:
                    raise InferenceError(
                        f"{model}: no response within {self.timeout:.0f} s"
                    ) from exc
                if error is not None:
                    finished = True  # an error response ends the request on the server too
                    raise _server_error(model, error)
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                if result.as_numpy("text_output") is not None:
                    yield (
                        _text(result.as_numpy("text_output")),
                        _count(result.as_numpy("num_output_tokens")),
                    )
                if final is not None and final.bool_param:
                    finished = True
                    return
        finally:
            # cancel only a request we walk away from (timeout, Ctrl-C, a raising callback):
            # cancelling one that just completed races Triton 2.51's ensemble teardown and can
            # keep the ensemble from unloading at shutdown. Cancelling does not reach an
            # ensemble's core model, so its generation is stopped by request id too.
            self._grpc.stop_stream(cancel_requests=not finished)
            if not finished:
                self._abandon(model, request_id)

    def _http_generate(
        self, model: str, inputs: dict[str, Any], stream: bool, request_id: str
    ) -> Iterator[tuple[str, int]]:
        endpoint = "generate_stream" if stream else "generate"
        body = json.dumps({"id": request_id, **inputs}).encode("utf-8")
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{model}/{endpoint}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        finished = False
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                if not stream:
                    finished = True
                    yield _json_text(json.loads(resp.read()), model)
                    return
                for raw in resp:
                    line = raw.decode("utf-8").strip()
                    if line.startswith("data:"):
                        payload = json.loads(line[5:])
                        finished = "error" in payload
                        yield _json_text(payload, model)
                finished = True
        except urllib.error.HTTPError as exc:
            finished = True
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise _classify(model, str(detail), exc.code) from exc
        except urllib.error.URLError as exc:
            finished = True
            raise RuntimeFailure(
                f"cannot reach http://{self.url}: {exc.reason}; is the server running?"
            ) from exc
        finally:
            if not finished:  # HTTP has no cancellation in Triton 2.51: stop it by request id
                self._abandon(model, request_id)


def _json_text(payload: dict[str, Any], model: str) -> tuple[str, int]:
    if "error" in payload:
        raise _classify(model, str(payload["error"]), None)
    value = payload.get("text_output", "")
    text = "".join(value) if isinstance(value, list) else str(value)
    return text, _count(payload.get("num_output_tokens"))


def _count(value: Any) -> int:
    if value is None:
        return 0
    flat = np.asarray(value).reshape(-1)
    return int(flat[0]) if flat.size else 0


def _text(arr: Any) -> str:
    flat = np.asarray(arr).reshape(-1)
    return "".join(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat)


def _steps(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return list(cfg.get("ensemble_scheduling", {}).get("step", []))


def _server_error(model: str, exc: Any) -> InferenceError | InvalidRequest:
    """A tritonclient exception as trtbuild's error (see ``_classify``)."""
    status = getattr(exc, "status", None)
    status = str(status() if callable(status) else status or "")
    code: int | str | None = status or None
    return _classify(model, _message(exc), code)


def _classify(model: str, message: str, code: int | str | None) -> InferenceError | InvalidRequest:
    """The runtime's ``(retryable)`` mark, UNAVAILABLE or 503: the server is at capacity
    (``ServerBusy``, exit 1, retry later). The mark is checked first because Triton 2.51 drops
    codes on the way: gRPC streams carry none, HTTP ``generate`` answers every error with 400,
    and a BLS sees its composing models' errors as INTERNAL. Then the ``(invalid request)``
    mark, INVALID_ARGUMENT or 400: the request was bad (``InvalidRequest``, exit 2). A gRPC UNAVAILABLE that means the server is
    unreachable stays an ``InferenceError``."""
    status = str(code or "")
    lowered = message.lower()
    unreachable = "failed to connect" in lowered or "connection refused" in lowered
    if RETRYABLE in message or status == "503" or ("UNAVAILABLE" in status and not unreachable):
        return ServerBusy(f"{model}: {message}. The server is at capacity: retry the request later")
    if INVALID in message or "INVALID_ARGUMENT" in status or status == "400":
        return InvalidRequest(f"{model}: {message}")
    return InferenceError(f"{model}: {message}")


def _message(exc: Any) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else (msg or str(exc))
    return str(text).strip()


def run_infer(spec: InferSpec, out: TextIO) -> Generation:
    """``trtbuild infer``: print the text (as it arrives when streaming), then stats on stderr."""
    import sys

    def write(piece: str) -> None:
        out.write(piece)
        out.flush()

    with Client(spec.url, spec.protocol, spec.timeout) as client:
        result = client.generate(spec, on_piece=write if spec.stream else None)
    out.write(("" if spec.stream else result.text) + "\n")
    ttft = f"{result.ttft_s * 1000:.1f} ms" if result.ttft_s is not None else "n/a"
    print(
        f"[{spec.model} via {spec.protocol}: {result.tokens} tokens, first text after {ttft}, "
        f"total {result.latency_s * 1000:.1f} ms]",
        file=sys.stderr,
    )
    return result
