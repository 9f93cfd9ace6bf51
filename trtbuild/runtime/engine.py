"""Continuous-batching generation for any Hugging Face causal LM, on CPU or CUDA.

This module is the compute half of trtbuild's portable runtime. It imports only torch,
transformers and trtbuild's ``requests`` module (stdlib + numpy), because ``trtbuild repo`` copies
both verbatim next to the Triton ``model.py`` that drives them (so a rendered repository does not
need trtbuild installed).

Design:
- One engine thread owns the model and one running batch. Requests join and leave between decode
  steps (inflight batching); ``submit`` and ``cancel`` only touch a locked queue.
- A new request is prefilled on its own (no padding, so its logits are exactly what
  ``model.generate`` sees), then its KV cache is left-padded into the running batch. Each decode
  step feeds one token per row with a 2-D attention mask and per-row positions. Finished rows are
  dropped, and KV columns that are padding in every row are trimmed.
- Limits are explicit: ``max_batch_size`` rows decode together, ``max_seq_len`` bounds prompt +
  output per request, ``max_num_tokens`` bounds prefill tokens per scheduler iteration, and
  ``max_queue_size`` bounds the requests that wait beyond the free batch slots (admission control).
- Tokens are handed to ``Request.on_event`` from the engine thread; the caller decides how to ship
  them (the Triton model moves sending onto another thread, keeping I/O off the decode loop).

Isolation: a failure while computing one request fails that request alone.
- Sampling guards every row: a row whose processed logits are NaN, +inf or all -inf fails with an
  error naming its sampling parameters; so does a row whose own processing raises.
- A prefill that raises fails its request; the running batch is untouched (merging a new row into
  the batch undoes itself if it fails half-way).
- A decode step that raises is retried without one row: the KV cache is cut back to its pre-step
  length, the most recently admitted row (the culprit is unknown: a forward pass fails as a whole)
  gets an error, and the step runs again, and so on.
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trtbuild.runtime import requests as _requests
else:
    try:  # a rendered repository: copied next to this file by trtbuild repo
        import _trtbuild_requests as _requests
    except ImportError:
        from trtbuild.runtime import requests as _requests

FINISH_LENGTH = "length"
FINISH_STOP = "stop"  # end id or stop word
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"

# perf metrics: a KV-cache "block" is this many tokens of one request's keys and values. The
# runtime keeps a contiguous, left-padded cache per batch, not paged blocks; counting a request's
# own tokens in blocks of this size gives TensorRT-LLM's block outputs a real meaning.
TOKENS_PER_BLOCK = 32

log = logging.getLogger("trtbuild.runtime")


class RequestError(_requests.InvalidInput):
    """A request the engine cannot honour; the message is sent back to the client."""


class QueueFull(RequestError):
    """Too many requests wait beyond the free batch slots; the client should retry later."""


class EngineDead(RuntimeError):
    """The engine thread died; nothing is served any more (the process is about to exit)."""


class _RowFailure(Exception):
    """One row of a step cannot continue; the message goes to that request only."""


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


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    max_batch_size: int = 64
    max_seq_len: int = 2048
    max_num_tokens: int = 4096
    max_queue_size: int = 1024


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
    ) -> None:
        from transformers import AutoModelForCausalLM

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.limits = limits or EngineLimits()
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=self.dtype, attn_implementation=attn_implementation
        )
        self.model = model.to(self.device).eval()
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
        self._rows: list[Request] = []  # running batch, one row per request
        self._admitting: list[Request] = []  # taken from the queue, not yet in the batch
        self._admissions = 0
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, kv_len] 1 = real token
        self._next_pos: torch.Tensor | None = None  # [rows] position of the next token
        self._last: torch.Tensor | None = None  # [rows] last sampled token
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="trtbuild-engine", daemon=True)

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
        return len(self._rows)

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
        """Run a few requests through every code path (prefill, merge, decode) before serving."""
        prompts = [[(i * 7 + j) % self.vocab_size for j in range(prompt_len + i)] for i in range(2)]
        threads = [
            threading.Thread(target=self.generate, args=(p, new_tokens), kwargs={"end_id": -1})
            for p in prompts
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- engine thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._queue and not self._rows:
                        self._cv.wait()
                    if self._stop:
                        break
                    self._admitting = self._admit_locked()
                with torch.inference_mode():
                    for req in list(self._admitting):
                        self._prefill(req)
                        self._admitting.remove(req)
                    self._drop_finished()
                    if self._rows:
                        self._decode_step()
                        self._drop_finished()
        except BaseException as exc:  # noqa: BLE001 - the thread dies: say so to every request
            self._die(f"{type(exc).__name__}: {exc}")
            return
        self._fail_everything("the server is shutting down")

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

    def _admit_locked(self) -> list[Request]:
        admitted: list[Request] = []
        budget = self.limits.max_num_tokens
        free = self.limits.max_batch_size - len(self._rows)
        now = time.monotonic_ns()
        while self._queue and len(admitted) < free:
            req = self._queue[0]
            if req.cancelled:
                self._queue.popleft()
                self._finish(req, FINISH_CANCELLED)
                continue
            if admitted and len(req.prompt) > budget:
                break  # prefill budget for this iteration is spent; decode first
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
                victim = max(self._rows, key=lambda r: r._admitted)
                self._finish(
                    victim,
                    FINISH_ERROR,
                    f"a decode step failed ({type(exc).__name__}: {exc}); this request, the most "
                    "recently admitted, was dropped and the step retried without it",
                )
                self._drop_finished()
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

    def _drop_finished(self) -> None:
        for r in self._rows:
            if r.cancelled and r.finish_reason is None:
                self._finish(r, FINISH_CANCELLED)
        keep = [i for i, r in enumerate(self._rows) if r.finish_reason is None]
        if len(keep) == len(self._rows):
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

    # -- sampling ---------------------------------------------------------------------------------
    def _sample(
        self, logits: torch.Tensor, reqs: list[Request]
    ) -> tuple[list[int], list[float], list[str | None]]:
        """One token per row, and per row ``None`` or the error that ends that request.

        Every row gets the vectorised argmax (one max over the batch, one transfer); rows with
        something to apply to their logits (sampling, penalties, bad words, bias, min_tokens) are
        then recomputed on their own.
        """
        n = len(reqs)
        values, top = logits.max(dim=-1)
        ok = torch.isfinite(values)
        simple = [r._simple() for r in reqs]
        want_lp = [r.return_log_probs and simple[i] for i, r in enumerate(reqs)]
        if any(want_lp):
            lps = torch.log_softmax(logits, dim=-1).gather(1, top.unsqueeze(1)).squeeze(1).tolist()
        else:
            lps = [0.0] * n
        packed = torch.stack([top, ok.to(top.dtype)]).tolist()
        tokens: list[int] = packed[0]
        errors: list[str | None] = [None] * n
        for i, req in enumerate(reqs):
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
