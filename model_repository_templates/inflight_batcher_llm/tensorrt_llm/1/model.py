"""trtbuild portable runtime: the ``tensorrt_llm`` slot of the inflight-batching ensemble.

Speaks TensorRT-LLM's tensor contract (input_ids, input_lengths, request_output_len, end_id,
streaming, sampling inputs ... -> output_ids [beam, T], sequence_length, log probs) and generates
with torch on CPU or any CUDA GPU through ``_trtbuild_engine.Engine`` (continuous batching).

- ``execute`` only parses and enqueues; the engine thread decodes; a sender thread builds and
  sends the responses, so Triton I/O never stalls the decode loop.
- Streaming responses carry the new tokens only, like TensorRT-LLM. When the ``output_text``
  output is requested by name (the portable ensemble and BLS do), each response also carries the
  incrementally detokenized text of those tokens.
- Inputs that cannot be honoured (beam search, LoRA, prompt tables ...) get an error response.
- A cancelled request (client gone, gRPC cancel, or a ``stop`` request with the same id) stops at
  the next step and frees its slot.
"""

import json
import os
import queue
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text, parse_words_tensor  # noqa: E402
from _trtbuild_engine import (  # noqa: E402
    Engine,
    EngineLimits,
    Request,
    RequestError,
    Sampling,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_POLL_S = 0.05


def _invalid(message):
    """An error response that Triton reports as INVALID_ARGUMENT (HTTP 400): the client's fault."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = (
        pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    )
    return pb_utils.InferenceResponse(error=error)


# Core-model inputs this runtime honours. Anything else that arrives gets an error response.
SUPPORTED = {
    "input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list",
    "bad_words_list", "beam_width", "num_return_sequences", "temperature", "runtime_top_k",
    "runtime_top_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
    "min_length", "seed", "random_seed", "return_log_probs", "return_perf_metrics",
    "return_num_input_tokens", "return_num_output_tokens", "return_context_logits",
    "return_generation_logits", "exclude_input_in_output", "stop", "streaming", "len_penalty",
    "early_stopping", "beam_search_diversity_rate",
}  # fmt: skip


def _scalar(request, name, default=None, cast=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    arr = tensor.as_numpy().reshape(-1)
    if arr.size == 0:
        return default
    value = arr[0].item() if hasattr(arr[0], "item") else arr[0]
    return cast(value) if cast else value


def _flag(value):
    return str(value).strip().lower() in ("1", "true", "yes")


class _State:
    """What the sender thread needs to answer one request."""

    __slots__ = (
        "sender", "stream", "exclude_input", "prompt", "want_text", "detok", "log_probs",
        "cum_log_prob", "perf", "num_input", "num_output", "arrival_ns", "first_token_ns",
        "request_id", "generated", "last_poll", "responses", "want_ids",
    )  # fmt: skip


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.default_exclude = _flag(params.get("exclude_input_in_output", "true"))
        self.skip_special = _flag(params.get("skip_special_tokens", "true"))
        self.max_input_len = int(params.get("max_input_len", "0")) or None
        limits = EngineLimits(
            max_batch_size=int(params.get("max_batch_size", "16")),
            max_seq_len=int(params.get("max_seq_len", "2048")),
            max_num_tokens=int(params.get("max_num_tokens", "4096")),
            max_queue_size=int(params.get("max_queue_size", "256")),
        )
        self.engine = Engine(
            params["model_dir"],
            device=params.get("device", "auto"),
            dtype=params.get("dtype", "auto"),
            limits=limits,
            num_threads=int(params.get("num_threads", "0")),
        )
        tokenizer_dir = params.get("tokenizer_dir", "")
        self.text = Text(tokenizer_dir) if tokenizer_dir else None
        self.declared = {i["name"] for i in config["input"]}
        self.engine.start()
        self.engine.warmup()
        self._outbox = queue.SimpleQueue()
        self._active = {}  # id(Request) -> Request, for cancellation polling
        self._by_request_id = {}  # Triton request id -> Request, for `stop` requests
        self._lock = threading.Lock()
        self._running = True
        self._metrics = self._make_metrics(limits.max_batch_size)
        self._sender = threading.Thread(target=self._send_loop, name="trtbuild-sender", daemon=True)
        self._sender.start()
        pb_utils.Logger.log_info(
            f"trtbuild portable runtime ready: device={self.engine.device} dtype={self.engine.dtype} "
            f"max_batch_size={limits.max_batch_size} max_seq_len={limits.max_seq_len}"
        )

    # -- requests -------------------------------------------------------------------------------
    def execute(self, requests):
        if not self.decoupled:
            return self._execute_blocking(requests)
        for request in requests:
            sender = request.get_response_sender()
            req = None
            try:
                req = self._parse(request, sender)
                if req is None:  # a `stop` request: answered in _parse
                    continue
                with self._lock:
                    self._active[id(req)] = req
                    if req.tag.request_id:
                        self._by_request_id[req.tag.request_id] = req
                self.engine.submit(req)
            except (RequestError, ValueError) as exc:
                self._forget_request(req)
                sender.send(_invalid(str(exc)), flags=FINAL)
        return None

    def _execute_blocking(self, requests):
        """Non-decoupled deployments: wait for every request of the batch, then answer.

        Each submitted request carries its own completion event; the sender thread only sets it,
        so no list is shared between the two threads.
        """
        responses, waiting = [None] * len(requests), []
        for i, request in enumerate(requests):
            try:
                req = self._parse(request, None)
                req.tag.responses = (responses, i, threading.Event())
                self.engine.submit(req)
                waiting.append(req.tag.responses[2])
            except (RequestError, ValueError) as exc:
                responses[i] = _invalid(str(exc))
        for finished in waiting:
            finished.wait()
        return responses

    def _parse(self, request, sender):
        present = {
            name
            for name in self.declared
            if pb_utils.get_input_tensor_by_name(request, name) is not None
        }
        unsupported = sorted(present - SUPPORTED)
        if unsupported:
            raise RequestError(
                f"the portable runtime does not support {', '.join(unsupported)}; "
                "serve this model with TensorRT-LLM for these features"
            )
        request_id = request.request_id()
        if _scalar(request, "stop", False, bool):
            with self._lock:
                target = self._by_request_id.get(request_id)
            if target is not None:
                self.engine.cancel(target)
            if sender is not None:
                sender.send(flags=FINAL)
            return None
        ids_tensor = pb_utils.get_input_tensor_by_name(request, "input_ids")
        if ids_tensor is None:
            raise RequestError("input_ids is required")
        ids = ids_tensor.as_numpy()
        if ids.dtype != np.int32:
            raise RequestError(f"input_ids must be INT32, got {ids.dtype}")
        if ids.ndim == 2 and ids.shape[0] != 1:
            raise RequestError("send one sequence per request (batch dimension 1)")
        ids = ids.reshape(-1)
        length = _scalar(request, "input_lengths", len(ids), int)
        prompt = [int(x) for x in ids[:length]]
        if self.max_input_len and len(prompt) > self.max_input_len:
            raise RequestError(
                f"the prompt has {len(prompt)} tokens; max_input_len is {self.max_input_len}"
            )
        for name in ("beam_width", "num_return_sequences"):
            if _scalar(request, name, 1, int) != 1:
                raise RequestError(
                    f"{name} > 1 is not supported by the portable runtime (beam search)"
                )
        for name in ("return_context_logits", "return_generation_logits"):
            if _scalar(request, name, False, bool):
                raise RequestError(f"{name} is not supported by the portable runtime")
        stream = _scalar(request, "streaming", False, bool)
        if stream and not self.decoupled:
            raise RequestError(
                "streaming needs the decoupled transaction policy; re-render with --streaming"
            )
        seed = _scalar(request, "seed", None, int)
        if seed is None:  # TensorRT-LLM <= 0.19 name
            seed = _scalar(request, "random_seed", None, int)
        sampling = Sampling(
            temperature=_scalar(request, "temperature", 1.0, float),
            top_k=_scalar(request, "runtime_top_k", 0, int),
            top_p=_scalar(request, "runtime_top_p", 0.0, float),
            repetition_penalty=_scalar(request, "repetition_penalty", 1.0, float),
            presence_penalty=_scalar(request, "presence_penalty", 0.0, float),
            frequency_penalty=_scalar(request, "frequency_penalty", 0.0, float),
            min_tokens=_scalar(request, "min_tokens", None, int)
            or _scalar(request, "min_length", 0, int),
            seed=seed,
        )
        stop_words = pb_utils.get_input_tensor_by_name(request, "stop_words_list")
        bad_words = pb_utils.get_input_tensor_by_name(request, "bad_words_list")
        state = _State()
        state.sender = sender
        state.stream = stream
        state.exclude_input = _scalar(
            request, "exclude_input_in_output", self.default_exclude, bool
        )
        state.prompt = prompt
        requested = set(request.requested_output_names())  # empty: TensorRT-LLM's outputs
        # output_text is trtbuild's extension: computed only for callers that ask (the ensemble)
        state.want_text = self.text is not None and "output_text" in requested
        # an ensemble that takes text from output_text does not ask for the ids: skip building them
        state.want_ids = not requested or bool(requested & {"output_ids", "sequence_length"})
        state.detok = (
            self.text.incremental(self.skip_special) if state.want_text and stream else None
        )
        state.log_probs = _scalar(request, "return_log_probs", False, bool)
        state.cum_log_prob = 0.0
        state.perf = _scalar(request, "return_perf_metrics", False, bool)
        state.num_input = _scalar(request, "return_num_input_tokens", False, bool)
        state.num_output = _scalar(request, "return_num_output_tokens", False, bool)
        state.arrival_ns = time.time_ns()
        state.first_token_ns = 0
        state.request_id = request_id
        state.generated = 0
        state.last_poll = time.monotonic()
        state.responses = None
        return Request(
            prompt=prompt,
            max_new_tokens=_scalar(request, "request_output_len", 0, int),
            on_event=self._outbox.put,
            end_id=_scalar(request, "end_id", None, int),
            stop_words=parse_words_tensor(stop_words.as_numpy().reshape(2, -1))
            if stop_words is not None
            else [],
            bad_words=parse_words_tensor(bad_words.as_numpy().reshape(2, -1))
            if bad_words is not None
            else [],
            sampling=sampling,
            return_log_probs=state.log_probs,
            stream=stream,
            tag=state,
        )

    # -- responses (sender thread) ----------------------------------------------------------------
    def _send_loop(self):
        last_scan = time.monotonic()
        while self._running:
            try:
                event = self._outbox.get(timeout=CANCEL_POLL_S)
            except queue.Empty:
                event = None
            while event is not None:
                try:
                    self._respond(event)
                except Exception as exc:  # noqa: BLE001 - one bad response must not stop the loop
                    pb_utils.Logger.log_error(f"trtbuild: failed to send a response: {exc}")
                try:
                    event = self._outbox.get_nowait()
                except queue.Empty:
                    event = None
            now = time.monotonic()
            if now - last_scan >= CANCEL_POLL_S:
                last_scan = now
                try:
                    self._poll_cancellations()
                    self._update_metrics()
                except Exception as exc:  # noqa: BLE001 - housekeeping must not stop responses
                    pb_utils.Logger.log_error(f"trtbuild: cancellation/metrics poll failed: {exc}")

    def _make_metrics(self, max_batch_size):
        """TensorRT-LLM's request gauge, so dashboards built for it work unchanged."""
        try:
            family = pb_utils.MetricFamily(
                name="nv_trt_llm_request_metrics",
                description="TensorRT-LLM-compatible request metrics (trtbuild portable runtime)",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            gauges = {
                t: family.Metric(labels={"request_type": t}) for t in ("active", "waiting", "max")
            }
            gauges["max"].set(max_batch_size)
            general = pb_utils.MetricFamily(
                name="nv_trt_llm_general_metrics",
                description="TensorRT-LLM-compatible general metrics (trtbuild portable runtime)",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            iterations = general.Metric(labels={"general_type": "iteration_counter"})
            # the families must outlive their metrics: keep them with the model
            self._metric_families = (family, general, gauges)
            return {
                "active": [gauges["active"], -1],
                "waiting": [gauges["waiting"], -1],
                "iterations": [iterations, -1],
            }
        except Exception as exc:  # noqa: BLE001 - metrics are optional (e.g. --allow-metrics=false)
            pb_utils.Logger.log_warn(f"trtbuild: no custom metrics: {exc}")
            return {}

    def _update_metrics(self):
        engine = self.engine
        for name, value in (
            ("active", engine.active),
            ("waiting", engine.waiting),
            ("iterations", engine.steps),
        ):
            slot = self._metrics.get(name)
            if slot is not None and slot[1] != value:
                slot[0].set(value)
                slot[1] = value

    def _poll_cancellations(self):
        with self._lock:
            active = list(self._active.values())
        for req in active:
            sender = req.tag.sender
            if sender is not None and not req.cancelled and sender.is_cancelled():
                self.engine.cancel(req)

    def _respond(self, event):
        req, state = event.request, event.request.tag
        if state.first_token_ns == 0 and event.tokens:
            state.first_token_ns = time.time_ns()
        if event.finished:
            self._forget_request(req)
        if event.error:
            self._deliver(
                state, pb_utils.InferenceResponse(error=pb_utils.TritonError(event.error)), True
            )
            return
        tokens = list(event.tokens)
        state.generated += len(tokens) if state.stream else 0
        if not state.stream and not state.exclude_input:
            tokens = state.prompt + tokens
        text = None
        if state.want_text:
            if state.detok is not None:
                text = state.detok.add(event.tokens) + (
                    state.detok.finish() if event.finished else ""
                )
            else:
                text = self.text.decode(tokens, self.skip_special)
        final = event.finished is not None
        if state.stream and final and not tokens and not text:
            self._deliver(state, None, True)  # a bare final flag ends the stream (cancelled too)
            return
        # batch_index / sequence_index are left out: one sequence per request, always 0, and every
        # tensor costs serialization on each streamed token.
        outputs = []
        if state.want_ids:
            outputs.append(pb_utils.Tensor("output_ids", np.array([[tokens]], dtype=np.int32)))
            outputs.append(
                pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32))
            )
        if text is not None:
            outputs.append(
                pb_utils.Tensor("output_text", np.array([[text.encode("utf-8")]], dtype=object))
            )
        if state.log_probs:
            lps = list(event.log_probs)
            state.cum_log_prob = (state.cum_log_prob + sum(lps)) if state.stream else sum(lps)
            outputs.append(
                pb_utils.Tensor("cum_log_probs", np.array([[state.cum_log_prob]], dtype=np.float32))
            )
            outputs.append(pb_utils.Tensor("output_log_probs", np.array([[lps]], dtype=np.float32)))
        if state.num_input:
            outputs.append(
                pb_utils.Tensor("num_input_tokens", np.array([[len(state.prompt)]], dtype=np.int32))
            )
        if state.num_output:
            n_out = state.generated if state.stream else len(req.output)
            outputs.append(
                pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32))
            )
        if state.perf:
            now = time.time_ns()
            for name, value in (
                ("arrival_time_ns", state.arrival_ns),
                ("first_scheduled_time_ns", state.arrival_ns),
                ("first_token_time_ns", state.first_token_ns or now),
                ("last_token_time_ns", now),
            ):
                outputs.append(pb_utils.Tensor(name, np.array([[value]], dtype=np.int64)))
        self._deliver(state, pb_utils.InferenceResponse(outputs), final)

    def _deliver(self, state, response, final):
        if state.responses is not None:  # non-decoupled: hand the response to execute()
            responses, i, finished = state.responses
            if final:
                responses[i] = response
                finished.set()
            return
        try:
            if response is None:
                state.sender.send(flags=FINAL)
            else:
                state.sender.send(response, flags=FINAL if final else 0)
        except Exception as exc:  # noqa: BLE001 - e.g. the client went away; the request is over
            if not final:
                raise
            pb_utils.Logger.log_verbose(f"trtbuild: final response not delivered: {exc}")

    def _forget_request(self, req):
        if req is None:
            return
        with self._lock:
            self._active.pop(id(req), None)
            if req.tag is not None and self._by_request_id.get(req.tag.request_id) is req:
                del self._by_request_id[req.tag.request_id]

    def finalize(self):
        self._running = False
        self.engine.stop()
