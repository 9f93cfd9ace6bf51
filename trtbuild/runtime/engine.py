"""Continuous-batching generation for any Hugging Face causal LM, on CPU or CUDA.

This module is the compute half of trtbuild's portable runtime. It imports only torch,
transformers and trtbuild's ``requests`` module (stdlib + numpy), because ``trtbuild repo`` copies
both verbatim next to the Triton ``model.py`` that drives them (so a rendered repository does not
need trtbuild installed).

Design:
- One engine thread owns the model and one running batch. Requests join and leave between decode
  steps (inflight batching); ``submit`` and ``cancel`` only touch a locked queue.
- Limits are explicit: ``max_batch_size`` rows decode together, ``max_seq_len`` bounds prompt +
  output per request, ``max_num_tokens`` bounds prefill tokens per scheduler iteration, and
  ``max_queue_size`` bounds the requests that wait beyond the free batch slots (admission control).
- Tokens are handed to ``Request.on_event`` from the engine thread; the caller decides how to ship
  them (the Triton model moves sending onto another thread, keeping I/O off the decode loop).

Two KV-cache layouts; ``kv_cache="auto"`` takes slots for the models they are known to be exact
for (full causal attention through transformers' attention interface: Llama, Mistral without a
sliding window, Qwen2, Qwen3), dynamic otherwise.

- ``slots`` (the fast path): one preallocated K/V tensor, ``[layers, 2, slots, max_seq_len,
  kv_heads, head_dim]``, sized before serving from a memory budget with TensorRT-LLM's semantics
  (``max_tokens_in_paged_kv_cache`` tokens if set, else ``kv_cache_free_gpu_mem_fraction`` of the
  GPU memory free after loading; never more than ``max_batch_size x max_seq_len`` tokens, so GPU
  memory is weights + that + a fixed reserve). A request owns one slot for its life; running rows
  are kept in slots ``0..n-1`` (a finished row's slot is filled by moving the last row's KV in), so
  joining and leaving never re-pad anything. Admitted requests are prefilled together, right-padded
  to one width with a plain causal mask (padding comes after every real token, so a row's logits
  are exactly those of its prompt alone), writing their KV straight into their slots. A decode step
  feeds one token per row at its own position; attention reads each slot's first ``L`` positions
  with a per-row mask, through ``scaled_dot_product_attention`` with the query heads of one KV head
  folded into its query length (no repeated keys), or, for batches of ``flex_decode_batch`` rows
  and more, through compiled flex attention with the mask as a score modification (its decoding
  kernel splits each row's keys across the GPU). Batch sizes are rounded up to a bucket (1, 2, 4,
  ... max) and ``L`` to a bucket (64, 128, ... max_seq_len); on CUDA each (batch, L) bucket's whole
  decode step (forward, logits, argmax) is one captured CUDA graph, all captured by ``warmup`` before
  serving, so the GPU never waits on Python launches and no request pays for a new shape (cuDNN
  attention, which plans every new shape, is switched off for the process). ``compile_decode``
  (opt-in) also fuses the step with ``torch.compile``. The engine waits for the GPU with the GIL
  released, so the caller's sender thread runs meanwhile. With ``async_decode`` (on CUDA by
  default) the next step is launched before this one's tokens are handed out, fed this step's
  argmax on the device, so the host's work between steps runs while the GPU decodes: a row that
  ends stays in the batch, fed at its slot's last position and its tokens thrown away, until a
  request takes its row or the steps in flight are drained (a request that cannot ride on a
  step, a row that samples or wants log probs, a cancellation, every row ended). Small prefills (``prefill_graphs``: at most
  ``PREFILL_GRAPH_TOKENS`` padded tokens) are captured graphs too, one per (requests, width)
  bucket, their padding rows writing a scratch slot after the real ones that no row reads.
  While rows decode, a few short prompts (``mixed_prefill_tokens`` padded tokens, fused layers
  only) are prefilled inside the next decode step instead of before it: one forward over the rows'
  tokens and the prompts', whose matrix multiplies read the weights once for both (a decode step's
  are bound by reading the weights, so the prompts' compute rides on it), attention split between
  the rows' slots and each prompt's causal self-attention; each (batch, L, requests, width) bucket
  is a captured graph too. With ``async_decode`` such a step is launched while the last one is in
  flight (greedy requests with nothing applied to their logits: the device's argmax is their
  first token, which the next step is fed), into ended rows first, then free ones.
- ``dynamic`` (any causal LM): a request is prefilled on its own, then its transformers
  ``DynamicCache`` is left-padded into the running batch; finished rows are dropped and KV columns
  that are padding in every row are trimmed.

Isolation: a failure while computing one request fails that request alone.
- Sampling guards every row: a row whose processed logits are NaN, +inf or all -inf fails with an
  error naming its sampling parameters; so does a row whose own processing raises.
- A prefill that raises fails its request; the running batch is untouched (merging a new row into
  the batch undoes itself if it fails half-way; slot prefills write only free slots, and a batched
  prefill that raises is retried one request at a time, so only the culprit fails).
- A decode step that raises is retried without one row: the KV cache is cut back to its pre-step
  length (slots: nothing to undo, the retry rewrites the same positions), the most recently
  admitted row (the culprit is unknown: a forward pass fails as a whole) gets an error, and the
  step runs again, and so on.
- A slot is zeroed past its new request's prompt before reuse, so what one request left in the
  cache (even NaN) never reaches the next one's attention.
- Anything else that escapes the engine thread kills it: every queued, admitted and running
  request gets an error event, later ``submit`` calls raise ``EngineDead``, and ``on_fatal`` is
  called (the Triton model then exits its process so the server sees a dead model, never silence).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trtbuild.runtime import fused as _fused
    from trtbuild.runtime import parallel as _parallel
    from trtbuild.runtime import requests as _requests
else:
    try:  # a rendered repository: copied next to this file by trtbuild repo
        import _trtbuild_fused as _fused
        import _trtbuild_parallel as _parallel
        import _trtbuild_requests as _requests
    except ImportError:
        from trtbuild.runtime import fused as _fused
        from trtbuild.runtime import parallel as _parallel
        from trtbuild.runtime import requests as _requests

FINISH_LENGTH = "length"
FINISH_STOP = "stop"  # end id or stop word
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"

# perf metrics: a KV-cache "block" is this many tokens of one request's keys and values. The
# runtime keeps a contiguous, left-padded cache per batch, not paged blocks; counting a request's
# own tokens in blocks of this size gives TensorRT-LLM's block outputs a real meaning.
TOKENS_PER_BLOCK = 32

# the slot layout serves these model types: full causal attention through transformers' attention
# interface, a decoder (get_decoder) and an output embedding (get_output_embeddings) only
SLOT_MODEL_TYPES = _parallel.SLOT_MODEL_TYPES
SLOT_ATTENTION = "trtbuild_slots"  # the attention implementation registered with transformers
PREFILL_ALIGN = 8  # a batched prefill's width is rounded up to this many tokens
# prefills of at most this many padded tokens run as captured CUDA graphs (``prefill_graphs``):
# below it a prefill costs its kernel launches (~29 ms for one 128-token prompt on an H200,
# measured, against ~4 ms of weights and compute), above it the compute
PREFILL_GRAPH_TOKENS = 1024
# while rows decode, prompts of at most this many padded tokens in all ride on the next decode step
# (``mixed_prefill_tokens``): a batch-64 step of an 8B model reads 16 GB of weights in ~3.8 ms
# but computes 64 tokens in ~1.6 ms, so a few hundred more tokens cost little more than the step
MIXED_PREFILL_TOKENS = 256
# decode steps of at least this many rows (their batch bucket) attend through compiled flex
# attention (``flex_decode_batch``): its decoding kernel splits each row's keys over more of the
# GPU; measured on an H200 at L 256 (docs/perf/h200.md, round 3): 25.8 against SDPA's 36.2 us
# per layer at 64 rows, but 16.8 against 14.4 at 16 and 13.9 against 10.4 at 1
FLEX_DECODE_BATCH = 32
# compiled flex attention's decoding-kernel settings (flex_attention's ``kernel_options``) for
# those steps: 32 keys a block, 3 pipeline stages. scripts/bench_gpu.py's ``flex_tune`` phase
# timed twelve candidates on an H200 (docs/perf/h200.md, round 6): one layer's call at 64 rows,
# L 256, 30.4 us with inductor's own choice, 24.2 with these; at 32 rows 22.4 -> 15.2
FLEX_KERNEL_OPTIONS: dict[str, int] = {"BLOCK_N": 32, "num_stages": 3}
ACTIVATION_SLACK_BYTES = 512 * 2**20  # cuBLAS workspaces, CUDA-graph pool, allocator slack

log = logging.getLogger("trtbuild.runtime")


class RequestError(_requests.InvalidInput):
    """A request the engine cannot honour; the message is sent back to the client."""


class QueueFull(RequestError):
    """Too many requests wait beyond the free batch slots; the client should retry later."""


class EngineDead(RuntimeError):
    """The engine thread died; nothing is served any more (the process is about to exit)."""


class _RowFailure(Exception):
    """One row of a step cannot continue; the message goes to that request only."""


class _Task:
    """Work handed to the engine thread; the caller waits for it and gets its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.failure = exc
        finally:
            self.done.set()

    def abandon(self, message: str) -> None:
        self.failure = EngineDead(message)
        self.done.set()

    def wait(self) -> None:
        self.done.wait()
        if self.failure is not None:
            raise self.failure


@dataclasses.dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: off. As in TensorRT-LLM, top_k == 0 with top_p == 0 means greedy
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature <= 0.0 or (self.top_k == 0 and self.top_p <= 0)

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


@dataclasses.dataclass
class Event:
    """New tokens for one request. ``finished`` is set on the last event of a request."""

    request: Request
    tokens: list[int]
    log_probs: list[float]
    finished: str | None = None
    error: str | None = None
    kv_tokens: int = 0  # this request's tokens in the KV cache when the event was made
    token_ns: int = 0  # time.monotonic_ns() of the newest token (0: none yet)


def merge_events(events: list[Event]) -> list[Event]:
    """``events`` (in the order they were made) with each request's consecutive events made one:
    tokens and log probs joined, the rest from the newest. A consumer that fell behind sends one
    response per request for what waited, instead of one per token, and nothing waits longer."""
    merged: dict[int, Event] = {}
    for ev in events:
        key = id(ev.request)
        first = merged.get(key)
        if first is None:
            merged[key] = ev
            continue
        merged[key] = Event(
            ev.request,
            [*first.tokens, *ev.tokens],
            [*first.log_probs, *ev.log_probs],
            ev.finished,
            ev.error,
            ev.kv_tokens,
            ev.token_ns or first.token_ns,
        )
    return list(merged.values())


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_new_tokens: int
    on_event: Callable[[Event], None]
    end_id: int | None = None  # None or -1: never stop on an end token
    stop_words: list[list[int]] = dataclasses.field(default_factory=list)
    bad_words: list[list[int]] = dataclasses.field(default_factory=list)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    embedding_bias: Any = None  # None, or one value per vocabulary entry added to the logits
    return_log_probs: bool = False
    stream: bool = True  # False: one event, at the end, with every generated token
    tag: Any = None  # caller's handle (e.g. the Triton response sender)
    # filled by the engine
    output: list[int] = dataclasses.field(default_factory=list)
    output_log_probs: list[float] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    finish_reason: str | None = None
    submitted_at: float = dataclasses.field(default_factory=time.perf_counter)
    scheduled_ns: int = 0  # time.monotonic_ns() when it was admitted into the batch
    first_token_ns: int = 0
    last_token_ns: int = 0
    kv_tokens: int = 0
    _generator: torch.Generator | None = None
    _bias: torch.Tensor | None = None
    _admitted: int = 0  # admission order: the newest row is dropped first when a step fails
    _solo: bool = False  # its prefill inside a decode step failed: prefilled on its own instead
    _pending: list[int] = dataclasses.field(default_factory=list)
    _pending_lp: list[float] = dataclasses.field(default_factory=list)

    def _simple(self) -> bool:
        """Greedy with nothing to apply to the logits: the vectorised argmax decides its token."""
        s = self.sampling
        return (
            s.greedy
            and not s.penalised
            and not self.bad_words
            and self._bias is None
            and (s.min_tokens <= len(self.output) or self.end_id is None or self.end_id < 0)
        )


@dataclasses.dataclass(eq=False)
class _Step:
    """A launched decode step: its rows (as they were at launch), where its argmax lands on the
    host, the event after that copy (CUDA), and the positions it fed; a mixed step also the
    requests it prefilled, the rows they took, and the ended requests whose rows they took."""

    rows: list[Request]
    host: torch.Tensor
    event: Any
    pos: list[int]
    joined: list[Request] = dataclasses.field(default_factory=list)
    places: list[int] = dataclasses.field(default_factory=list)
    replaced: list[tuple[int, Request]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    max_batch_size: int = 64
    max_seq_len: int = 2048
    max_num_tokens: int = 4096
    max_queue_size: int = 1024
    # the slot KV cache's budget, as TensorRT-LLM's KvCacheConfig: tokens if > 0, else this
    # fraction of the GPU memory free after the weights (and the activation reserve) are in place
    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_tokens_in_paged_kv_cache: int = 0


class Engine:
    """Inflight-batching decoder around a ``transformers`` causal LM."""

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        limits: EngineLimits | None = None,
        num_threads: int = 0,
        attn_implementation: str = "sdpa",
        on_fatal: Callable[[str], None] | None = None,
        kv_cache: str = "auto",
        cuda_graphs: bool = True,
        compile_decode: bool = False,
        model: Any = None,
        group: _parallel.RankGroup | None = None,
        fused_layers: bool | None = None,
        async_decode: bool | None = None,
        admission_wait_ms: float = 0.0,
        prefill_graphs: bool | None = None,
        mixed_prefill_tokens: int | None = None,
        flex_decode_batch: int | None = None,
        fused_kv_writes: bool | None = None,
    ) -> None:
        """``kv_cache``: ``auto``, ``slots`` or ``dynamic`` (see the module docstring).
        ``compile_decode``: fuse the slot layout's decode step with ``torch.compile`` (dynamic
        shapes: one compilation for every bucket), compiled at ``warmup``.
        ``fused_layers``: the slot layout runs ``_trtbuild_fused``'s decoder layers (merged
        q/k/v and gate/up matrix multiplies; on CUDA with Triton, the elementwise chains compiled
        into one kernel each). ``None``: on CUDA, for the models it supports; ``True`` asks for it
        anywhere (CPU: eager, for tests) and refuses a model it cannot rewrite.
        ``async_decode``: the slot layout launches the next decode step before handing out this
        one's tokens, feeding it this step's argmax on the device, so that the host's work
        between steps overlaps the GPU's (greedy rows only; see ``_may_chain``). ``None``: on
        CUDA; a rank group never (its followers need each step's tokens on the host).
        ``admission_wait_ms``: while rows decode, requests that could join wait up to this
        long for others to arrive (unless they would fill every free row), so that a burst is
        prefilled together instead of one small prefill per arrival (a prefill of a few short
        prompts costs about as much as one). 0: each joins at the next step.
        ``prefill_graphs``: the slot layout runs small prefills (at most ``PREFILL_GRAPH_TOKENS``
        padded tokens: a few prompts, where launching ~1,400 kernels costs more than computing
        them) as captured CUDA graphs per (requests, width) bucket, right-padded, the padding
        rows writing a scratch slot no row reads. ``None``: with ``cuda_graphs`` on CUDA;
        ``True`` on CPU runs the same bucketed path without graphs (for tests).
        ``mixed_prefill_tokens``: while rows decode, requests whose prompts fit this many padded
        tokens (in buckets of 1, 2, 4 ... requests and widths 64, 128 ...) are prefilled in the
        same forward as the rows' next decode step (needs fused layers; on CUDA each bucket is a
        captured graph). ``None``: ``MIXED_PREFILL_TOKENS`` where ``prefill_graphs`` is on and the
        layers are fused; 0: never.
        ``flex_decode_batch``: decode steps (and the rows of mixed steps) whose batch bucket has
        at least this many rows attend through ``torch.compile``'d flex attention instead of
        SDPA (needs fused layers; compiled per (batch, L) bucket at warm-up; on CPU it runs
        flex attention's eager reference, for tests). ``None``: ``FLEX_DECODE_BATCH`` where the
        fused layers' kernels are compiled (CUDA with Triton) and CUDA graphs capture every
        bucket at warm-up (not with ``compile_decode``); 0: never.
        ``fused_kv_writes``: the fused layers write each token's keys and values into the slot
        cache inside their rotary kernel instead of two writes of their own (one compiled kernel
        where there are three; needs fused layers). ``None``: where the fused layers' kernels
        are compiled (CUDA with Triton; on an H200 a batch-64 step 6.15 -> 5.97 ms,
        docs/perf/h200.md round 6); ``True`` on CPU runs it eagerly, for tests.
        ``model``: an already loaded causal LM to serve instead of loading ``model_dir``.
        ``group``: this rank's tensor-parallel group (``model_dir`` is then this rank's shard):
        rank 0 serves and broadcasts each step, the others run ``follow`` (see
        ``_trtbuild_parallel``). A rank group needs the slot layout, and decodes without CUDA
        graphs or ``torch.compile``; a forward pass that raises ends the group (the
        one-request isolation of a failed forward holds for a single process only)."""
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.limits = limits or EngineLimits()
        if kv_cache not in ("auto", "slots", "dynamic"):
            raise ValueError(f"kv_cache must be auto, slots or dynamic; got {kv_cache!r}")
        if model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=self.dtype, attn_implementation=attn_implementation
            )
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._group = group if group is not None and group.world_size > 1 else None
        if self._group is not None:
            self._group.sum_outputs(self.model)
            cuda_graphs = compile_decode = False
        self.vocab_size = int(self.model.config.vocab_size)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos and self.limits.max_seq_len > max_pos:
            raise ValueError(
                f"max_seq_len {self.limits.max_seq_len} exceeds the model's "
                f"max_position_embeddings {max_pos}"
            )
        self.on_fatal = on_fatal
        self.dead: str | None = None  # why the engine thread died
        self._queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._tasks: list[_Task] = []  # run on the engine thread (warm-up captures)
        self._rows: list[Request] = []  # running batch, one row per request
        self._admitting: list[Request] = []  # taken from the queue, not yet in the batch
        self._admissions = 0
        # dynamic layout
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, kv_len] 1 = real token
        self._next_pos: torch.Tensor | None = None  # [rows] position of the next token
        self._last: torch.Tensor | None = None  # [rows] last sampled token
        # slot layout
        unsupported = _slots_unsupported(self.model, self.limits.max_seq_len)
        if (kv_cache == "slots" or self._group is not None) and unsupported:
            raise ValueError(f"kv_cache=slots cannot serve this model: {unsupported}")
        if self._group is not None and kv_cache == "dynamic":
            raise ValueError("a tensor-parallel rank group needs kv_cache=slots (or auto)")
        self.kv_layout = "slots" if kv_cache != "dynamic" and not unsupported else "dynamic"
        self.slots: _SlotCache | None = None
        self._tok: list[int] = []  # [rows] last sampled token (slot layout)
        self._pos: list[int] = []  # [rows] position of the next token to feed (slot layout)
        self.graphs: dict[tuple[int, ...], Any] = {}  # (batch bucket, L bucket) -> CUDAGraph
        # launched decode steps whose tokens are not handed out yet, oldest first
        self._inflight: collections.deque[_Step] = collections.deque()
        self._flip = 0  # which host buffer the next step's argmax goes to
        self.chained_steps = 0  # decode steps launched fed on the device (async_decode)
        self.synced_launches = 0  # decode steps launched after the steps in flight drained
        # rows carried through a decode step after their request ended (async_decode keeps
        # them until a request takes the row), and of those, the ones carried while a request
        # waited in the queue (it could not ride on the step): where a full batch's throughput
        # goes between one request's last token and the next one's first
        self.ended_row_steps = 0
        self.ended_row_steps_queued = 0
        self.prefills = 0  # prefill forwards (a batched one counts once)
        self.prefilled = 0  # requests they prefilled
        self.admission_wait_s = max(0.0, float(admission_wait_ms)) / 1e3
        self._forward: Callable[..., torch.Tensor] = self._decode_forward  # or its compiled self
        self.compile_seconds = 0.0
        self._graph_pool: Any = None
        self._capture_stream: Any = None
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if prefill_graphs is None:
            prefill_graphs = self.cuda_graphs
        self.prefill_graphs = (
            bool(prefill_graphs) and self._group is None and self.kv_layout == "slots"
        )
        self.prefill_buckets: list[tuple[int, int]] = []
        self._prefill_captured: dict[tuple[int, ...], Any] = {}  # (requests, width) -> CUDAGraph
        mixed_asked = mixed_prefill_tokens is not None and mixed_prefill_tokens > 0
        if mixed_prefill_tokens is None:
            mixed_prefill_tokens = MIXED_PREFILL_TOKENS if self.prefill_graphs else 0
        if self._group is not None or self.kv_layout != "slots":
            mixed_prefill_tokens = 0
        self.mixed_prefill_tokens = max(0, int(mixed_prefill_tokens))
        self.mixed_buckets: list[tuple[int, int]] = []
        # (batch, L, requests, width) -> CUDAGraph
        self._mixed_captured: dict[tuple[int, ...], Any] = {}
        self.mixed_steps = 0  # decode steps that prefilled requests too
        self.fused_layers = False
        self.flex_decode_batch = 0  # see _setup_flex
        self.fused_kv_writes = False  # see _fuse_layers
        if async_decode is None:
            async_decode = self.device.type == "cuda"
        self.async_decode = bool(async_decode) and self._group is None
        if self.kv_layout == "slots":
            self._setup_slots(spare=compile_decode)
            self._fuse_layers(fused_layers, compile=not compile_decode, kv_writes=fused_kv_writes)
            if not self.fused_layers:
                if mixed_asked:
                    raise ValueError("mixed_prefill_tokens needs fused_layers (set it true)")
                self.mixed_prefill_tokens, self.mixed_buckets = 0, []
            self._setup_flex(flex_decode_batch, graphs=self.cuda_graphs and not compile_decode)
            if compile_decode:
                self._forward = _dynamic_rows(torch.compile(self._decode_forward))
        elif getattr(self.model.config, "_attn_implementation", None) == SLOT_ATTENTION:
            self.model.set_attn_implementation(attn_implementation)  # a model a slot engine had
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="trtbuild-engine", daemon=True)
        if self._group is not None:
            self._group.barrier()  # every rank has loaded its shard and sized its cache

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def validate(self, req: Request) -> None:
        """Raise ``RequestError`` for a request that cannot run; called by ``submit``.

        The Triton model validates tensors with ``requests.parse_core`` first; this is the same
        check for the engine's own callers (and a safety net), with the same messages.
        """
        lim = self.limits
        n = len(req.prompt)
        try:
            if n == 0:
                raise RequestError("the prompt is empty (input_lengths must be >= 1)")
            _requests.check_output_len(n, req.max_new_tokens, lim.max_seq_len, "request_output_len")
            if n > lim.max_num_tokens:
                raise RequestError(
                    f"prompt ({n} tokens) exceeds max_num_tokens {lim.max_num_tokens}"
                )
            if min(req.prompt) < 0 or max(req.prompt) >= self.vocab_size:
                bad = next(t for t in req.prompt if t < 0 or t >= self.vocab_size)
                raise RequestError(
                    f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            s = req.sampling
            _requests.check_temperature(s.temperature)
            _requests.check_top_k(s.top_k, self.vocab_size)
            _requests.check_top_p(s.top_p)
            _requests.check_repetition_penalty(s.repetition_penalty)
            _requests.finite("presence_penalty", s.presence_penalty)
            _requests.finite("frequency_penalty", s.frequency_penalty)
            _requests.check_min_tokens("min_tokens", s.min_tokens, lim.max_seq_len)
            if req.end_id is not None and req.end_id >= 0:
                _requests.check_special_id("end_id", req.end_id, self.vocab_size)
            for name, words in (("stop_words", req.stop_words), ("bad_words", req.bad_words)):
                for word in words:
                    if word and (min(word) < 0 or max(word) >= self.vocab_size):
                        raise RequestError(
                            f"{name} holds a token id outside the vocabulary "
                            f"(0..{self.vocab_size - 1})"
                        )
            if req.embedding_bias is not None:
                bias = _requests.check_embedding_bias(
                    torch.as_tensor(req.embedding_bias).float().cpu().numpy(), (self.vocab_size,)
                )
                req._bias = (
                    None
                    if bias is None
                    else torch.as_tensor(bias, dtype=torch.float32, device=self.device)
                )
        except RequestError:
            raise
        except _requests.InvalidInput as exc:
            raise RequestError(str(exc)) from exc

    def submit(self, req: Request) -> None:
        self.submit_many([req])

    def submit_many(self, reqs: list[Request]) -> None:
        """Validate and enqueue ``reqs`` together: all of them are queued, or none."""
        if self.dead is not None:
            raise EngineDead(f"the portable runtime's engine thread died ({self.dead})")
        for req in reqs:
            self.validate(req)
            if req.sampling.seed is not None:
                req._generator = torch.Generator(device=self.device).manual_seed(req.sampling.seed)
        lim = self.limits
        with self._cv:
            if self.dead is not None:
                raise EngineDead(f"the portable runtime's engine thread died ({self.dead})")
            free = max(0, lim.max_batch_size - len(self._rows) - len(self._admitting))
            beyond = len(self._queue) + len(reqs) - free
            if beyond > lim.max_queue_size:
                raise QueueFull(
                    f"the portable runtime is at capacity: {max(len(self._queue) - free, 0)} "
                    f"requests already wait beyond the {lim.max_batch_size} batch slots "
                    f"(max_queue_size {lim.max_queue_size}); retry later {_requests.RETRYABLE}"
                )
            self._queue.extend(reqs)
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Stop ``req`` at the next step and free its slot (its last event says ``cancelled``)."""
        req.cancelled = True
        with self._cv:
            self._cv.notify()

    @property
    def active(self) -> int:
        """Running requests (rows that ended but stay while steps chain are not counted)."""
        return sum(r.finish_reason is None for r in list(self._rows))  # a snapshot: any thread

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def generate(self, prompt: list[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
        """Blocking convenience: submit one request and wait for all its tokens."""
        done = threading.Event()
        out: list[int] = []
        errors: list[str] = []

        def on_event(ev: Event) -> None:
            out.extend(ev.tokens)
            if ev.error:
                errors.append(ev.error)
            if ev.finished:
                done.set()

        self.submit(
            Request(prompt=prompt, max_new_tokens=max_new_tokens, on_event=on_event, **kwargs)
        )
        done.wait()
        if errors:
            raise RuntimeError(errors[0])
        return out

    def warmup(self, prompt_len: int = 8, new_tokens: int = 4) -> None:
        """Before serving: capture every decode bucket's CUDA graph (slot layout on CUDA), then
        run a few requests through every code path (prefill, joining, decode)."""
        if self.cuda_graphs and self.slots is not None:
            self._on_engine_thread(self._capture_all)
        prompts = [[(i * 7 + j) % self.vocab_size for j in range(prompt_len + i)] for i in range(2)]
        threads = [
            threading.Thread(target=self.generate, args=(p, new_tokens), kwargs={"end_id": -1})
            for p in prompts
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _on_engine_thread(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the engine thread between iterations and wait for it (re-raising)."""
        task = _Task(fn)
        with self._cv:
            if self.dead is not None:
                raise EngineDead(f"the portable runtime's engine thread died ({self.dead})")
            running = self._thread.is_alive() and not self._stop
            if running:
                self._tasks.append(task)
                self._cv.notify()
        if not running:
            with torch.inference_mode():
                task.run()  # not started (or stopped): nothing else touches the model
        task.wait()

    # -- engine thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._queue and not self._rows and not self._tasks:
                        if not self._cv.wait(self._idle_wait) and self._group is not None:
                            break  # idle for a heartbeat's time: tell the followers
                    if self._stop:
                        break
                    tasks = []
                    if not self._inflight:  # rows join and tasks run between steps only
                        tasks, self._tasks = self._tasks, []
                        self._admitting = self._admit_locked()
                if self._group is not None and not (tasks or self._admitting or self._rows):
                    self._group.send(_parallel.OP_NOOP, [])
                    continue
                with torch.inference_mode():
                    for task in tasks:
                        task.run()
                    if self.slots is not None:
                        self._prefill_slots(list(self._admitting))
                    else:
                        for req in list(self._admitting):
                            self._prefill(req)
                            self._admitting.remove(req)
                    self._admitting = []
                    self._drop_finished()
                    if self._rows:
                        if self.slots is not None:
                            self._decode_step_slots()
                        else:
                            self._decode_step()
                        self._drop_finished()
        except BaseException as exc:  # noqa: BLE001 - the thread dies: say so to every request
            self._die(f"{type(exc).__name__}: {exc}")
            return
        self._fail_everything("the server is shutting down")
        if self._group is not None:
            try:
                self._group.send(_parallel.OP_STOP, [])
            except Exception:  # noqa: BLE001 - a follower already gone stops anyway
                log.warning("trtbuild portable runtime: the followers did not take the stop")

    @property
    def _idle_wait(self) -> float | None:
        return _parallel.HEARTBEAT_S if self._group is not None else None

    def follow(self) -> None:
        """Ranks above 0: run every step rank 0 broadcasts on this shard until it says stop.
        Raises when a collective fails or times out (rank 0 gone or stuck)."""
        assert self._group is not None and not self._group.leader and self.slots is not None
        with torch.inference_mode():
            while True:
                op, args = self._group.recv()
                if op == _parallel.OP_STOP:
                    return
                if op == _parallel.OP_PREFILL:
                    base, width, k = args[:3]
                    lengths, prompts, at = args[3 : 3 + k], [], 3 + k
                    for n in lengths:
                        prompts.append(args[at : at + n])
                        at += n
                    self._prefill_hidden(base, width, prompts)
                elif op == _parallel.OP_DECODE:
                    n, batch, length = args[:3]
                    self._load_step(n, args[3 : 3 + batch], args[3 + batch : 3 + 2 * batch])
                    self.slots.decoding = True
                    try:
                        self._decode_hidden(
                            self._ids[:batch], self._positions[:batch], self._arange[:length]
                        )
                    finally:
                        self.slots.decoding = False
                elif op == _parallel.OP_MOVE:
                    self.slots.move(args[0], args[1])

    def _die(self, reason: str) -> None:
        self.dead = reason
        log.error("trtbuild portable runtime: the engine thread died: %s", reason)
        self._fail_everything(
            f"the portable runtime's engine thread died ({reason}); the model restarts"
        )
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:  # noqa: BLE001 - nothing else to tell
                log.exception("trtbuild portable runtime: on_fatal failed")

    def _fail_everything(self, message: str) -> None:
        with self._cv:
            victims = [*self._rows, *self._admitting, *self._queue]
            self._queue.clear()
        for r in victims:
            if r.finish_reason is None:
                self._finish(r, FINISH_ERROR, message)
        self._rows, self._admitting = [], []
        self._cache, self._mask, self._next_pos, self._last = None, None, None, None
        self._tok, self._pos = [], []
        self._inflight.clear()
        with self._cv:
            tasks, self._tasks = self._tasks, []
        for task in tasks:  # a warm-up waiting on this thread: let it go
            task.abandon(message)

    def _admission_due(self) -> bool:
        """Whether waiting requests join now: when nothing decodes, when they would fill every
        free row, or when the oldest has waited ``admission_wait_ms``."""
        if not self._queue or not self._rows or self.admission_wait_s <= 0:
            return True
        if len(self._queue) >= self.limits.max_batch_size - len(self._live()):
            return True
        return time.perf_counter() - self._queue[0].submitted_at >= self.admission_wait_s

    def _admit_locked(self, riders: bool = False) -> list[Request]:
        """Take waiting requests into the batch. ``riders``: while steps chain, only requests
        that can ride on the next step (``_can_ride``), into ended rows or free ones."""
        admitted: list[Request] = []
        if not self._admission_due():
            return admitted
        budget = self.limits.max_num_tokens
        free = self.limits.max_batch_size - len(self._live() if riders else self._rows)
        mixing = bool(self.mixed_buckets and self._rows)
        now = time.monotonic_ns()
        while self._queue and len(admitted) < free:
            req = self._queue[0]
            if req.cancelled:
                self._queue.popleft()
                self._finish(req, FINISH_CANCELLED)
                continue
            if riders and not self._can_ride(req):
                break
            if admitted and len(req.prompt) > budget:
                break  # prefill budget for this iteration is spent; decode first
            if (
                mixing
                and admitted
                and self._mixed_bucket(admitted) is not None
                and self._mixed_bucket([*admitted, req]) is None
            ):
                break  # these ride on the next decode step; the rest on the ones after
            self._queue.popleft()
            budget -= len(req.prompt)
            self._admissions += 1
            req._admitted = self._admissions
            req.scheduled_ns = now
            admitted.append(req)
        return admitted

    def _prefill(self, req: Request) -> None:
        """Prefill ``req`` alone and merge it into the batch; any failure fails ``req`` only."""
        if req.cancelled:
            self._finish(req, FINISH_CANCELLED)
            return
        try:
            ids = torch.tensor([req.prompt], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            logits = out.logits[:, -1, :].float()
            tokens, lps, errors = self._sample(logits, [req])
            if errors[0] is not None:
                raise _RowFailure(errors[0])
            self._merge(req, out.past_key_values, len(req.prompt))
        except _RowFailure as exc:
            self._finish(req, FINISH_ERROR, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - this request's prefill failed, nothing else
            self._finish(req, FINISH_ERROR, f"prefill failed: {type(exc).__name__}: {exc}")
            return
        req.kv_tokens = len(req.prompt)
        self._emit(len(self._rows) - 1, req, tokens[0], lps[0], time.monotonic_ns())

    def _decode_step(self) -> None:
        while self._rows:
            assert self._mask is not None and self._next_pos is not None
            assert self._last is not None
            kv_len = self._mask.shape[1]
            try:
                mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
                out = self.model(
                    input_ids=self._last.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=self._next_pos.unsqueeze(1),
                    past_key_values=self._cache,
                    use_cache=True,
                )
                logits = out.logits[:, -1, :].float()
                tokens, lps, errors = self._sample(logits, self._rows)
            except Exception as exc:  # noqa: BLE001 - retry the step without the newest row
                self._cut_cache(kv_len)
                self._drop_newest(exc)
                continue
            self._cache = out.past_key_values
            self._mask = mask
            self._next_pos = self._next_pos + 1
            self.steps += 1
            now = time.monotonic_ns()
            for i, req in enumerate(list(self._rows)):
                error = errors[i]
                if error is not None:
                    self._finish(req, FINISH_ERROR, error)
                    continue
                req.kv_tokens += 1
                self._emit(i, req, tokens[i], lps[i], now)
            return

    def _cut_cache(self, kv_len: int) -> None:
        """Undo a decode step's appends: every layer back to ``kv_len`` positions."""
        if self._cache is None:
            return
        for layer in _cache_layers(self._cache):
            if layer.keys is not None and layer.keys.shape[2] > kv_len:
                layer.keys = layer.keys[:, :, :kv_len, :]
            if layer.values is not None and layer.values.shape[2] > kv_len:
                layer.values = layer.values[:, :, :kv_len, :]

    def _emit(self, row: int, req: Request, token: int, lp: float, now_ns: int) -> None:
        try:
            self._emit_and_check(row, req, token, lp, now_ns)
        except Exception as exc:  # noqa: BLE001 - e.g. its on_event raised: fail it, alone
            self._finish(req, FINISH_ERROR, f"{type(exc).__name__}: {exc}")

    def _emit_and_check(self, row: int, req: Request, token: int, lp: float, now_ns: int) -> None:
        if self.slots is not None:
            self._tok[row] = token
        else:
            assert self._last is not None
            self._last[row] = token
        if req.first_token_ns == 0:
            req.first_token_ns = now_ns
        req.last_token_ns = now_ns
        if req.end_id is not None and req.end_id >= 0 and token == req.end_id:
            self._finish(req, FINISH_STOP)  # like TensorRT-LLM, the end token is not returned
            return
        req.output.append(token)
        req._pending.append(token)
        if req.return_log_probs:
            req.output_log_probs.append(lp)
            req._pending_lp.append(lp)
        if req.cancelled:
            self._finish(req, FINISH_CANCELLED)
        elif _ends_with_any(req.output, req.stop_words):
            self._finish(req, FINISH_STOP)
        elif len(req.output) >= req.max_new_tokens:
            self._finish(req, FINISH_LENGTH)
        elif req.stream:
            self._flush(req, None)

    def _flush(self, req: Request, finished: str | None, error: str | None = None) -> None:
        tokens = req._pending if req.stream else (list(req.output) if finished else [])
        lps = req._pending_lp if req.stream else (list(req.output_log_probs) if finished else [])
        req._pending, req._pending_lp = [], []
        req.on_event(Event(req, tokens, lps, finished, error, req.kv_tokens, req.last_token_ns))

    def _finish(self, req: Request, reason: str, error: str | None = None) -> None:
        if req.finish_reason is not None:
            return
        req.cancelled = req.cancelled or reason == FINISH_CANCELLED
        req.finish_reason = reason
        try:
            self._flush(req, reason, error)
        except Exception:  # noqa: BLE001 - its consumer is broken; the request is over anyway
            log.exception("trtbuild portable runtime: a request's final event failed")

    def _drop_newest(self, exc: Exception, joining: list[Request] | None = None) -> None:
        """A decode step failed: end the most recently admitted request, running or
        ``joining`` (prefilled by a step that was in flight), so the step can be retried; the
        other joining requests go back to the head of the queue."""
        joining = joining or []
        candidates = [r for r in self._rows if r.finish_reason is None] + joining
        if not candidates:  # every row had ended: nothing to retry
            self._drop_finished()
            return
        victim = max(candidates, key=lambda r: r._admitted)
        rest = [r for r in joining if r is not victim]
        if rest:
            with self._cv:
                self._queue.extendleft(reversed(rest))
        self._finish(
            victim,
            FINISH_ERROR,
            f"a decode step failed ({type(exc).__name__}: {exc}); this request, the most "
            "recently admitted, was dropped and the step retried without it",
        )
        self._drop_finished()

    def _drop_finished(self) -> None:
        if self._inflight:
            return  # a launched step still holds these rows' slots; the next drain drops them
        for r in self._rows:
            if r.cancelled and r.finish_reason is None:
                self._finish(r, FINISH_CANCELLED)
        keep = [i for i, r in enumerate(self._rows) if r.finish_reason is None]
        if len(keep) == len(self._rows):
            return
        if self.slots is not None:
            self._compact_slots()
            return
        if not keep:
            self._rows, self._cache, self._mask, self._next_pos, self._last = (
                [],
                None,
                None,
                None,
                None,
            )
            return
        idx = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        assert self._mask is not None and self._next_pos is not None and self._last is not None
        self._mask = self._mask.index_select(0, idx)
        self._next_pos = self._next_pos.index_select(0, idx)
        self._last = self._last.index_select(0, idx)
        layers = _cache_layers(self._cache)
        for layer in layers:
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        # trim KV columns that are padding in every remaining row
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            self._mask = self._mask[:, start:]
            for layer in layers:
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]

    def _merge(self, req: Request, cache: Any, n: int) -> None:
        """Append ``req``'s prefilled KV (length ``n``) to the running batch, left-padding.

        Either the whole merge happens or, if a layer fails (e.g. out of memory), the layers
        already merged are cut back, so the running batch is exactly as before.
        """
        new_layers = _cache_layers(cache)
        token_slot = torch.zeros(1, dtype=torch.long, device=self.device)
        pos = torch.tensor([n], dtype=torch.long, device=self.device)
        if not self._rows:
            self._cache = cache
            self._mask = torch.ones((1, n), dtype=torch.long, device=self.device)
            self._next_pos, self._last = pos, token_slot
            self._rows = [req]
            return
        assert self._mask is not None and self._next_pos is not None and self._last is not None
        rows, cur = len(self._rows), self._mask.shape[1]
        width = max(cur, n)
        new_mask = torch.zeros((1, width), dtype=self._mask.dtype, device=self.device)
        new_mask[:, width - n :] = 1
        mask = torch.cat([_left_pad(self._mask, width, dim=1), new_mask], dim=0)
        next_pos = torch.cat([self._next_pos, pos])
        last = torch.cat([self._last, token_slot])
        old_layers = _cache_layers(self._cache)
        merged = 0
        try:
            for old, new in zip(old_layers, new_layers, strict=True):
                keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
                values = torch.cat(
                    [_left_pad(old.values, width), _left_pad(new.values, width)], dim=0
                )
                old.keys, old.values = keys, values
                merged += 1
        except BaseException:
            for layer in old_layers[:merged]:  # drop the new row and the padding it brought
                layer.keys = layer.keys[:rows, :, width - cur :, :]
                layer.values = layer.values[:rows, :, width - cur :, :]
            raise
        self._mask, self._next_pos, self._last = mask, next_pos, last
        self._rows.append(req)

    # -- slot layout --------------------------------------------------------------------------------
    def _setup_slots(self, spare: bool = False) -> None:
        """Size and allocate the slot KV cache from the budget; register the attention.
        ``spare``: one slot more than rows ever use, so that a decode step's slots are always a
        proper slice of the cache (torch.compile would otherwise compile the full batch again)."""
        cfg = self.model.config
        lim = self.limits
        layers = int(cfg.num_hidden_layers)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        elem = torch.empty((), dtype=self.dtype).element_size()
        self.kv_bytes_per_token = layers * 2 * kv_heads * head_dim * elem
        slots = self._kv_slots()
        if self._group is not None:
            slots = self._group.agree_min(slots)  # every rank's cache holds the same slots
        if slots < 1:
            raise ValueError(
                f"the KV-cache budget holds no sequence of max_seq_len {lim.max_seq_len} "
                f"({self.kv_bytes_per_token * lim.max_seq_len / 2**20:.0f} MiB each); lower "
                "max_seq_len, or raise kv_cache_free_gpu_mem_fraction / "
                "max_tokens_in_paged_kv_cache"
            )
        if slots < lim.max_batch_size:
            log.warning(
                "trtbuild portable runtime: the KV-cache budget holds %d sequences of %d tokens; "
                "max_batch_size %d lowered to %d",
                slots, lim.max_seq_len, lim.max_batch_size, slots,
            )  # fmt: skip
            self.limits = dataclasses.replace(lim, max_batch_size=slots)
        # the scratch slot (last): what the padding rows of a bucketed prefill write
        scratch = int(self.prefill_graphs or self.mixed_prefill_tokens > 0)
        self.slots = _SlotCache(
            layers,
            slots + int(spare) + scratch,
            lim.max_seq_len,
            kv_heads,
            head_dim,
            self.dtype,
            self.device,
        )
        self.kv_cache_bytes = self.slots.kv.numel() * elem
        self._decoder = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        _register_attention()
        self.model.set_attn_implementation(SLOT_ATTENTION)
        if self.device.type == "cuda":
            # cuDNN attention plans each new shape (~35 ms on an H200, measured) and is not needed:
            # prefills take flash attention, decode steps the memory-efficient kernel
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.batch_buckets = _buckets(slots, 1)
        self.length_buckets = _buckets(lim.max_seq_len, min(64, lim.max_seq_len))
        # static decode inputs and outputs (their addresses are baked into the CUDA graphs)
        dev = self.device
        # each row's next token and its position; one spare element, so that a step's inputs
        # are always a proper slice (torch.compile would otherwise compile the full one again)
        self._ids = torch.zeros(slots + 1, dtype=torch.long, device=dev)
        self._positions = torch.zeros(slots + 1, dtype=torch.long, device=dev)
        self._slot_base = torch.arange(slots + 1, device=dev) * lim.max_seq_len
        self._arange = torch.arange(lim.max_seq_len, device=dev)
        self._out_logits = torch.zeros((slots, self.vocab_size), dtype=torch.float32, device=dev)
        # each row's argmax and whether its logits were finite; one more column, where a mixed
        # step's padding prompts put theirs
        self._out_packed = torch.zeros((2, slots + 1), dtype=torch.long, device=dev)
        if self.prefill_graphs:
            self.prefill_buckets = _prefill_buckets(
                slots, lim.max_seq_len, min(PREFILL_GRAPH_TOKENS, lim.max_num_tokens)
            )
        if self.mixed_prefill_tokens:
            self.mixed_buckets = _prefill_buckets(
                slots, lim.max_seq_len, min(self.mixed_prefill_tokens, lim.max_num_tokens)
            )
        most = max((k * w for k, w in self.prefill_buckets), default=0)
        rows = max((k for k, _ in self.prefill_buckets + self.mixed_buckets), default=0)
        self._pf_ids = torch.zeros(most, dtype=torch.long, device=dev)
        self._pf_index = torch.zeros(most, dtype=torch.long, device=dev)
        self._pf_last = torch.zeros(rows, dtype=torch.long, device=dev)
        self._pf_rows = torch.arange(rows, device=dev)
        self._pf_logits = torch.zeros((rows, self.vocab_size), dtype=torch.float32, device=dev)
        # a mixed step's ids, positions, flat slot positions and kept tokens
        mixed = max((k * w for k, w in self.mixed_buckets), default=0)
        self._mx = torch.zeros((5, slots + mixed if mixed else 0), dtype=torch.long, device=dev)
        pinned = dev.type == "cuda"
        # two: with async_decode one step's argmax is copied while the last one's is read
        self._host_packed = [
            torch.zeros((2, slots + 1), dtype=torch.long, pin_memory=pinned) for _ in range(2)
        ]
        # a mixed step's inputs (``_load_mixed``): one buffer per step that may be in flight
        self._mx_host = [
            torch.zeros(self._mx.shape, dtype=torch.long, pin_memory=pinned) for _ in range(2)
        ]
        self._mx_flip = 0

    def _fuse_layers(self, wanted: bool | None, compile: bool, kv_writes: bool | None) -> None:
        assert self.slots is not None
        reason = _fused.unsupported(self.model)
        if wanted is None:
            wanted = self.device.type == "cuda" and reason is None
        if not wanted:
            if kv_writes:
                raise ValueError("fused_kv_writes needs fused_layers (set it true)")
            return
        if reason is not None:
            raise ValueError(f"fused_layers cannot serve this model: {reason}")
        compile = compile and self.device.type == "cuda" and _triton_available()
        if kv_writes is None:
            kv_writes = compile
        _fused.fuse(self.model, _slot_attention, compile=compile, kv_writes=kv_writes)
        self.slots.fused_layers = self.fused_layers = True
        self.fused_kv_writes = kv_writes

    def _setup_flex(self, wanted: int | None, graphs: bool) -> None:
        """Resolve ``flex_decode_batch`` (see ``__init__``) and hand the slot cache its flex
        attention. Each (batch, L) bucket it serves is one more compilation of it (two where a
        mixed step's rows lay out their queries' strides differently), so the process's
        recompile limit grows by that many: torch.compile falls back to eager past 8 shapes of
        one function, and every engine of a process compiles the same one. By default only
        with CUDA graphs (``graphs``), whose capture at warm-up compiles every bucket: without
        them the first request of each new batch and length would wait for its compilation."""
        assert self.slots is not None
        if wanted is not None and wanted > 0 and not self.fused_layers:
            raise ValueError("flex_decode_batch needs fused_layers (set it true)")
        compiled = self.fused_layers and self.device.type == "cuda" and _triton_available()
        if wanted is None:
            wanted = FLEX_DECODE_BATCH if compiled and graphs and self._group is None else 0
        self.flex_decode_batch = max(0, int(wanted))
        if not self.flex_decode_batch:
            return
        if compiled:
            shapes = sum(b >= self.flex_decode_batch for b in self.batch_buckets)
            _fused.raise_recompile_limit(2 * shapes * len(self.length_buckets))
        self.slots.flex = _flex_decoder(compiled)
        self.slots.flex_from = self.flex_decode_batch

    def _kv_slots(self) -> int:
        """How many ``max_seq_len`` sequences the KV budget holds (at most ``max_batch_size``)."""
        lim = self.limits
        if lim.max_tokens_in_paged_kv_cache > 0:
            tokens = lim.max_tokens_in_paged_kv_cache
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = max(0, free - self.activation_reserve_bytes())
            tokens = int(budget * lim.kv_cache_free_gpu_mem_fraction) // self.kv_bytes_per_token
        else:
            return lim.max_batch_size
        return min(lim.max_batch_size, tokens // lim.max_seq_len)

    def activation_reserve_bytes(self) -> int:
        """GPU memory kept out of the KV budget: a ``max_num_tokens`` prefill's activations
        (as ``trtbuild plan`` counts them), the logits buffers, and cuBLAS/CUDA-graph slack."""
        cfg, lim = self.model.config, self.limits
        elem = torch.empty((), dtype=self.dtype).element_size()
        mlp = int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
        activations = lim.max_num_tokens * elem * (4 * cfg.hidden_size + 3 * mlp)
        logits = 3 * lim.max_batch_size * self.vocab_size * 4
        return activations + logits + ACTIVATION_SLACK_BYTES

    def _prefill_slots(self, reqs: list[Request]) -> None:
        """Prefill the admitted requests: launched inside the next decode step where they fit a
        mixed bucket (``_decode_step_slots`` hands it out), else in groups of at most
        ``max_num_tokens`` padded tokens."""
        live = []
        for req in reqs:
            if req.cancelled:
                self._finish(req, FINISH_CANCELLED)
            else:
                live.append(req)
        live.sort(key=lambda r: len(r.prompt))
        if live and self._rows and self._mixed_bucket(live) is not None:
            try:
                self._inflight.append(self._launch(chained=False, group=live))
                return
            except Exception:  # noqa: BLE001 - prefilled on their own, with their own isolation
                _warn_mixed_failed()
        group: list[Request] = []
        for req in live:
            if (
                group
                and (len(group) + 1) * self._width(len(req.prompt)) > self.limits.max_num_tokens
            ):
                self._prefill_group(group)
                group = []
            group.append(req)
        if group:
            self._prefill_group(group)

    def _mixed_bucket(self, reqs: list[Request]) -> tuple[int, int] | None:
        """The smallest mixed (requests, width) bucket that holds ``reqs``' prompts, if any."""
        if any(r._solo for r in reqs):
            return None
        width = self._width(max(len(r.prompt) for r in reqs))
        return next(((k, w) for k, w in self.mixed_buckets if k >= len(reqs) and w >= width), None)

    def _width(self, n: int) -> int:
        return min(self.limits.max_seq_len, -(-n // PREFILL_ALIGN) * PREFILL_ALIGN)

    def _prefill_group(self, group: list[Request]) -> None:
        """One batched prefill; if it raises, each request is prefilled alone (only the culprit
        fails). Its rows join the batch in the next free slots."""
        try:
            logits = self._prefill_forward(group)
        except Exception as exc:  # noqa: BLE001 - find the culprit, or fail the lone request
            if self._group is not None:
                raise  # the followers ran (part of) it: the ranks no longer agree
            if len(group) > 1:
                for req in group:
                    self._prefill_group([req])
                return
            self._finish(group[0], FINISH_ERROR, f"prefill failed: {type(exc).__name__}: {exc}")
            return
        tokens, lps, errors = self._sample(logits, group)
        self._join(group, tokens, lps, errors, time.monotonic_ns())

    def _join(
        self,
        group: list[Request],
        tokens: list[int],
        lps: list[float],
        errors: list[str | None],
        now: int,
    ) -> None:
        """``group``, prefilled into slots ``_prefill_slot(i)``, joins the running rows with its
        first tokens (a request whose sampling failed ends there)."""
        for i, req in enumerate(group):
            if errors[i] is not None:
                self._finish(req, FINISH_ERROR, errors[i])
                continue
            row = len(self._rows)
            if self._prefill_slot(i) != row:  # a request before it in the group failed
                self._move_slot(self._prefill_slot(i), row)
            self._rows.append(req)
            self._tok.append(tokens[i])
            self._pos.append(len(req.prompt))
            req.kv_tokens = len(req.prompt)
            self._emit(row, req, tokens[i], lps[i], now)

    def _prefill_slot(self, i: int) -> int:
        return self._prefill_base + i

    def _prefill_forward(self, group: list[Request]) -> torch.Tensor:
        """Write ``group``'s prompts' KV into the free slots after the running rows; return the
        logits after each prompt's last token, ``[len(group), vocab]`` float32."""
        k, width = len(group), self._width(max(len(r.prompt) for r in group))
        base = self._prefill_base = len(self._rows)
        bucket = next(((b, w) for b, w in self.prefill_buckets if b >= k and w >= width), None)
        if bucket is not None:
            logits = self._prefill_bucketed(group, base, *bucket)
        else:
            logits = self._prefill_unbucketed(group, base, width)
        self.prefills, self.prefilled = self.prefills + 1, self.prefilled + k
        return logits

    def _prefill_unbucketed(self, group: list[Request], base: int, width: int) -> torch.Tensor:
        """``_prefill_forward`` eagerly, at ``group``'s own width (broadcast to a rank group)."""
        k = len(group)
        prompts = [r.prompt for r in group]
        if self._group is not None:
            lengths = [len(p) for p in prompts]
            self._group.send(
                _parallel.OP_PREFILL, [base, width, k, *lengths, *(t for p in prompts for t in p)]
            )
        hidden = self._prefill_hidden(base, width, prompts)
        last = torch.tensor([len(r.prompt) - 1 for r in group], device=self.device)
        picked = hidden[torch.arange(k, device=self.device), last]
        return self._lm_head(picked).float()

    def _prefill_bucketed(
        self, group: list[Request], base: int, rows: int, width: int
    ) -> torch.Tensor:
        """``_prefill_forward`` for a small group, through the (``rows``, ``width``) bucket's
        graph: the prompts right-padded to ``width``, ``rows - len(group)`` padding rows that
        write only the scratch slot."""
        assert self.slots is not None
        k, seq = len(group), self.slots.seq
        scratch = self.slots.num_slots - 1
        ids = torch.zeros((rows, width), dtype=torch.long)
        slot_of = [base + i for i in range(k)] + [scratch] * (rows - k)
        for i, req in enumerate(group):
            self.slots.claim(base + i, width)
            ids[i, : len(req.prompt)] = torch.tensor(req.prompt, dtype=torch.long)
        index = torch.tensor(slot_of, dtype=torch.long)[:, None] * seq + torch.arange(width)
        last = [len(r.prompt) - 1 for r in group] + [0] * (rows - k)
        self._load_prefill(ids, index, last)
        _replay_or_run(self._prefill_captured, (rows, width), self._prefill_body)
        return self._pf_logits[:k]

    def _load_prefill(self, ids: torch.Tensor, index: torch.Tensor, last: list[int]) -> None:
        n = ids.numel()
        self._pf_ids[:n].copy_(ids.reshape(-1))
        self._pf_index[:n].copy_(index.reshape(-1))
        self._pf_last[: len(last)].copy_(torch.tensor(last, dtype=torch.long))

    def _prefill_body(self, rows: int, width: int) -> None:
        """A bucketed prefill as its CUDA graph captures it: inputs from ``_pf_ids``,
        ``_pf_index`` (each token's flat slot position) and ``_pf_last``; the logits after each
        row's last prompt token into ``_pf_logits``."""
        assert self.slots is not None
        n = rows * width
        positions = self._arange[:width].expand(rows, width)
        self.slots.index = self._pf_index[:n]
        hidden = self._slot_decoder(self._pf_ids[:n].view(rows, width), positions, None)
        picked = hidden[self._pf_rows[:rows], self._pf_last[:rows]]
        self._pf_logits[:rows].copy_(self._lm_head(picked).float())

    def _prefill_hidden(self, base: int, width: int, prompts: list[list[int]]) -> torch.Tensor:
        """The decoder over ``prompts`` right-padded to ``width``, their KV written into slots
        ``base..``: the last hidden states ``[len(prompts), width, hidden]``."""
        assert self.slots is not None
        k = len(prompts)
        for i in range(k):
            self.slots.claim(base + i, width)
        ids = torch.zeros((k, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(k, width)
        self.slots.index = (self._slot_base[base : base + k, None] + positions).reshape(-1)
        hidden: torch.Tensor = self._slot_decoder(ids, positions, None)
        return hidden

    def _decode_step_slots(self) -> None:
        """Hand out one decode step's tokens (with ``async_decode``, launching the next step
        first, with the waiting requests that can ride on it); a step that raises is retried
        without the newest row."""
        assert self.slots is not None
        while self._rows:
            try:
                if not self._inflight:
                    self._inflight.append(self._launch(chained=False))
                if self._may_chain():
                    self._chain()
                step = self._inflight[0]
                top, finite = self._collect(step)
                n = len(step.rows)
                logits = self._out_logits[:n]
                tokens, lps, errors = self._sample(logits, step.rows, (top[:n], finite[:n]))
                if step.joined:
                    picked = ([top[p] for p in step.places], [finite[p] for p in step.places])
                    first = self._sample(self._pf_logits[: len(step.joined)], step.joined, picked)
            except Exception as exc:  # noqa: BLE001 - retry the step without the newest row
                if self._group is not None:
                    raise  # the followers ran (part of) it: the ranks no longer agree
                self._drop_newest(exc, self._rewind())
                continue
            self._inflight.popleft()
            self.steps += 1
            self._hand_out(step.rows, tokens, lps, errors)
            if step.joined:
                self._welcome(step.places, step.joined, *first)
            if not self._inflight or self._may_chain():
                return
            # a row was cancelled or wants something async_decode cannot give, every row
            # ended, or a request or task waits that cannot ride on a step: hand out the step
            # in flight too, so rows leave and join between steps

    def _hand_out(
        self, rows: list[Request], tokens: list[int], lps: list[float], errors: list[str | None]
    ) -> None:
        """A decode step's token for each of ``rows`` (row ``i`` is slot ``i``)."""
        now = time.monotonic_ns()
        for i, req in enumerate(rows):
            if req.finish_reason is not None:
                continue  # it ended at the step before, after this one was launched
            if errors[i] is not None:
                self._finish(req, FINISH_ERROR, errors[i])
                continue
            req.kv_tokens += 1
            self._emit(i, req, tokens[i], lps[i], now)

    def _welcome(
        self,
        places: list[int],
        group: list[Request],
        tokens: list[int],
        lps: list[float],
        errors: list[str | None],
    ) -> None:
        """The first tokens of ``group``, prefilled into rows ``places`` by a mixed step."""
        now = time.monotonic_ns()
        for row, req, token, lp, error in zip(places, group, tokens, lps, errors, strict=True):
            if error is not None:
                self._finish(req, FINISH_ERROR, error)
                continue
            req.kv_tokens = len(req.prompt)
            self._emit(row, req, token, lp, now)

    def _live(self) -> list[Request]:
        return [r for r in self._rows if r.finish_reason is None]

    def _joinable(self, live: int) -> bool:
        """Whether a waiting request should join now (a row is free and admission is due)."""
        return bool(self._queue) and live < self.limits.max_batch_size and self._admission_due()

    def _can_ride(self, req: Request) -> bool:
        """Whether ``req`` can be prefilled inside a chained step: a mixed bucket holds it and
        the device's argmax is its first token (greedy, nothing applied, no log probs)."""
        return not req.return_log_probs and req._simple() and self._mixed_bucket([req]) is not None

    def _may_chain(self) -> bool:
        """Whether the next step can be launched now, fed the in-flight step's argmax on the
        device: every running row greedy with nothing applied to its logits and no log probs
        (the argmax is its token), none cancelled, each one's next position inside its slot,
        nothing waiting to run on this thread, and any request waiting for a free row able to
        ride on that step. Rows that ended stay in the batch meanwhile (their tokens are thrown
        away) until a request takes their row or the steps drain."""
        if not self.async_decode or len(self._inflight) != 1 or self._tasks or self._stop:
            return False
        assert self.slots is not None
        live = [
            (r, p) for r, p in zip(self._rows, self._pos, strict=True) if r.finish_reason is None
        ]
        if not live or max(p for _, p in live) >= self.slots.seq:
            return False
        if not all(not r.cancelled and not r.return_log_probs and r._simple() for r, _ in live):
            return False
        if self._joinable(len(live)):
            return self._can_ride(self._queue[0])
        return True

    def _chain(self) -> None:
        """Launch the next step fed on the device, with the waiting requests that can ride on
        it (they join in ended rows, then free ones). If that mixed launch raises, they go
        back to the queue, to be prefilled on their own."""
        riders: list[Request] = []
        if self._joinable(len(self._live())):
            with self._cv:
                riders = self._admit_locked(riders=True)
        try:
            self._inflight.append(self._launch(chained=True, group=riders))
        except Exception:
            if not riders:
                raise
            _warn_mixed_failed()
            for req in riders:
                req._solo = True
            with self._cv:
                self._queue.extendleft(reversed(riders))

    def _launch(self, chained: bool, group: list[Request] | None = None) -> _Step:
        """Launch one decode step for rows ``0..n-1`` at positions ``_pos``: fed ``_tok``, or
        (``chained``) the argmax of the step launched before it, without waiting for it; with
        ``group``, a mixed step that prefills those requests too (``_launch_mixed``). Rows
        that ended stay at the last position of their slot."""
        assert self.slots is not None
        n, pos, seq = len(self._rows), self._pos, self.slots.seq
        fed = [min(p, seq - 1) for p in pos]
        batch = next(b for b in self.batch_buckets if b >= n)
        length = next(x for x in self.length_buckets if x > max(fed))
        step = _Step(list(self._rows), self._host_packed[self._flip], None, pos)
        self._flip ^= 1
        ended = sum(r.finish_reason is not None for r in self._rows)
        self.ended_row_steps += ended
        if self._queue:  # read without the lock: a counter, one request early or late at most
            self.ended_row_steps_queued += ended
        if chained:
            self.chained_steps += 1
        else:
            self.synced_launches += 1
        if group:
            self._launch_mixed(step, group, fed, batch, length, chained)
        else:
            if chained:
                for i in range(n):
                    self.slots.touch(i, fed[i] + 1)
                self._ids[:n].copy_(self._out_packed[0, :n])
                self._positions[:n].add_(1)  # padding rows stay at position 0
            else:
                pad = batch - n
                tok, padded = self._tok + [0] * pad, fed + [0] * pad
                if self._group is not None:
                    self._group.send(_parallel.OP_DECODE, [n, batch, length, *tok, *padded])
                self._load_step(n, tok, padded)
            _replay_or_run(self.graphs, (batch, length), self._decode_body)
            self._pos = [p + 1 for p in pos]
        # the whole buffer: a slice of it is not contiguous, and such a copy is not asynchronous
        step.host.copy_(self._out_packed, non_blocking=True)
        if self.device.type == "cuda":
            step.event = torch.cuda.Event()
            step.event.record()
        return step

    def _launch_mixed(
        self,
        step: _Step,
        group: list[Request],
        fed: list[int],
        batch: int,
        length: int,
        chained: bool,
    ) -> None:
        """``_launch`` of a mixed step: the running rows' decode tokens, then ``group``'s prompts
        right-padded into their (requests, width) bucket, whose padding rows write the scratch
        slot (``fed``: the rows' positions, as ``_launch`` clamps them); ``group`` takes the ended rows first, then free ones, and joins the batch now (the
        step's own hand-out gives it its first tokens). Nothing changes if the forward raises."""
        assert self.slots is not None
        bucket = self._mixed_bucket(group)
        assert bucket is not None
        rows, width = bucket
        n, k, seq = len(self._rows), len(group), self.slots.seq
        ended = [i for i, r in enumerate(self._rows) if r.finish_reason is not None]
        places = (ended + list(range(n, n + k)))[:k]
        scratch = (self.slots.num_slots - 1) * seq
        dummy = self._out_packed.shape[1] - 1  # where the padding rows' argmax goes
        pad = batch - n
        ids, pos = [*self._tok, *[0] * pad], [*fed, *[0] * pad]
        taken = set(places)
        index = [scratch if i in taken else i * seq + p for i, p in enumerate(fed)]
        index += [scratch] * pad
        pick, dest = list(range(batch)), []
        for i in range(rows):
            prompt = group[i].prompt if i < k else []
            ids += [*prompt, *[0] * (width - len(prompt))]
            pos += range(width)
            start = places[i] * seq if i < k else scratch
            index += range(start, start + width)
            pick.append(batch + i * width + max(len(prompt) - 1, 0))
            dest.append(places[i] if i < k else dummy)
        # each row's position as the next chained step's add_(1) expects it
        after = fed + [0] * (max(places) + 1 - n)
        for place, req in zip(places, group, strict=True):
            after[place] = len(req.prompt) - 1
        for i in range(n):
            if i not in taken:
                self.slots.touch(i, fed[i] + 1)
        for place in places:
            self.slots.claim(place, width)
        self._load_mixed([ids, pos, index, pick + dest, after])
        if chained:
            self._mx[0, :n].copy_(self._out_packed[0, :n])
        _replay_or_run(self._mixed_captured, (batch, length, rows, width), self._mixed_body)
        self._positions[: len(after)].copy_(self._mx[4, : len(after)])
        # the step ran: the group joins
        self._pos = [p + 1 for p in self._pos] + [0] * (len(after) - n)
        self._tok += [0] * (len(after) - n)
        for place, req in zip(places, group, strict=True):
            if place < n:
                step.replaced.append((place, self._rows[place]))
                self._rows[place] = req
            else:
                self._rows.append(req)
            self._pos[place] = len(req.prompt)
        step.joined, step.places = list(group), places
        self.mixed_steps += 1
        self.prefills, self.prefilled = self.prefills + 1, self.prefilled + k

    def _load_mixed(self, rows: list[list[int]]) -> None:
        """A mixed step's inputs, through a pinned buffer (a step may be in flight): each
        token's id, position and flat slot position; the tokens whose logits it keeps (each
        row's, then each prompt's last) and where each prompt's argmax goes; each row's position
        afterwards."""
        total = len(rows[0])
        rows = rows + [[]] * (self._mx.shape[0] - len(rows))
        host = self._mx_host[self._mx_flip]
        self._mx_flip ^= 1
        host[:, :total] = torch.tensor([r + [0] * (total - len(r)) for r in rows])
        self._mx.copy_(host, non_blocking=True)  # whole: a slice's copy would not be asynchronous

    def _load_scratch_mixed(self, batch: int, rows: int, width: int) -> None:
        """Inputs for the (``batch``, any L, ``rows``, ``width``) mixed step that write the
        scratch slot only (capture, timing)."""
        assert self.slots is not None
        scratch = (self.slots.num_slots - 1) * self.slots.seq
        total = batch + rows * width
        flat = [scratch] * batch + [scratch + j for _ in range(rows) for j in range(width)]
        self._load_mixed([[0] * total, [0] * total, flat])

    def _mixed_body(self, batch: int, length: int, rows: int, width: int) -> None:
        """A mixed step as its CUDA graph captures it: ``batch`` decode tokens then ``rows`` x
        ``width`` prompt tokens from ``_mx``; the rows' logits and argmax into ``_out_logits`` /
        ``_out_packed``, the logits after each prompt's last token into ``_pf_logits`` and its
        argmax into its row's place in ``_out_packed``."""
        assert self.slots is not None
        total = batch + rows * width
        ids, pos = self._mx[0, :total], self._mx[1, :total]
        self.slots.index = self._mx[2, :total]
        mask = _decode_mask(pos[:batch], self._arange[:length], self.dtype)
        self.slots.mixed = (batch, rows, width, mask)
        try:
            hidden = self._slot_decoder(ids.unsqueeze(0), pos.unsqueeze(0), None)
        finally:
            self.slots.mixed = None
        logits = self._lm_head(hidden[0, self._mx[3, : batch + rows]]).float()
        self._put_decode_logits(logits[:batch])
        prompts = logits[batch:]
        self._pf_logits[:rows].copy_(prompts)
        values, top = prompts.max(dim=-1)
        dest = self._mx[3, batch + rows : batch + 2 * rows]
        self._out_packed[0].index_copy_(0, dest, top)
        self._out_packed[1].index_copy_(0, dest, torch.isfinite(values).long())

    def _collect(self, step: _Step) -> tuple[list[int], list[int]]:
        """Wait for ``step`` without holding the GIL (the sender threads run meanwhile): each
        row's argmax and whether its logits were finite, for its rows and the rows it gave to
        requests it prefilled (the logits stay in ``_out_logits`` / ``_pf_logits`` until the
        next step writes them)."""
        if step.event is not None:
            step.event.synchronize()
        cols = max([len(step.rows), *(p + 1 for p in step.places)])
        packed = step.host[:, :cols].tolist()
        return packed[0], packed[1]

    def _rewind(self) -> list[Request]:
        """A step failed: forget the steps in flight; rows go back to the oldest one's rows and
        positions (their tokens ``_tok`` are its inputs: nothing after it was handed out). The
        requests those steps prefilled, which no longer have a row."""
        if not self._inflight:
            return []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # nothing launched may still write the cache
        oldest = self._inflight[0]
        joined: list[Request] = []
        for step in reversed(self._inflight):
            for place, req in step.replaced:
                self._rows[place] = req
            joined = step.joined + joined
        n = len(oldest.rows)
        del self._rows[n:], self._tok[n:]
        self._pos = list(oldest.pos)
        self._inflight.clear()
        return joined

    def _load_step(self, n: int, tok: list[int], pos: list[int]) -> None:
        """A decode step's inputs for rows ``0..n-1`` (and padding rows to ``len(tok)``): each
        row's slot holds its next position (padding rows write position 0 of theirs)."""
        assert self.slots is not None
        batch = len(tok)
        for i in range(batch):
            self.slots.touch(i, pos[i] + 1 if i < n else 1)
        self._ids[:batch].copy_(torch.tensor(tok, dtype=torch.long))
        self._positions[:batch].copy_(torch.tensor(pos, dtype=torch.long))

    def _wait_for_device(self) -> None:
        """Wait for the GPU without holding the GIL (the sender thread runs meanwhile)."""
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            event.synchronize()

    def _decode_body(self, batch: int, length: int) -> None:
        """The decode step as CUDA graphs capture it: inputs from ``_ids`` and ``_positions``, outputs into
        ``_out_logits`` and ``_out_packed``."""
        assert self.slots is not None
        ids, pos, window = self._ids[:batch], self._positions[:batch], self._arange[:length]
        self.slots.decoding = True
        try:
            try:
                logits = self._forward(ids, pos, window)
            except Exception:
                if self._forward == self._decode_forward:
                    raise
                log.warning(
                    "trtbuild portable runtime: torch.compile of the decode step failed; "
                    "decoding without it",
                    exc_info=True,
                )
                self._forward = self._decode_forward
                logits = self._forward(ids, pos, window)
        finally:
            self.slots.decoding = False
        self._put_decode_logits(logits)

    def _put_decode_logits(self, logits: torch.Tensor) -> None:
        """A decode step's logits ``[batch, vocab]`` float32, and each row's argmax and whether
        its logits were finite, into the static outputs."""
        batch = logits.shape[0]
        self._out_logits[:batch].copy_(logits)
        values, top = logits.max(dim=-1)
        self._out_packed[0, :batch].copy_(top)
        self._out_packed[1, :batch].copy_(torch.isfinite(values))

    def _decode_forward(
        self, ids: torch.Tensor, pos: torch.Tensor, window: torch.Tensor
    ) -> torch.Tensor:
        """Logits after one token per row at ``pos``, attending to positions ``window`` (0..L-1)
        that are <= the row's own (``torch.compile`` fuses this when ``compile_decode``)."""
        return self._lm_head(self._decode_hidden(ids, pos, window)[:, -1]).float()

    def _decode_hidden(
        self, ids: torch.Tensor, pos: torch.Tensor, window: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's last hidden states for one token per row (``_decode_forward``)."""
        assert self.slots is not None
        # row i is slot i; a row that ended may be fed past its slot's end: it writes the last
        self.slots.index = self._slot_base[: pos.shape[0]] + pos.clamp(max=self.slots.seq - 1)
        mask = _decode_mask(pos, window, self.dtype)
        hidden: torch.Tensor = self._slot_decoder(ids.unsqueeze(1), pos.unsqueeze(1), mask)
        return hidden

    def _slot_decoder(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The decoder's last hidden states over the slot cache (KV written at ``slots.index``)."""
        hidden: torch.Tensor = self._decoder(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.slots,
            use_cache=True,
        ).last_hidden_state
        return hidden

    def _capture_all(self) -> None:
        """Capture every (batch, L) bucket's decode step, largest first (they share one pool)."""
        assert self.slots is not None
        if self._rows:
            raise RuntimeError("CUDA graphs are captured before serving, with no request running")
        self._graph_pool = self._graph_pool or torch.cuda.graph_pool_handle()
        self._ids.zero_()
        self._positions.zero_()
        for batch, length in sorted(
            ((b, x) for b in self.batch_buckets for x in self.length_buckets),
            key=lambda bl: (-bl[0] * bl[1], -bl[0]),
        ):
            if (batch, length) in self.graphs:
                continue
            for i in range(batch):
                self.slots.touch(i, 1)  # the warm-up runs write position 0 of free slots
            self.compile_seconds += self._capture(self.graphs, (batch, length), self._decode_body)
        scratch = (self.slots.num_slots - 1) * self.slots.seq  # what the captures write
        for rows, width in sorted(self.prefill_buckets, key=lambda b: -b[0] * b[1]):
            if (rows, width) in self._prefill_captured:
                continue
            index = (scratch + torch.arange(width)).repeat(rows)
            self._load_prefill(torch.zeros((rows, width), dtype=torch.long), index, [0] * rows)
            self._capture(self._prefill_captured, (rows, width), self._prefill_body)
        for key in sorted(
            ((b, x, k, w) for b in self.batch_buckets for x in self.length_buckets
             for k, w in self.mixed_buckets),
            key=lambda m: (-(m[0] + m[2] * m[3]), -m[1]),
        ):  # fmt: skip
            if key in self._mixed_captured:
                continue
            batch, _, rows, width = key
            self._load_scratch_mixed(batch, rows, width)
            self._capture(self._mixed_captured, key, self._mixed_body)
        torch.cuda.synchronize(self.device)

    def _capture(
        self,
        graphs: dict[tuple[int, ...], Any],
        key: tuple[int, ...],
        body: Callable[..., None],
    ) -> float:
        """Capture ``body(*key)`` into ``graphs[key]`` on the side stream (in the shared pool),
        after two eager runs for lazy initialisation (cuBLAS, compilation); their seconds. One
        side stream for every capture: cuBLAS keeps a workspace per stream for the process's
        life (with a stream per capture, 126 more captured graphs left ~2.9 GB more reserved
        after warm-up on an H200, measured; docs/perf/h200.md round 4)."""
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        side = self._capture_stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            started = time.perf_counter()
            for _ in range(2):
                body(*key)
            warm = time.perf_counter() - started
            with torch.cuda.graph(graph, pool=self._graph_pool, stream=side):
                body(*key)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graphs[key] = graph
        return warm

    def _move_slot(self, src: int, dst: int) -> None:
        assert self.slots is not None
        if self._group is not None:
            self._group.send(_parallel.OP_MOVE, [src, dst])
        self.slots.move(src, dst)

    def _compact_slots(self) -> None:
        """Drop finished rows; the last running rows move into the holes (rows stay 0..n-1)."""
        alive = [r.finish_reason is None for r in self._rows]
        n = sum(alive)
        holes = [i for i in range(n) if not alive[i]]
        tail = [i for i in range(n, len(alive)) if alive[i]]
        for hole, src in zip(holes, tail, strict=True):
            self._move_slot(src, hole)
            self._rows[hole], self._tok[hole], self._pos[hole] = (
                self._rows[src],
                self._tok[src],
                self._pos[src],
            )
        del self._rows[n:], self._tok[n:], self._pos[n:]

    # -- sampling ---------------------------------------------------------------------------------
    def _sample(
        self,
        logits: torch.Tensor,
        reqs: list[Request],
        argmax: tuple[list[int], list[int]] | None = None,
    ) -> tuple[list[int], list[float], list[str | None]]:
        """One token per row, and per row ``None`` or the error that ends that request.

        Every row gets the vectorised argmax (one max over the batch, one transfer; ``argmax``:
        already computed, with each row's finiteness); rows with something to apply to their
        logits (sampling, penalties, bad words, bias, min_tokens) are then recomputed on their own.
        """
        n = len(reqs)
        if argmax is None:
            values, top = logits.max(dim=-1)
            ok = torch.isfinite(values)
            stacked = torch.stack([top, ok.to(top.dtype)])
            self._wait_for_device()
            packed = stacked.tolist()
        else:
            packed = [list(argmax[0]), list(argmax[1])]
        ended = [r.finish_reason is not None for r in reqs]  # rows kept while steps chain
        simple = [ended[i] or r._simple() for i, r in enumerate(reqs)]
        want_lp = [r.return_log_probs and simple[i] and not ended[i] for i, r in enumerate(reqs)]
        if any(want_lp):
            top_ids = torch.tensor(packed[0], device=logits.device).unsqueeze(1)
            lps = torch.log_softmax(logits, dim=-1).gather(1, top_ids).squeeze(1).tolist()
        else:
            lps = [0.0] * n
        tokens: list[int] = packed[0]
        errors: list[str | None] = [None] * n
        for i, req in enumerate(reqs):
            if ended[i]:
                continue
            if simple[i]:
                if not packed[1][i]:
                    errors[i] = (
                        "the model produced NaN or infinite logits for this request; it cannot "
                        "continue"
                    )
                continue
            try:
                tokens[i], lps[i] = self._sample_row(logits[i], req)
            except _RowFailure as exc:
                errors[i] = str(exc)
            except Exception as exc:  # noqa: BLE001 - this row's sampling failed, nothing else
                errors[i] = f"sampling failed for this request: {type(exc).__name__}: {exc}"
        return tokens, lps, errors

    def _sample_row(self, logits: torch.Tensor, req: Request) -> tuple[int, float]:
        row = _process_logits(logits.clone(), req)
        s = req.sampling
        if s.greedy:
            best, token = row.max(dim=-1)
            if not bool(torch.isfinite(best)):
                raise _RowFailure(_bad_logits(req))
            tok = int(token)
            lp = float(torch.log_softmax(row, dim=-1)[tok]) if req.return_log_probs else 0.0
            return tok, lp
        row = row / max(s.temperature, 1e-6)
        row = _top_k_top_p(row, s.top_k, s.top_p)
        if not bool(torch.isfinite(row.max())) or bool(torch.isnan(row).any()):
            raise _RowFailure(_bad_logits(req))
        probs = torch.softmax(row, dim=-1)
        tok = int(torch.multinomial(probs, 1, generator=req._generator))
        lp = float(torch.log(probs[tok])) if req.return_log_probs else 0.0
        return tok, lp


# -- the slot layout's cache and attention --------------------------------------------------------
class _SlotCache:
    """The slot layout's KV cache, shaped ``[layers, 2, slots, max_seq_len, kv_heads, head_dim]``.

    transformers' attention layers call ``update`` with each forward's new keys and values; it
    writes them at ``index`` (flat ``slot * max_seq_len + position``, one per new token) and
    returns what attention reads: the new keys themselves during a prefill (a prompt attends to
    itself), else slots ``0..batch-1``, of which attention reads the first ``L`` positions (``L``:
    the mask's width).

    ``dirty[slot]``: positions that may hold something; everything after is zero. ``claim``
    zeroes a slot past a new prompt's width, so nothing of a slot's previous request can reach
    its next one (not even NaN: masked positions weigh 0, and 0 x NaN is NaN).
    """

    def __init__(
        self,
        layers: int,
        slots: int,
        seq: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.kv = torch.zeros(
            (layers, 2, slots, seq, kv_heads, head_dim), dtype=dtype, device=device
        )
        self.flat = self.kv.view(layers, 2, slots * seq, kv_heads, head_dim)
        self.num_slots, self.seq = slots, seq
        self.dirty = [0] * slots
        self.index: torch.Tensor | None = None
        self.decoding = False  # prefill: attention reads the new keys themselves
        # a mixed step (engine._mixed_body): (decode rows, prompts, width, the rows' mask)
        self.mixed: tuple[int, int, int, torch.Tensor] | None = None
        # decode attention of batches of at least ``flex_from`` rows (engine._setup_flex)
        self.flex: Callable[..., torch.Tensor] | None = None
        self.flex_from = 0

    # transformers' Cache protocol, as far as the supported models use it
    is_compileable = False
    fused_layers = False  # the engine rewrote the model's layers for this cache (_trtbuild_fused)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cache_k, cache_v, index = self.write_targets(layer_idx)
        _, heads, _, d = key_states.shape
        cache_k[index] = key_states.transpose(1, 2).reshape(-1, heads, d)
        cache_v[index] = value_states.transpose(1, 2).reshape(-1, heads, d)
        return self.read(key_states, value_states, layer_idx)

    def write_targets(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where a forward's new keys and values go: layer ``layer_idx``'s K and V ``[slots x
        max_seq_len, kv_heads, head_dim]`` and each new token's flat position in them (the
        fused layers write them there themselves with ``kv_writes``)."""
        assert self.index is not None
        return self.flat[layer_idx, 0], self.flat[layer_idx, 1], self.index

    def read(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What attention reads once the new keys and values are written (``update``)."""
        if not self.decoding:
            return key_states, value_states
        layer = self.kv[layer_idx, :, : key_states.shape[0]]  # [2, batch, max_seq_len, kv_heads, d]
        return layer[0].transpose(1, 2), layer[1].transpose(1, 2)  # attention reads the first L

    # bookkeeping (engine thread)
    def touch(self, slot: int, positions: int) -> None:
        self.dirty[slot] = max(self.dirty[slot], positions)

    def claim(self, slot: int, width: int) -> None:
        """``slot`` takes a new request whose prefill writes positions ``0..width-1``."""
        if self.dirty[slot] > width:
            self.kv[:, :, slot, width : self.dirty[slot]].zero_()
        self.dirty[slot] = width

    def move(self, src: int, dst: int) -> None:
        """Slot ``dst`` becomes what ``src`` holds (``src`` is free afterwards)."""
        n = max(self.dirty[src], self.dirty[dst])
        if n:
            self.kv[:, :, dst, :n].copy_(self.kv[:, :, src, :n])
        self.dirty[dst] = self.dirty[src]


def _slot_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention for ``_SlotCache``: causal over the new tokens in a prefill (no
    mask); in a decode step (one query per row, ``attention_mask`` ``[batch, 1, 1, L]``), the
    query heads that share a KV head become that head's query length, so keys are read once.
    In a mixed step (``slot_cache``, the cache the fused layers pass, has ``mixed`` set) the
    tokens are split into those two kinds (``_mixed_attention``)."""
    cache = kwargs.get("slot_cache")
    if cache is not None and cache.mixed is not None:
        return _mixed_attention(cache, module.layer_idx, query, key, value, scaling)
    if attention_mask is None:  # SDPA repeats the KV heads itself (no copies of them)
        out = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            is_causal=query.shape[2] > 1,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    else:
        out = _decode_attention(cache, query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def _decode_attention(
    cache: _SlotCache | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """One query per row (``[batch, heads, 1, d]``) over the first ``L`` positions of its slot
    (``mask`` ``[batch, 1, 1, L]``): through the cache's flex attention for batches of at
    least ``flex_from`` rows, else SDPA with the query heads that share a KV head as that
    head's query length (keys read once)."""
    b, heads, t, d = query.shape
    if t != 1:
        raise RuntimeError(f"slot decode attention takes one query per row, got {t}")
    length = mask.shape[-1]
    key, value = key[:, :, :length], value[:, :, :length]
    if cache is not None and cache.flex is not None and b >= cache.flex_from:
        try:
            return cache.flex((query, key, value), mask, scaling)
        except Exception:
            if query.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise
            log.warning(
                "trtbuild portable runtime: flex attention failed; decode steps attend "
                "through SDPA from now on",
                exc_info=True,
            )
            cache.flex = None
    kv_heads = key.shape[1]
    folded = query.reshape(b, kv_heads, heads // kv_heads, d)
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, scale=scaling
    )
    return out.reshape(b, heads, t, d)


def _flex_decoder(
    compiled: bool, kernel_options: dict[str, int] | None = None
) -> Callable[..., torch.Tensor]:
    """``_decode_attention``'s flex attention: ``torch.compile``'d (static shapes: one kernel
    per bucket) with ``kernel_options`` (default ``FLEX_KERNEL_OPTIONS``), or flex attention's
    eager reference where ``compiled`` is false. The additive mask becomes a score
    modification, so it sees exactly what SDPA's mask lets through."""
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    # the eager reference takes none; {} asks for inductor's own choice
    options: Any = (
        dict(FLEX_KERNEL_OPTIONS if kernel_options is None else kernel_options) or None
        if compiled
        else None
    )

    def attend(
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        scaling: float | None,
    ) -> torch.Tensor:
        query, key, value = qkv
        bias = mask[:, 0, 0, :]  # [batch, L]

        def score_mod(score: Any, b: Any, h: Any, q: Any, kv: Any) -> Any:
            return score + bias[b, kv]

        with warnings.catch_warnings():
            if not compiled:  # it warns that it runs without torch.compile: the point, here
                warnings.simplefilter("ignore", UserWarning)
            out: torch.Tensor = flex(
                query,
                key,
                value,
                score_mod=score_mod,
                enable_gqa=True,
                scale=scaling,
                kernel_options=options,
            )
        return out

    return attend


def _mixed_attention(
    cache: _SlotCache,
    layer_idx: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """A mixed step's attention: ``query`` / ``key`` / ``value`` ``[1, heads, tokens, d]`` are the
    decode rows' tokens (attending to their slots through the rows' mask, as a decode step), then
    ``prompts`` x ``width`` prompt tokens (each prompt causal over itself, as a prefill)."""
    assert cache.mixed is not None
    batch, prompts, width, mask = cache.mixed
    heads, d = query.shape[1], query.shape[3]
    layer = cache.kv[layer_idx, :, :batch]  # [2, batch, max_seq_len, kv_heads, head_dim]
    rows = _decode_attention(
        cache,
        query[0, :, :batch].transpose(0, 1).unsqueeze(2),
        layer[0].transpose(1, 2),
        layer[1].transpose(1, 2),
        mask,
        scaling,
    )

    def per_prompt(t: torch.Tensor) -> torch.Tensor:
        return t[0, :, batch:].reshape(t.shape[1], prompts, width, d).transpose(0, 1)

    prefill, _ = _slot_attention(
        None, per_prompt(query), per_prompt(key), per_prompt(value), None, scaling=scaling
    )
    out = torch.cat([rows.reshape(batch, heads, d), prefill.reshape(prompts * width, heads, d)])
    return out.unsqueeze(0), None


_REGISTERED = threading.Lock()


def _register_attention() -> None:
    from transformers import AttentionInterface

    with _REGISTERED:
        AttentionInterface.register(SLOT_ATTENTION, _slot_attention)


def _dynamic_rows(compiled: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``compiled`` with each argument's first dimension (rows, or the window length) marked
    dynamic: one compilation serves every bucket (and one more the batch of one)."""

    def call(*tensors: torch.Tensor) -> torch.Tensor:
        for t in tensors:
            torch._dynamo.mark_dynamic(t, 0)
        return compiled(*tensors)

    return call


def _triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _slots_unsupported(model: Any, max_seq_len: int) -> str | None:
    """Why the slot layout cannot serve ``model`` exactly (None: it can)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", None)
    if kind not in SLOT_MODEL_TYPES:
        return f"model type {kind!r} (slots serve {', '.join(sorted(SLOT_MODEL_TYPES))})"
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "it has sliding-window or other non-full attention layers"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < max_seq_len:
        return f"its sliding window ({window}) is shorter than max_seq_len {max_seq_len}"
    if not hasattr(model, "set_attn_implementation"):
        return "this transformers version cannot switch attention implementations"
    return None


def _warn_mixed_failed() -> None:
    """Log (with the exception being handled) that a mixed step failed and its prompts will be
    prefilled on their own."""
    log.warning(
        "trtbuild portable runtime: a decode step with prefills failed; prefilling on its own",
        exc_info=True,
    )


def _decode_mask(pos: torch.Tensor, window: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The decode attention's additive mask ``[rows, 1, 1, L]``: each row sees the positions of
    ``window`` (0..L-1) up to its own ``pos``."""
    visible = window.unsqueeze(0) <= pos.unsqueeze(1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=pos.device)
    return mask.masked_fill(~visible, float("-inf"))[:, None, None, :]


def _replay_or_run(
    graphs: dict[tuple[int, ...], Any], key: tuple[int, ...], body: Callable[..., None]
) -> None:
    """Replay ``key``'s captured graph, or run ``body(*key)`` eagerly where none was captured."""
    graph = graphs.get(key)
    if graph is not None:
        graph.replay()
    else:
        body(*key)


def _prefill_buckets(slots: int, max_seq_len: int, limit: int) -> list[tuple[int, int]]:
    """(requests, width) buckets of small prefills, smallest first: requests 1, 2, 4, 8 (at most
    the batch), widths 64, 128, ... (at most max_seq_len), at most ``limit`` padded tokens each."""
    widths = [w for w in _buckets(max_seq_len, min(64, max_seq_len)) if w <= limit]
    counts = [k for k in (1, 2, 4, 8) if k <= slots]
    return sorted(
        ((k, w) for k in counts for w in widths if k * w <= limit), key=lambda b: b[0] * b[1]
    )


def _buckets(limit: int, smallest: int) -> list[int]:
    """``smallest``, doubling, below ``limit``; then ``limit``."""
    out, size = [], smallest
    while size < limit:
        out.append(size)
        size *= 2
    return [*out, limit]


# -- helpers ------------------------------------------------------------------------------------
def kv_blocks(kv_tokens: int) -> int:
    """A request's KV cache in blocks of ``TOKENS_PER_BLOCK`` tokens (rounded up)."""
    return -(-kv_tokens // TOKENS_PER_BLOCK)


def _bad_logits(req: Request) -> str:
    s = req.sampling
    return (
        "this request's logits became NaN, +inf or all -inf after its sampling parameters were "
        f"applied (temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p}, "
        f"repetition_penalty {s.repetition_penalty}, presence_penalty {s.presence_penalty}, "
        f"frequency_penalty {s.frequency_penalty}, {len(req.bad_words)} bad words, "
        f"embedding_bias {'set' if req._bias is not None else 'none'}); check them"
    )


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def _cache_layers(cache: Any) -> list[Any]:
    """The per-layer KV holders of a transformers ``DynamicCache`` (``.keys`` / ``.values``)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RuntimeError(
            "this transformers version's DynamicCache has no .layers; trtbuild's portable runtime "
            "needs transformers >= 4.56"
        )
    return list(layers)


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    pad = width - t.shape[dim]
    if pad <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _ends_with_any(seq: list[int], words: list[list[int]]) -> bool:
    return any(w and len(seq) >= len(w) and seq[-len(w) :] == w for w in words)


def _process_logits(row: torch.Tensor, req: Request) -> torch.Tensor:
    """Embedding bias, then penalties, min_tokens and bad words, on one row's logits."""
    s = req.sampling
    if req._bias is not None:
        row = row + req._bias
    if req.output and s.penalised:
        ids = torch.tensor(req.output, device=row.device)
        uniq, counts = ids.unique(return_counts=True)
        if s.repetition_penalty != 1.0:
            vals = row[uniq]
            row[uniq] = torch.where(
                vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty
            )
        if s.presence_penalty:
            row[uniq] -= s.presence_penalty
        if s.frequency_penalty:
            row[uniq] -= s.frequency_penalty * counts.to(row.dtype)
    if len(req.output) < s.min_tokens and req.end_id is not None and req.end_id >= 0:
        row[req.end_id] = float("-inf")
    for word in req.bad_words:
        prefix, last = word[:-1], word[-1]
        if not prefix or req.output[-len(prefix) :] == prefix:
            row[last] = float("-inf")
    return row


def _top_k_top_p(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < row.shape[-1]:
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses p
        sorted_logits[drop] = float("-inf")
        row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits)
    return row
