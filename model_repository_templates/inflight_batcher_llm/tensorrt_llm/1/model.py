"""trtbuild portable runtime: the ``tensorrt_llm`` slot of the inflight-batching ensemble.

Speaks TensorRT-LLM's tensor contract (input_ids, input_lengths, request_output_len, end_id,
streaming, sampling inputs ... -> output_ids [1, beam, T], sequence_length [1, beam], log probs,
perf metrics) and generates with torch on CPU or any CUDA GPU through ``_trtbuild_engine.Engine``
(continuous batching). Every input is validated by ``_trtbuild_requests.parse_core`` (the same
module preprocessing uses) before anything is queued.

- ``execute`` only parses and enqueues; the engine thread decodes; sender threads
  (``sender_threads``, one request's responses always through the same one) build and send the
  responses, so Triton I/O never stalls the decode loop.
- Streaming responses carry the new tokens only, like TensorRT-LLM. When the ``output_text``
  output is requested by name (the portable ensemble and BLS do), each response also carries the
  incrementally detokenized text of those tokens, shaped like upstream postprocessing's OUTPUT:
  one string per sequence, ``[1]``.
- A request whose ``input_ids`` is ``[B, L]`` runs as B sequences, as in TensorRT-LLM's C++
  backend: each sequence's responses carry ``batch_index`` ``[1, 1]``, and only the response that
  ends the last sequence carries the final flag. Non-decoupled deployments refuse B > 1 (as
  TensorRT-LLM does).
- Everything upstream's preprocessing and ensemble send by default is accepted; an input that asks
  for a feature this runtime lacks (beam search, LoRA, prompt tables, encoder-decoder, draft
  tokens, guided decoding, logits outputs) gets an error response naming it, never a silent
  ignore.
- Errors: bad input is INVALID_ARGUMENT and its message carries ``(invalid request)``; a full
  queue is UNAVAILABLE (HTTP 503, gRPC 14) and its message carries ``(retryable)``. The marks are
  there because the gRPC stream loses status codes. A request that fails
  while computing fails alone. If the engine thread dies, every pending and later request gets an
  error and this process exits (``os._exit``) so the server sees a dead model.
- A cancelled request (client gone, gRPC cancel, or a ``stop`` request with the same id) stops at
  the next step and frees its slot. Triton 2.51 does not forward a client's cancellation through
  an ensemble: there, only ``stop`` (trtbuild's client sends it) frees the slot early.
"""

import json
import os
import queue
import sys
import threading
import time

# before torch starts CUDA: growable segments instead of one per odd-sized request (prefills of
# every width and count would otherwise leave GPU memory reserved that the plan does not count)
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text  # noqa: E402
from _trtbuild_engine import (  # noqa: E402
    Engine,
    EngineDead,
    EngineLimits,
    QueueFull,
    Request,
    Sampling,
    kv_blocks,
    merge_events,
)
from _trtbuild_parallel import RANK_DIR, RankGroup, launched_rank  # noqa: E402
from _trtbuild_requests import (  # noqa: E402
    CoreLimits,
    InvalidInput,
    error_response,
    flag,
    parse_core,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_POLL_S = 0.05
SENDER_THREADS = 2  # default of the sender_threads parameter (2 beat 1 and 4 on an H200)
DRAIN_MAX = 4096  # events a sender takes from its outbox at once (then merges per request)
EXIT_FLUSH_S = 5.0  # after the engine thread died: time to deliver the error responses, then exit
# the engine's counters served as the gauge family RUNTIME_METRICS, one label value each
RUNTIME_METRICS = "trtbuild_runtime_counters"
RUNTIME_COUNTERS = (
    "chained_steps",
    "synced_launches",
    "prefills",
    "mixed_steps",
    "ended_row_steps",
    "ended_row_steps_queued",
)
PERF_OUTPUTS = (
    "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
    "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
    "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens",
)  # fmt: skip


def _error(message, code_name="INVALID_ARG"):
    """An error response (``error_response``): INVALID_ARG, the client's fault, marked for gRPC
    streams that drop the code; UNAVAILABLE: retry later; INTERNAL: ours."""
    return error_response(pb_utils, message, code_name)


def _param_flag(value):
    return str(value).strip().lower() in ("1", "true", "yes")


def _auto_flag(value):
    """``auto`` (or empty): None, the engine decides; else a flag."""
    return None if str(value).strip().lower() in ("", "auto") else _param_flag(value)


def _auto_int(value):
    """``auto`` (or empty): None, the engine decides; else a whole number."""
    return None if str(value).strip().lower() in ("", "auto") else int(value)


def _instance_placement(args, config, params, local_ranks=1, local_rank=0):
    """(device, torch threads) of this instance. A ``KIND_GPU`` instance runs on the GPU Triton
    gave it (``model_instance_device_id``); a rank of a tensor-parallel group on the GPU of its
    local rank; CPU instances of one model (and the ranks on one host) split the cores between
    them unless ``num_threads`` says otherwise."""
    device = params.get("device", "auto")
    threads = int(params.get("num_threads", "0"))
    if args.get("model_instance_kind") == "GPU" and device in ("auto", "cuda"):
        return f"cuda:{int(args.get('model_instance_device_id', '0'))}", threads
    if local_ranks > 1 and device in ("auto", "cuda"):
        import torch

        if device == "cuda" or torch.cuda.is_available():
            return f"cuda:{local_rank}", threads
    cpu_instances = local_ranks * sum(
        int(g.get("count", 1))
        for g in config.get("instance_group", [])
        if g.get("kind", "KIND_CPU") == "KIND_CPU"
    )
    if threads == 0 and cpu_instances > 1 and device != "cuda" and not device.startswith("cuda:"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // cpu_instances)
    return device, threads


class _Reply:
    """One Triton request: where its responses go, and the engine requests (rows) it became."""

    __slots__ = (
        "sender", "request_id", "requests", "pending", "closed", "cancel_sent", "responses",
        "stream", "batched", "requested", "want_text", "want_ids", "log_probs", "perf",
        "num_input", "num_output", "exclude_input", "arrival_ns",
    )  # fmt: skip

    def wants(self, name):
        return not self.requested or name in self.requested


class _Row:
    """One sequence of a reply (``Request.tag``)."""

    __slots__ = ("reply", "index", "prompt", "detok", "cum_log_prob", "generated")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self._all_outputs = frozenset(o["name"] for o in config.get("output", []))
        self.default_exclude = _param_flag(params.get("exclude_input_in_output", "true"))
        self.skip_special = _param_flag(params.get("skip_special_tokens", "true"))
        limits = EngineLimits(
            max_batch_size=int(params.get("max_batch_size", "16")),
            max_seq_len=int(params.get("max_seq_len", "2048")),
            max_num_tokens=int(params.get("max_num_tokens", "4096")),
            max_queue_size=int(params.get("max_queue_size", "256")),
            kv_cache_free_gpu_mem_fraction=float(
                params.get("kv_cache_free_gpu_mem_fraction", "0.9")
            ),
            max_tokens_in_paged_kv_cache=int(params.get("max_tokens_in_paged_kv_cache", "0")),
        )
        world = int(params.get("tp_size", "1"))
        model_dir, group = params["model_dir"], None
        if world > 1:  # a rank of a tensor-parallel group (mpirun / srun, one tritonserver each)
            rank, size, local_rank, local_size = launched_rank()
            if size != world:
                raise pb_utils.TritonModelException(
                    f"the engine is split {world} ways (tp_size) but this process is rank {rank} "
                    f"of {size}; serve it with 'trtbuild serve', which launches {world} ranks"
                )
            device, num_threads = _instance_placement(args, config, params, local_size, local_rank)
            model_dir = os.path.join(model_dir, RANK_DIR.format(rank))
            group = RankGroup(rank, world, "cpu" if device == "auto" else device)
        else:
            device, num_threads = _instance_placement(args, config, params)
        self.engine = Engine(
            model_dir,
            group=group,
            device=device,
            dtype=params.get("dtype", "auto"),
            limits=limits,
            num_threads=num_threads,
            on_fatal=self._engine_died,
            kv_cache=params.get("kv_cache", "auto"),
            cuda_graphs=_param_flag(params.get("cuda_graphs", "true")),
            fused_layers=_auto_flag(params.get("fused_layers", "auto")),
            async_decode=_auto_flag(params.get("async_decode", "auto")),
            admission_wait_ms=float(params.get("admission_wait_ms", "0")),
            prefill_graphs=_auto_flag(params.get("prefill_graphs", "auto")),
            mixed_prefill_tokens=_auto_int(params.get("mixed_prefill_tokens", "auto")),
            flex_decode_batch=_auto_int(params.get("flex_decode_batch", "auto")),
            fused_kv_writes=_auto_flag(params.get("fused_kv_writes", "auto")),
        )
        if group is not None and not group.leader:
            # like TensorRT-LLM's ranks above 0, this one never finishes loading: it follows rank
            # 0's steps for the life of the group, so its tritonserver never opens endpoints
            pb_utils.Logger.log_info(
                f"trtbuild portable runtime: rank {group.rank} of {world} follows rank 0 "
                f"(device={self.engine.device} dtype={self.engine.dtype})"
            )
            try:
                self.engine.follow()
            except Exception as exc:  # noqa: BLE001 - rank 0 is gone or stuck: end this rank
                pb_utils.Logger.log_error(
                    f"trtbuild portable runtime: rank {group.rank} lost rank 0 ({exc}); exiting"
                )
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)  # rank 0 stopped the group
        tokenizer_dir = params.get("tokenizer_dir", "")
        self.text = Text(tokenizer_dir) if tokenizer_dir else None
        vocab = self.engine.vocab_size
        # upstream's preprocessing sizes EMBEDDING_BIAS by the tokenizer; a model whose embedding
        # matrix is padded beyond it gets the tail zero-filled
        sizes = [vocab]
        if self.text is not None and self.text.vocab_size < vocab:
            sizes.append(self.text.vocab_size)
        self.core_limits = CoreLimits(
            vocab_size=vocab,
            max_seq_len=limits.max_seq_len,
            max_input_len=int(params.get("max_input_len", "0")) or None,
            max_num_tokens=limits.max_num_tokens,
            bias_sizes=tuple(sizes),
        )
        # Test-only fault injection (never rendered by trtbuild): a request with this request id
        # kills the engine thread, so tests can watch what clients get when it dies.
        self.fault_request_id = params.get("test_fault_request_id") or None
        self.engine.start()
        self.engine.warmup()
        # several sender threads: a response's send waits for the server's acknowledgement with
        # the GIL released, so sends of different requests overlap; one request's responses
        # always go through the same thread (its outbox), which keeps them in order
        senders = max(1, int(params.get("sender_threads", str(SENDER_THREADS))))
        self._outboxes = [queue.SimpleQueue() for _ in range(senders)]
        self._replies_seen = 0
        # merge_responses false: one streaming response per decode step, however far behind
        self._merge = _param_flag(params.get("merge_responses", "true"))
        self._active = {}  # id(_Reply) -> _Reply, for cancellation polling
        self._by_request_id = {}  # Triton request id -> _Reply, for `stop` requests
        self._lock = threading.Lock()
        self._running = True
        # each instance's gauges carry its name: instances of one model would share them
        self._metric_labels = {
            "model": args.get("model_name", "tensorrt_llm"),
            "version": str(args.get("model_version", "1")),
            "model_instance": args.get("model_instance_name", ""),
        }
        self._metrics = self._make_metrics(self.engine.limits.max_batch_size)
        self._senders = [
            threading.Thread(
                target=self._send_loop, args=(i,), name=f"trtbuild-sender-{i}", daemon=True
            )
            for i in range(senders)
        ]
        for thread in self._senders:
            thread.start()
        pb_utils.Logger.log_info(
            f"trtbuild portable runtime ready: device={self.engine.device} dtype={self.engine.dtype} "
            f"max_batch_size={self.engine.limits.max_batch_size} max_seq_len={limits.max_seq_len} "
            f"kv_cache={self.engine.kv_layout} cuda_graphs={len(self.engine.graphs)} "
            f"fused_layers={self.engine.fused_layers} async_decode={self.engine.async_decode} "
            f"prefill_graphs={len(self.engine._prefill_captured)} "
            f"mixed_prefill_tokens={self.engine.mixed_prefill_tokens} "
            f"mixed_graphs={len(self.engine._mixed_captured)} "
            f"flex_decode_batch={self.engine.flex_decode_batch} "
            f"fused_kv_writes={self.engine.fused_kv_writes}"
        )

    # -- requests -------------------------------------------------------------------------------
    def execute(self, requests):
        if not self.decoupled:
            return self._execute_blocking(requests)
        for request in requests:
            sender = request.get_response_sender()
            try:
                reply = self._accept(request, sender)
                if reply is not None:
                    self._submit(reply)
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                sender.send(self._refusal(exc), flags=FINAL)
        return None

    def _execute_blocking(self, requests):
        """Non-decoupled deployments: wait for every request of the batch, then answer.

        Each submitted request carries its own completion event; the sender thread only sets it,
        so no list is shared between the two threads.
        """
        responses, waiting = [None] * len(requests), []
        for i, request in enumerate(requests):
            try:
                reply = self._accept(request, None)
                if reply is None:  # a `stop` request
                    responses[i] = pb_utils.InferenceResponse([])
                    continue
                reply.responses = (responses, i, threading.Event())
                self._submit(reply)
                waiting.append(reply.responses[2])
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                responses[i] = self._refusal(exc)
        for finished in waiting:
            finished.wait()
        return responses

    def _refusal(self, exc):
        if isinstance(exc, QueueFull):
            return _error(str(exc), "UNAVAILABLE")
        if isinstance(exc, InvalidInput | ValueError):
            return _error(str(exc), "INVALID_ARG")
        if isinstance(exc, EngineDead):
            return _error(str(exc), "INTERNAL")
        return _error(f"tensorrt_llm: {type(exc).__name__}: {exc}", "INTERNAL")

    def _submit(self, reply):
        with self._lock:
            self._active[id(reply)] = reply
            if reply.request_id:
                self._by_request_id[reply.request_id] = reply
        try:
            self.engine.submit_many(reply.requests)
        except BaseException:
            self._close(reply)
            raise

    def _accept(self, request, sender):
        """Parse one Triton request into a ``_Reply``; ``None`` for a ``stop`` request (answered
        here). Raises for a request that cannot run."""
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        request_id = request.request_id()
        if flag(inputs.get("stop")):
            self._stop(request_id, sender)
            return None
        if self.fault_request_id and request_id == self.fault_request_id:
            self.engine._admit_locked = _injected_fault
        parsed = parse_core(inputs, self.core_limits)
        if parsed.streaming and not self.decoupled:
            raise InvalidInput(
                "streaming needs the decoupled transaction policy; re-render with --streaming"
            )
        if len(parsed.rows) > 1 and not self.decoupled:
            raise InvalidInput(
                f"input_ids holds {len(parsed.rows)} sequences; more than one per request needs "
                "the decoupled transaction policy (as in TensorRT-LLM): re-render with "
                "--streaming, or send one sequence per request"
            )
        reply = _Reply()
        reply.sender = sender
        reply.request_id = request_id
        reply.pending = len(parsed.rows)
        reply.closed = False
        reply.cancel_sent = False
        reply.responses = None
        reply.stream = parsed.streaming
        reply.batched = len(parsed.rows) > 1
        reply.requested = frozenset(request.requested_output_names())  # empty: all outputs
        # output_text is trtbuild's extension: computed only for callers that name it (the
        # ensemble, the BLS); a client that names no output gets every output from Triton,
        # and TensorRT-LLM's contract (ids) without paying for detokenizing each response
        reply.want_text = (
            self.text is not None
            and "output_text" in reply.requested
            and reply.requested != self._all_outputs
        )
        # an ensemble that takes text from output_text does not ask for the ids: skip building them
        reply.want_ids = not reply.requested or bool(
            reply.requested & {"output_ids", "sequence_length"}
        )
        reply.log_probs = parsed.return_log_probs
        reply.perf = parsed.return_perf_metrics
        reply.num_input = parsed.return_num_input_tokens
        reply.num_output = parsed.return_num_output_tokens
        reply.exclude_input = (
            self.default_exclude if parsed.exclude_input is None else parsed.exclude_input
        )
        reply.arrival_ns = time.monotonic_ns()
        reply.requests = []
        outbox = self._outboxes[self._replies_seen % len(self._outboxes)]
        self._replies_seen += 1
        for index, row in enumerate(parsed.rows):
            state = _Row()
            state.reply = reply
            state.index = index
            state.prompt = row.prompt
            state.detok = (
                self.text.incremental(self.skip_special)
                if reply.want_text and reply.stream
                else None
            )
            state.cum_log_prob = 0.0
            state.generated = 0
            reply.requests.append(
                Request(
                    prompt=row.prompt,
                    max_new_tokens=row.max_new_tokens,
                    on_event=outbox.put,
                    end_id=row.end_id,
                    stop_words=row.stop_words,
                    bad_words=row.bad_words,
                    sampling=Sampling(
                        temperature=row.temperature,
                        top_k=row.top_k,
                        top_p=row.top_p,
                        repetition_penalty=row.repetition_penalty,
                        presence_penalty=row.presence_penalty,
                        frequency_penalty=row.frequency_penalty,
                        min_tokens=row.min_tokens,
                        seed=row.seed,
                    ),
                    embedding_bias=row.embedding_bias,
                    return_log_probs=reply.log_probs,
                    stream=reply.stream,
                    tag=state,
                )
            )
        return reply

    def _stop(self, request_id, sender):
        """TensorRT-LLM's ``stop``: cancel every sequence of the request with this id, answer
        with one empty final response (also when it already finished)."""
        if not request_id:
            raise InvalidInput(
                "stop needs the request id of the request to stop; send it as this request's id"
            )
        with self._lock:
            target = self._by_request_id.get(request_id)
        if target is not None:
            for req in target.requests:
                self.engine.cancel(req)
        if sender is not None:
            sender.send(pb_utils.InferenceResponse([]), flags=FINAL)

    # -- responses (sender thread) ----------------------------------------------------------------
    def _send_loop(self, index):
        """Sender ``index``: answer the events of its outbox; sender 0 also polls cancellations
        and updates the gauges."""
        outbox = self._outboxes[index]
        last_scan = time.monotonic()
        while self._running:
            waiting = []
            try:
                waiting.append(outbox.get(timeout=CANCEL_POLL_S))
                while len(waiting) < DRAIN_MAX:
                    waiting.append(outbox.get_nowait())
            except queue.Empty:
                pass
            # what waited for this sender goes out as one response per request (several tokens
            # each when the sender fell behind the engine), so it never falls further behind
            for event in merge_events(waiting) if self._merge else waiting:
                try:
                    self._respond(event)
                except Exception as exc:  # noqa: BLE001 - one bad response must not stop the loop
                    pb_utils.Logger.log_error(f"trtbuild: failed to send a response: {exc}")
            now = time.monotonic()
            if index == 0 and now - last_scan >= CANCEL_POLL_S:
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
            labels = self._metric_labels
            gauges = {
                t: family.Metric(labels={**labels, "request_type": t})
                for t in ("active", "waiting", "max")
            }
            gauges["max"].set(max_batch_size)
            general = pb_utils.MetricFamily(
                name="nv_trt_llm_general_metrics",
                description="TensorRT-LLM-compatible general metrics (trtbuild portable runtime)",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            iterations = general.Metric(labels={**labels, "general_type": "iteration_counter"})
            # the portable runtime's own counters (engine attributes of these names; see
            # trtbuild.runtime.engine), in a family of trtbuild's own
            runtime = pb_utils.MetricFamily(
                name=RUNTIME_METRICS,
                description="trtbuild portable runtime counters since the model loaded",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            counters = {
                name: [runtime.Metric(labels={**labels, "counter": name}), -1]
                for name in RUNTIME_COUNTERS
            }
            # the families must outlive their metrics: keep them with the model
            self._metric_families = (family, general, gauges, runtime)
            return {
                "active": [gauges["active"], -1],
                "waiting": [gauges["waiting"], -1],
                "iterations": [iterations, -1],
                **counters,
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
            *((name, getattr(engine, name)) for name in RUNTIME_COUNTERS),
        ):
            slot = self._metrics.get(name)
            if slot is not None and slot[1] != value:
                slot[0].set(value)
                slot[1] = value

    def _poll_cancellations(self):
        # under the lock: a reply is closed (under the lock) before its final response is sent,
        # and Triton 2.51 crashes when is_cancelled() is asked of a sender that sent its final
        cancelled = []
        with self._lock:
            for reply in self._active.values():
                if reply.sender is None or reply.closed or reply.cancel_sent:
                    continue
                if reply.sender.is_cancelled():
                    reply.cancel_sent = True
                    cancelled.append(reply)
        for reply in cancelled:
            for req in reply.requests:
                self.engine.cancel(req)

    def _respond(self, event):
        req, row = event.request, event.request.tag
        reply = row.reply
        last = False
        if event.finished is not None:
            reply.pending -= 1
            last = reply.pending == 0
            if last:
                self._close(reply)
        if event.error:
            message = event.error if not reply.batched else f"sequence {row.index}: {event.error}"
            self._deliver(reply, _error(message, "INTERNAL"), last)
            return
        tokens = list(event.tokens)
        row.generated += len(tokens) if reply.stream else 0
        if not reply.stream and not reply.exclude_input:
            tokens = row.prompt + tokens
        text = None
        if reply.want_text:
            if row.detok is not None:
                text = row.detok.add(event.tokens) + (row.detok.finish() if event.finished else "")
            else:
                text = self.text.decode(tokens, self.skip_special)
        if reply.stream and event.finished and not tokens and not text and not reply.batched:
            self._deliver(reply, None, last)  # a bare final flag ends the stream (cancelled too)
            return
        outputs = []
        if reply.want_ids:
            outputs.append(pb_utils.Tensor("output_ids", np.array([[tokens]], dtype=np.int32)))
            outputs.append(
                pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32))
            )
        if text is not None:  # one string per sequence, like upstream postprocessing's OUTPUT
            outputs.append(
                pb_utils.Tensor("output_text", np.array([text.encode("utf-8")], dtype=object))
            )
        if reply.log_probs:
            lps = list(event.log_probs)
            row.cum_log_prob = (row.cum_log_prob + sum(lps)) if reply.stream else sum(lps)
            outputs.append(
                pb_utils.Tensor("cum_log_probs", np.array([[row.cum_log_prob]], dtype=np.float32))
            )
            outputs.append(pb_utils.Tensor("output_log_probs", np.array([[lps]], dtype=np.float32)))
        # batch_index only for B > 1 and sequence_index never (one sequence per row), as upstream:
        # every tensor costs serialization on each streamed token
        if reply.batched and reply.wants("batch_index"):
            outputs.append(pb_utils.Tensor("batch_index", np.array([[row.index]], dtype=np.int32)))
        if reply.num_input and reply.wants("num_input_tokens"):
            outputs.append(
                pb_utils.Tensor("num_input_tokens", np.array([[len(row.prompt)]], dtype=np.int32))
            )
        if reply.num_output and reply.wants("num_output_tokens"):
            n_out = row.generated if reply.stream else len(req.output)
            outputs.append(
                pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32))
            )
        if reply.perf:
            outputs.extend(self._perf_outputs(reply, req, event))
        self._deliver(reply, pb_utils.InferenceResponse(outputs), last)

    def _perf_outputs(self, reply, req, event):
        """TensorRT-LLM's per-request perf metrics, [1, 1] each. Times are time.monotonic_ns()
        (a steady clock, like upstream's). KV blocks count this request's own cached tokens in
        blocks of the engine's TOKENS_PER_BLOCK (32); nothing is reused (no prefix caching); no draft tokens."""
        blocks = kv_blocks(event.kv_tokens)
        values = {
            "kv_cache_alloc_new_blocks": (blocks, np.int32),
            "kv_cache_reused_blocks": (0, np.int32),
            "kv_cache_alloc_total_blocks": (blocks, np.int32),
            "arrival_time_ns": (reply.arrival_ns, np.int64),
            "first_scheduled_time_ns": (req.scheduled_ns, np.int64),
            "first_token_time_ns": (req.first_token_ns, np.int64),
            "last_token_time_ns": (event.token_ns or req.last_token_ns, np.int64),
            "acceptance_rate": (0.0, np.float32),
            "total_accepted_draft_tokens": (0, np.int32),
            "total_draft_tokens": (0, np.int32),
        }
        return [
            pb_utils.Tensor(name, np.array([[values[name][0]]], dtype=values[name][1]))
            for name in PERF_OUTPUTS
            if reply.wants(name)
        ]

    def _deliver(self, reply, response, final):
        if reply.responses is not None:  # non-decoupled (one sequence): hand it to execute()
            responses, i, finished = reply.responses
            if final:
                responses[i] = response
                finished.set()
            return
        try:
            if response is None:
                reply.sender.send(flags=FINAL)
            else:
                reply.sender.send(response, flags=FINAL if final else 0)
        except Exception as exc:  # noqa: BLE001 - e.g. the client went away; the request is over
            if not final:
                raise
            pb_utils.Logger.log_verbose(f"trtbuild: final response not delivered: {exc}")

    def _close(self, reply):
        """No response is pending any more: stop polling and stop-routing this reply. Called
        before its final response is sent."""
        with self._lock:
            reply.closed = True
            self._active.pop(id(reply), None)
            if reply.request_id and self._by_request_id.get(reply.request_id) is reply:
                del self._by_request_id[reply.request_id]

    # -- engine death -------------------------------------------------------------------------------
    def _engine_died(self, reason):
        """The engine thread died (every pending request already has its error event): deliver
        those errors, then exit the stub process so Triton reports the model as dead."""
        pb_utils.Logger.log_error(
            f"trtbuild portable runtime: the engine thread died ({reason}); exiting so the "
            "server sees a dead model"
        )
        threading.Thread(target=self._exit_after_flush, name="trtbuild-exit", daemon=True).start()

    def _exit_after_flush(self):
        deadline = time.monotonic() + EXIT_FLUSH_S
        while any(not q.empty() for q in self._outboxes) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the last event taken from the outbox is being sent
        os._exit(1)

    def finalize(self):
        self._running = False
        self.engine.stop()
        engine = self.engine
        pb_utils.Logger.log_info(
            f"trtbuild portable runtime stopped: {engine.steps} decode steps "
            f"({engine.chained_steps} launched before the last one's tokens were handed out, "
            f"{engine.synced_launches} after the steps in flight drained), "
            f"{engine.prefills} prefills of {engine.prefilled} requests "
            f"({engine.mixed_steps} inside decode steps); rows carried after their request "
            f"ended: {engine.ended_row_steps} row-steps ({engine.ended_row_steps_queued} while "
            "a request waited)"
        )


def _injected_fault():
    raise RuntimeError("fault injected through the test_fault_request_id parameter")
