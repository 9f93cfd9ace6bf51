"""Continuous-batching generation for any Hugging Face causal LM, on CPU or CUDA.

This module is the compute half of trtbuild's portable runtime. It imports only torch and
transformers, because ``trtbuild repo`` copies it verbatim next to the Triton ``model.py`` that
drives it (so a rendered repository does not need trtbuild installed).

Design:
- One engine thread owns the model and one running batch. Requests join and leave between decode
  steps (inflight batching); ``submit`` and ``cancel`` only touch a locked queue.
- A new request is prefilled on its own (no padding, so its logits are exactly what
  ``model.generate`` sees), then its KV cache is left-padded into the running batch. Each decode
  step feeds one token per row with a 2-D attention mask and per-row positions. Finished rows are
  dropped, and KV columns that are padding in every row are trimmed.
- Limits are explicit: ``max_batch_size`` rows decode together, ``max_seq_len`` bounds prompt +
  output per request, ``max_num_tokens`` bounds prefill tokens per scheduler iteration, and
  ``max_queue_size`` bounds waiting requests (admission control).
- Tokens are handed to ``Request.on_event`` from the engine thread; the caller decides how to ship
  them (the Triton model moves sending onto another thread, keeping I/O off the decode loop).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

FINISH_LENGTH = "length"
FINISH_STOP = "stop"  # end id or stop word
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


class RequestError(ValueError):
    """A request the engine cannot honour; the message is sent back to the client."""


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


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_new_tokens: int
    on_event: Callable[[Event], None]
    end_id: int | None = None  # None or negative: never stop on an end token
    stop_words: list[list[int]] = dataclasses.field(default_factory=list)
    bad_words: list[list[int]] = dataclasses.field(default_factory=list)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    return_log_probs: bool = False
    stream: bool = True  # False: one event, at the end, with every generated token
    tag: Any = None  # caller's handle (e.g. the Triton response sender)
    # filled by the engine
    output: list[int] = dataclasses.field(default_factory=list)
    output_log_probs: list[float] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    finish_reason: str | None = None
    submitted_at: float = dataclasses.field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _generator: torch.Generator | None = None
    _pending: list[int] = dataclasses.field(default_factory=list)
    _pending_lp: list[float] = dataclasses.field(default_factory=list)


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
        self._queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._rows: list[Request] = []  # running batch, one row per request
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
        """Raise ``RequestError`` for a request that cannot run; called by ``submit``."""
        n = len(req.prompt)
        lim = self.limits
        if n == 0:
            raise RequestError("the prompt is empty (input_lengths must be >= 1)")
        if req.max_new_tokens <= 0:
            raise RequestError(f"request_output_len must be >= 1, got {req.max_new_tokens}")
        if n + req.max_new_tokens > lim.max_seq_len:
            raise RequestError(
                f"prompt ({n} tokens) + request_output_len ({req.max_new_tokens}) exceeds "
                f"max_seq_len {lim.max_seq_len}; ask for at most {max(lim.max_seq_len - n, 0)} "
                "new tokens"
            )
        if n > lim.max_num_tokens:
            raise RequestError(f"prompt ({n} tokens) exceeds max_num_tokens {lim.max_num_tokens}")
        bad = [t for t in req.prompt if t < 0 or t >= self.vocab_size]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        s = req.sampling
        if s.temperature < 0 or not 0.0 <= s.top_p <= 1.0 or s.top_k < 0:
            raise RequestError("temperature must be >= 0, top_p in [0, 1] and top_k >= 0")
        if s.repetition_penalty <= 0:
            raise RequestError("repetition_penalty must be > 0")

    def submit(self, req: Request) -> None:
        self.validate(req)
        if req.sampling.seed is not None:
            req._generator = torch.Generator(device=self.device).manual_seed(req.sampling.seed)
        with self._cv:
            if len(self._queue) >= self.limits.max_queue_size:
                raise RequestError(
                    f"the queue is full ({self.limits.max_queue_size} waiting requests); retry later"
                )
            self._queue.append(req)
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
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._rows:
                    self._cv.wait()
                if self._stop:
                    break
                admitted = self._admit_locked()
            try:
                with torch.inference_mode():
                    for req in admitted:
                        self._prefill(req)
                    self._drop_finished()
                    if self._rows:
                        self._decode_step()
                        self._drop_finished()
            except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the server
                self._fail_all(admitted, f"{type(exc).__name__}: {exc}")
        self._fail_all([], "the server is shutting down")

    def _admit_locked(self) -> list[Request]:
        admitted: list[Request] = []
        budget = self.limits.max_num_tokens
        free = self.limits.max_batch_size - len(self._rows)
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
            admitted.append(req)
        return admitted

    def _prefill(self, req: Request) -> None:
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        logits = out.logits[:, -1, :].float()
        token, lp = self._sample(logits, [req])
        self._merge(req, out.past_key_values, len(req.prompt))
        self._emit_and_check(self._rows.index(req), req, token[0], lp[0])

    def _decode_step(self) -> None:
        assert self._mask is not None and self._next_pos is not None and self._last is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        out = self.model(
            input_ids=self._last.unsqueeze(1),
            attention_mask=self._mask,
            position_ids=self._next_pos.unsqueeze(1),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        self._next_pos = self._next_pos + 1
        logits = out.logits[:, -1, :].float()
        tokens, lps = self._sample(logits, self._rows)
        self.steps += 1
        for i, req in enumerate(list(self._rows)):
            self._emit_and_check(i, req, tokens[i], lps[i])

    def _emit_and_check(self, row: int, req: Request, token: int, lp: float) -> None:
        assert self._last is not None
        self._last[row] = token
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if req.end_id is not None and req.end_id >= 0 and token == req.end_id:
            self._finish(req, FINISH_STOP)  # like TensorRT-LLM, the end token is not returned
            return
        req.output.append(token)
        if req.return_log_probs:
            req.output_log_probs.append(lp)
        req._pending.append(token)
        if req.return_log_probs:
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
        req.on_event(Event(req, tokens, lps, finished, error))

    def _finish(self, req: Request, reason: str, error: str | None = None) -> None:
        req.cancelled = req.cancelled or reason == FINISH_CANCELLED
        req.finish_reason = reason
        self._flush(req, reason, error)

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.finish_reason is None and not r.cancelled]
        for r in self._rows:
            if r.cancelled and r.finish_reason is None:
                self._finish(r, FINISH_CANCELLED)
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
        """Append ``req``'s prefilled KV (length ``n``) to the running batch, left-padding."""
        new_layers = _cache_layers(cache)
        token_slot = torch.zeros(1, dtype=torch.long, device=self.device)
        pos = torch.tensor([n], dtype=torch.long, device=self.device)
        if not self._rows:
            self._rows = [req]
            self._cache = cache
            self._mask = torch.ones((1, n), dtype=torch.long, device=self.device)
            self._next_pos, self._last = pos, token_slot
            return
        assert self._mask is not None and self._next_pos is not None and self._last is not None
        cur = self._mask.shape[1]
        width = max(cur, n)
        old_layers = _cache_layers(self._cache)
        for old, new in zip(old_layers, new_layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat(
                [_left_pad(old.values, width), _left_pad(new.values, width)], dim=0
            )
        new_mask = torch.zeros((1, width), dtype=self._mask.dtype, device=self.device)
        new_mask[:, width - n :] = 1
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), new_mask], dim=0)
        self._next_pos = torch.cat([self._next_pos, pos])
        self._last = torch.cat([self._last, token_slot])
        self._rows.append(req)

    def _fail_all(self, admitted: list[Request], message: str) -> None:
        victims = {id(r): r for r in [*self._rows, *admitted]}
        with self._cv:
            if self._stop:
                victims.update({id(r): r for r in self._queue})
                self._queue.clear()
        for r in victims.values():
            if r.finish_reason is None:
                self._finish(r, FINISH_ERROR, message)
        self._rows, self._cache, self._mask, self._next_pos, self._last = [], None, None, None, None

    # -- sampling ---------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> tuple[list[int], list[float]]:
        """One token per row. Greedy rows without penalties take a vectorised argmax."""
        need_lp = any(r.return_log_probs for r in reqs)
        simple = all(
            r.sampling.greedy
            and not r.sampling.penalised
            and not r.bad_words
            and r.sampling.min_tokens <= len(r.output)
            for r in reqs
        )
        if simple:
            tokens = logits.argmax(dim=-1)
            lps = (
                torch.log_softmax(logits, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
                if need_lp
                else [0.0] * len(reqs)
            )
            return tokens.tolist(), lps
        out_t, out_lp = [], []
        for i, req in enumerate(reqs):
            row = _process_logits(logits[i].clone(), req)
            s = req.sampling
            if s.greedy:
                tok = int(row.argmax())
                lp = float(torch.log_softmax(row, dim=-1)[tok]) if req.return_log_probs else 0.0
            else:
                row = row / max(s.temperature, 1e-6)
                row = _top_k_top_p(row, s.top_k, s.top_p)
                probs = torch.softmax(row, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=req._generator))
                lp = float(torch.log(probs[tok])) if req.return_log_probs else 0.0
            out_t.append(tok)
            out_lp.append(lp)
        return out_t, out_lp


# -- helpers ------------------------------------------------------------------------------------
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
    s = req.sampling
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
