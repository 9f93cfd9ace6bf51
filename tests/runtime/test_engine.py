"""The portable runtime's continuous-batching engine, in process (no Triton)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Reference
from trtbuild.runtime import engine as engine_module
from trtbuild.runtime.engine import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    TOKENS_PER_BLOCK,
    Engine,
    EngineDead,
    EngineLimits,
    Event,
    QueueFull,
    Request,
    RequestError,
    Sampling,
    kv_blocks,
    merge_events,
)

# "fused": the slot layout with trtbuild.runtime.fused's layers (eager on CPU; CUDA compiles them);
# "async": the slot layout launching each decode step before the last one's tokens are handed out,
# its small prefills through the bucketed path CUDA graphs capture (both on by default on CUDA only;
# eager here); "mixed": fused layers and async steps with arrivals prefilled inside decode steps,
# decode steps of 2 rows or more attending through flex attention (its eager reference here), and
# the layers writing the KV cache in their rotary kernel (fused_kv_writes)
LAYOUTS = ["slots", "fused", "async", "mixed", "dynamic"]


def layout_kwargs(layout: str) -> dict[str, object]:
    if layout == "fused":
        return {"kv_cache": "slots", "fused_layers": True, "async_decode": False}
    if layout == "mixed":  # "async" with fused layers, which mixed prefills need
        return {
            **layout_kwargs("async"),
            "fused_layers": True,
            "mixed_prefill_tokens": 256,
            "flex_decode_batch": 2,
            "fused_kv_writes": True,
        }
    if layout == "async":
        return {
            "kv_cache": "slots",
            "fused_layers": False,
            "async_decode": True,
            "prefill_graphs": True,
        }
    return {"kv_cache": layout, "fused_layers": False, "async_decode": False}


@pytest.fixture(scope="module", params=LAYOUTS)
def engine(tiny_model: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(
            max_batch_size=4, max_seq_len=256, max_num_tokens=256, max_queue_size=8
        ),
        **layout_kwargs(request.param),  # type: ignore[arg-type]
    )
    assert eng.kv_layout == layout_kwargs(request.param)["kv_cache"]
    assert eng.fused_layers == (request.param in ("fused", "mixed"))
    eng.start()
    eng.warmup()
    yield eng
    eng.stop()


def collect(engine: Engine, prompt: list[int], n: int, **kw) -> tuple[list[int], list[Event]]:  # type: ignore[no-untyped-def]
    events: list[Event] = []
    done = threading.Event()

    def on_event(ev: Event) -> None:
        events.append(ev)
        if ev.finished:
            done.set()

    engine.submit(Request(prompt=prompt, max_new_tokens=n, on_event=on_event, **kw))
    assert done.wait(60)
    return [t for ev in events for t in ev.tokens], events


def test_staggered_concurrent_requests_match_generate(engine: Engine, reference: Reference) -> None:
    """More requests than batch slots, joining mid-flight, prompt lengths 3..160."""
    prompts = [
        [1] + [(i * 13 + j * 7) % 1500 + 5 for j in range(n)]
        for i, n in enumerate([2, 15, 42, 160, 6, 90])
    ]
    expected = [reference.greedy(p, 24) for p in prompts]
    results: list[list[int] | None] = [None] * len(prompts)

    def run(i: int) -> None:
        time.sleep(0.005 * i)
        results[i] = collect(engine, prompts[i], 24, end_id=-1)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_streaming_sends_each_token_and_one_final_event(
    engine: Engine, reference: Reference
) -> None:
    tokens, events = collect(engine, [1, 50, 60], 10, end_id=-1)
    assert tokens == reference.greedy([1, 50, 60], 10)
    assert [ev.finished for ev in events] == [None] * 9 + [FINISH_LENGTH]
    assert all(len(ev.tokens) == 1 for ev in events)


def test_non_streaming_sends_one_event(engine: Engine) -> None:
    tokens, events = collect(engine, [1, 50, 60], 10, end_id=-1, stream=False)
    assert len(events) == 1 and len(tokens) == 10 and events[0].finished == FINISH_LENGTH


def test_end_id_stops_and_is_not_returned(engine: Engine, reference: Reference) -> None:
    full = reference.greedy([1, 70, 80], 12)
    k = next(i for i in range(2, 12) if full[i] not in full[:i])
    tokens, events = collect(engine, [1, 70, 80], 12, end_id=full[k])
    assert tokens == full[:k] and events[-1].finished == FINISH_STOP


def test_stop_words_stop_after_the_word(engine: Engine, reference: Reference) -> None:
    full = reference.greedy([1, 90, 91], 16)
    word = full[5:7]
    tokens, events = collect(
        engine, [1, 90, 91], 16, end_id=-1, stop_words=[[full[0], full[0], full[0]], word]
    )
    first = next(i for i in range(1, 16) if full[i - 1 : i + 1] == word)
    assert tokens == full[: first + 1] and events[-1].finished == FINISH_STOP


def test_bad_words_and_min_tokens_change_the_choice(engine: Engine, reference: Reference) -> None:
    full = reference.greedy([1, 100, 101], 4)
    tokens, _ = collect(engine, [1, 100, 101], 4, end_id=-1, bad_words=[[full[0]]])
    assert tokens[0] != full[0]
    tokens, events = collect(
        engine, [1, 100, 101], 6, end_id=full[0], sampling=Sampling(min_tokens=3)
    )
    assert tokens[0] != full[0] and len(tokens) >= 3


def test_cancel_frees_the_slot(engine: Engine) -> None:
    events: list[Event] = []
    req = Request(prompt=[1, 5, 6], max_new_tokens=200, on_event=events.append, end_id=-1)
    engine.submit(req)
    while len(events) < 3:
        time.sleep(0.001)
    engine.cancel(req)
    deadline = time.monotonic() + 10
    while not (events and events[-1].finished) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert events[-1].finished == FINISH_CANCELLED
    assert len(req.output) < 200
    time.sleep(0.05)
    assert engine.active == 0


@pytest.mark.parametrize(
    ("prompt", "n", "message"),
    [
        ([], 4, "prompt is empty"),
        ([1, 2], 0, "request_output_len must be >= 1"),
        ([1, 2], 255, "exceeds max_seq_len 256"),
        ([1, 10**7], 4, "outside the vocabulary"),
        ([1, -2], 4, "outside the vocabulary"),
    ],
)
def test_invalid_requests_are_refused(
    engine: Engine, prompt: list[int], n: int, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        engine.submit(Request(prompt=prompt, max_new_tokens=n, on_event=lambda ev: None))


def test_queue_limit_counts_only_requests_waiting_beyond_the_free_slots(tiny_model: Path) -> None:
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=16, max_seq_len=64, max_num_tokens=64, max_queue_size=8),
    )
    # not started: nothing drains the queue. 16 free slots + 8 waiting: a burst of 24 fits
    for _ in range(24):
        eng.submit(Request(prompt=[1, 2], max_new_tokens=4, on_event=lambda ev: None))
    with pytest.raises(
        QueueFull, match=r"8 requests already wait beyond the 16 batch slots"
    ) as exc:
        eng.submit(Request(prompt=[1, 2], max_new_tokens=4, on_event=lambda ev: None))
    assert "(retryable)" in str(exc.value) and "retry later" in str(exc.value)
    # all or nothing for a multi-sequence request
    with pytest.raises(QueueFull):
        eng.submit_many([Request(prompt=[1], max_new_tokens=1, on_event=lambda ev: None)] * 2)
    assert eng.waiting == 24


def test_seeded_sampling_is_deterministic_and_seed_dependent(engine: Engine) -> None:
    def sample(seed: int) -> list[int]:
        s = Sampling(temperature=1.0, top_k=50, top_p=0.95, seed=seed)
        return collect(engine, [1, 5, 6], 12, end_id=-1, sampling=s)[0]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_limits_beyond_the_model_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Engine(str(tiny_model), limits=EngineLimits(max_seq_len=10**6))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sampling": Sampling(temperature=float("nan"))}, "temperature must be a finite number"),
        ({"sampling": Sampling(temperature=-1.0)}, "temperature must be >= 0"),
        ({"sampling": Sampling(top_p=1.5)}, r"runtime_top_p \(top_p\) must be in \[0, 1\]"),
        ({"sampling": Sampling(top_k=10**9)}, r"must be in \[0, 2048\]"),
        ({"sampling": Sampling(presence_penalty=-1e39)}, "presence_penalty must be a finite"),
        ({"sampling": Sampling(repetition_penalty=0.0)}, "repetition_penalty must be > 0"),
        ({"sampling": Sampling(min_tokens=10**6)}, r"min_tokens must be in \[0, 256\]"),
        ({"end_id": 10**6}, r"end_id must be -1 or a token id in \[0, 2048\)"),
        ({"stop_words": [[5, 10**6]]}, "stop_words holds a token id outside the vocabulary"),
        ({"bad_words": [[-3]]}, "bad_words holds a token id outside the vocabulary"),
        ({"embedding_bias": [0.0] * 7}, "embedding_bias .* has 7 values"),
    ],
    ids=[
        "nan-temp",
        "neg-temp",
        "top-p",
        "top-k",
        "neg-inf-presence",
        "rep-0",
        "min-tokens",
        "end-id",
        "stop-id",
        "bad-id",
        "bias-size",
    ],  # fmt: skip
)
def test_poisoned_sampling_values_are_refused_at_submit(
    engine: Engine, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        engine.submit(Request(prompt=[1, 2], max_new_tokens=4, on_event=lambda ev: None, **changes))  # type: ignore[arg-type]


# -- isolation: a failure while computing one request fails that request alone -------------------
@pytest.fixture(params=LAYOUTS)
def fresh(tiny_model: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """An engine of its own, for tests that break parts of it."""
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(
            max_batch_size=8, max_seq_len=256, max_num_tokens=256, max_queue_size=8
        ),
        **layout_kwargs(request.param),  # type: ignore[arg-type]
    )
    eng.start()
    yield eng
    eng.stop()


def break_forward(engine: Engine, monkeypatch: pytest.MonkeyPatch, fail) -> None:  # type: ignore[no-untyped-def]
    """Make the engine's forward passes raise where ``fail(kind, input_ids)`` says so, after
    computing (so a decode step's KV appends have happened); ``kind``: prefill or decode."""
    if engine.kv_layout == "slots":
        module = engine.model.get_decoder()  # the slot layout runs the decoder, then lm_head

        def kind(kwargs) -> str:  # type: ignore[no-untyped-def]
            return "prefill" if kwargs.get("attention_mask") is None else "decode"
    else:
        module = engine.model

        def kind(kwargs) -> str:  # type: ignore[no-untyped-def]
            return "prefill" if kwargs.get("past_key_values") is None else "decode"

    forward = module.forward

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = forward(*args, **kwargs)
        if fail(kind(kwargs), kwargs["input_ids"]):
            raise RuntimeError(f"simulated {kind(kwargs)} failure")
        return out

    monkeypatch.setattr(module, "forward", flaky)


class Run:
    """One request's events, submitted without waiting."""

    def __init__(self, engine: Engine, prompt: list[int], n: int, **kw) -> None:  # type: ignore[no-untyped-def]
        self.events: list[Event] = []
        self.done = threading.Event()
        self.request = Request(prompt=prompt, max_new_tokens=n, on_event=self._on, **kw)
        engine.submit(self.request)

    def _on(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.finished:
            self.done.set()

    def wait(self) -> Run:
        assert self.done.wait(60)
        return self

    @property
    def tokens(self) -> list[int]:
        return [t for ev in self.events for t in ev.tokens]

    @property
    def error(self) -> str | None:
        return self.events[-1].error if self.events else None


INNOCENT = [[1, 20 + i, 30 + i, 40 + i] for i in range(3)]


def _innocents(engine: Engine) -> list[Run]:
    return [Run(engine, p, 24, end_id=-1) for p in INNOCENT]


def _assert_innocents_unharmed(runs: list[Run], reference: Reference) -> None:
    for run, prompt in zip(runs, INNOCENT, strict=True):
        run.wait()
        assert run.error is None and run.events[-1].finished == FINISH_LENGTH
        assert run.tokens == reference.greedy(prompt, 24)


def test_logits_that_become_all_minus_inf_fail_that_request_alone(
    fresh: Engine, reference: Reference
) -> None:
    runs = _innocents(fresh)
    bias = [float("-inf")] * fresh.vocab_size  # allowed (-inf bans a token), but bans them all
    poisoned = Run(fresh, [1, 7, 8], 24, end_id=-1, embedding_bias=bias).wait()
    assert poisoned.events[-1].finished == FINISH_ERROR
    assert "NaN, +inf or all -inf after its sampling parameters" in (poisoned.error or "")
    sampled = Run(fresh, [1, 7, 8], 24, end_id=-1, embedding_bias=bias,
                  sampling=Sampling(temperature=0.7, top_k=5, seed=1)).wait()  # fmt: skip
    assert "all -inf" in (sampled.error or "")
    _assert_innocents_unharmed(runs, reference)


def test_a_row_whose_processing_raises_fails_alone(fresh: Engine, reference: Reference) -> None:
    runs = _innocents(fresh)
    broken = Run(fresh, [1, 9, 9], 24, end_id=-1)
    broken.request.bad_words = [[10**9]]  # past validation, as a bug would be: indexing raises
    broken.wait()
    assert broken.events[-1].finished == FINISH_ERROR and "sampling failed" in (broken.error or "")
    _assert_innocents_unharmed(runs, reference)


def test_a_prefill_that_raises_fails_its_request_only(
    fresh: Engine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    culprit = torch.arange(1, 12)

    def fail(kind, ids):  # type: ignore[no-untyped-def]
        # the culprit's prompt in any row: batched with others, only it must fail
        return (
            kind == "prefill" and ids.shape[1] >= 11 and bool((ids[:, :11] == culprit).all(1).any())
        )

    break_forward(fresh, monkeypatch, fail)
    runs = _innocents(fresh)
    failed = Run(fresh, list(range(1, 12)), 8, end_id=-1).wait()
    assert failed.error == "prefill failed: RuntimeError: simulated prefill failure"
    _assert_innocents_unharmed(runs, reference)
    later = Run(fresh, [1, 50, 60], 6, end_id=-1).wait()
    assert later.tokens == reference.greedy([1, 50, 60], 6)


def test_a_batched_prefill_that_raises_is_retried_one_request_at_a_time(
    tiny_model: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    eng = Engine(
        str(tiny_model), limits=EngineLimits(max_batch_size=8, max_seq_len=256), kv_cache="slots"
    )
    widths: list[int] = []

    def fail(kind, ids):  # type: ignore[no-untyped-def]
        if kind == "prefill":
            widths.append(ids.shape[0])
            return bool((ids[:, :3] == torch.tensor([1, 66, 67])).all(1).any())
        return False

    break_forward(eng, monkeypatch, fail)
    runs = [Run(eng, p, 8, end_id=-1) for p in ([1, 20, 30], [1, 66, 67], [1, 21, 31, 41, 51])]
    eng.start()  # all three are queued: one batched prefill, then one at a time
    try:
        for run in runs:
            run.wait()
    finally:
        eng.stop()
    assert widths[0] == 3 and widths[1:] == [1, 1, 1]
    assert runs[1].error == "prefill failed: RuntimeError: simulated prefill failure"
    for run in (runs[0], runs[2]):
        assert run.error is None and run.tokens == reference.greedy(run.request.prompt, 8)


def test_a_failed_decode_step_drops_the_newest_row_and_retries(
    fresh: Engine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    armed = threading.Event()
    failures = []

    def fail(kind, ids):  # type: ignore[no-untyped-def]
        # after computing: the KV cache grew first, so the retry must cut it back
        if armed.is_set() and kind == "decode" and len(fresh._rows) == 4:
            armed.clear()
            failures.append(len(fresh._rows))
            return True
        return False

    break_forward(fresh, monkeypatch, fail)
    runs = _innocents(fresh)
    while not all(r.events for r in runs):
        time.sleep(0.001)
    armed.set()
    newest = Run(fresh, [1, 70, 71, 72, 73, 74], 24, end_id=-1).wait()
    assert failures == [4]
    assert newest.events[-1].finished == FINISH_ERROR
    assert "simulated decode failure" in (newest.error or "") and "most recently admitted" in (
        newest.error or ""
    )
    _assert_innocents_unharmed(runs, reference)


def test_a_merge_that_fails_half_way_leaves_the_batch_as_it_was(
    fresh: Engine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fresh.kv_layout != "dynamic":
        pytest.skip("only the dynamic layout merges caches (slots: test_a_reused_slot...)")
    pad = engine_module._left_pad
    calls = {"n": 0}
    merge = fresh._merge

    def failing_merge(req, cache, n):  # type: ignore[no-untyped-def]
        if len(req.prompt) != 13:
            return merge(req, cache, n)
        calls["n"] = 0

        def pad_then_fail(t, width, dim=2):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 6:  # the mask and two layers are merged by then
                raise RuntimeError("simulated out of memory")
            return pad(t, width, dim)

        monkeypatch.setattr(engine_module, "_left_pad", pad_then_fail)
        try:
            return merge(req, cache, n)
        finally:
            monkeypatch.setattr(engine_module, "_left_pad", pad)

    monkeypatch.setattr(fresh, "_merge", failing_merge)
    runs = _innocents(fresh)
    while not all(r.events for r in runs):
        time.sleep(0.001)
    failed = Run(fresh, list(range(1, 14)), 8, end_id=-1).wait()
    assert "simulated out of memory" in (failed.error or "")
    _assert_innocents_unharmed(runs, reference)


def test_a_dead_engine_thread_answers_every_pending_and_later_request(tiny_model: Path) -> None:
    fatal: list[str] = []
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=2, max_seq_len=256, max_num_tokens=256),
        on_fatal=fatal.append,
    )
    eng.start()
    running = [Run(eng, [1, 5, 6 + i], 200, end_id=-1) for i in range(2)]
    while not all(r.events for r in running):
        time.sleep(0.001)
    queued = Run(eng, [1, 5, 9], 4, end_id=-1)  # no free slot: it waits

    def boom() -> list[Request]:
        raise RuntimeError("bookkeeping bug")

    eng._admit_locked = boom  # type: ignore[method-assign]
    eng.cancel(running[0].request)  # wakes the loop
    for run in [*running, queued]:
        run.wait()
        assert run.events[-1].finished in (FINISH_ERROR, FINISH_CANCELLED)
    assert queued.events[-1].finished == FINISH_ERROR
    assert "engine thread died (RuntimeError: bookkeeping bug)" in (queued.error or "")
    eng._thread.join(10)
    assert fatal == ["RuntimeError: bookkeeping bug"]
    with pytest.raises(EngineDead, match="engine thread died"):
        eng.submit(Request(prompt=[1, 2], max_new_tokens=2, on_event=lambda ev: None))


# -- embedding bias and perf accounting -------------------------------------------------------------
def test_embedding_bias_changes_greedy_exactly_like_a_logits_bias(
    engine: Engine, reference: Reference
) -> None:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    prompt = [1, 111, 222, 333]
    plain = reference.greedy(prompt, 12)
    bias = torch.zeros(engine.vocab_size)
    bias[plain[1]] = -1e4  # the second token is never chosen again
    bias[plain[0] + 1] = 3.0

    class Add(LogitsProcessor):
        def __call__(self, input_ids, scores):  # type: ignore[no-untyped-def]
            return scores + bias

    with torch.no_grad():
        out = reference.model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
            pad_token_id=3, logits_processor=LogitsProcessorList([Add()]),
        )  # fmt: skip
    expected = out[0][len(prompt) :].tolist()
    assert expected != plain  # the bias matters
    got, _ = collect(engine, prompt, 12, end_id=-1, embedding_bias=bias.tolist())
    assert got == expected


def test_events_carry_kv_accounting_and_times(engine: Engine) -> None:
    start = time.monotonic_ns()
    tokens, events = collect(engine, list(range(1, 40)), 30, end_id=-1)
    req = events[-1].request
    assert [ev.kv_tokens for ev in events] == [39 + i for i in range(30)]
    assert kv_blocks(events[-1].kv_tokens) == -(-(39 + 29) // TOKENS_PER_BLOCK) == 3
    assert start <= req.scheduled_ns <= req.first_token_ns <= req.last_token_ns
    assert events[-1].token_ns == req.last_token_ns


# -- the slot layout -----------------------------------------------------------------------------------
def test_rows_finishing_at_different_steps_keep_their_own_cache(
    engine: Engine, reference: Reference
) -> None:
    """Finished rows leave holes that the last rows move into; every stream stays exact."""
    lengths = [3, 24, 7, 15, 1, 30, 9]
    prompts = [[1] + [(i * 11 + j * 5) % 1700 + 7 for j in range(4 + 6 * i)] for i in range(7)]
    runs = [Run(engine, p, n, end_id=-1) for p, n in zip(prompts, lengths, strict=True)]
    for run, prompt, n in zip(runs, prompts, lengths, strict=True):
        assert run.wait().tokens == reference.greedy(prompt, n)


@pytest.mark.parametrize("prefill_graphs", [False, True])
def test_a_reused_slot_is_zeroed_past_the_new_prompt(
    tiny_model: Path, reference: Reference, prefill_graphs: bool
) -> None:
    """What a request left in its slot, even NaN, never reaches the slot's next request (also
    when the bucketed prefill writes padding past the new prompt)."""
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=1, max_seq_len=256),
        kv_cache="slots",
        prefill_graphs=prefill_graphs,
    )
    eng.start()
    try:
        Run(eng, list(range(1, 101)), 12, end_id=-1).wait()
        assert eng.slots is not None and eng.slots.dirty[0] >= 111
        eng.slots.kv[:, :, 0, : eng.slots.dirty[0]] = float("nan")  # as a poisoned model would
        run = Run(eng, [1, 33, 44, 55], 24, end_id=-1).wait()
        assert run.error is None and run.tokens == reference.greedy([1, 33, 44, 55], 24)
    finally:
        eng.stop()


def _started_slot_engine(tiny_model: Path, max_seq_len: int, **kwargs: object) -> Engine:
    """A started slot-layout engine of 4 rows (transformers' layers) with ``kwargs``."""
    limits = EngineLimits(max_batch_size=4, max_seq_len=max_seq_len, max_num_tokens=256)
    return Engine(
        str(tiny_model),
        limits=limits,
        kv_cache="slots",
        fused_layers=False,
        **kwargs,  # type: ignore[arg-type]
    ).start()


def test_async_decode_chains_steps_and_hands_out_exactly_each_rows_tokens(
    tiny_model: Path, reference: Reference
) -> None:
    """Steps launched on the last one's device argmax: rows that end at different steps (one
    at max_seq_len: its extra step writes the last position of its own slot), a request that
    arrives while steps chain, a slot reused after an extra step, and one that samples (which
    stops the chaining) all get exactly generate's tokens."""
    eng = _started_slot_engine(tiny_model, 64, async_decode=True)
    try:
        prompts = [[1] + [(i * 13 + j * 7) % 1700 + 7 for j in range(3 + 5 * i)] for i in range(4)]
        lengths = [2, 40, 11, 64 - len(prompts[3])]
        runs = [Run(eng, p, n, end_id=-1) for p, n in zip(prompts, lengths, strict=True)]
        while not runs[1].events:
            time.sleep(0.001)
        late = [1, 99, 98, 97, 96]
        joined = Run(eng, late, 20, end_id=-1)
        sampled = Run(eng, [1, 5, 6, 7], 6, end_id=-1, sampling=Sampling(top_k=5, seed=3))
        for run, prompt, n in zip(runs, prompts, lengths, strict=True):
            assert run.wait().tokens == reference.greedy(prompt, n)
            assert run.events[-1].finished == FINISH_LENGTH
        assert joined.wait().tokens == reference.greedy(late, 20)
        assert sampled.wait().error is None and len(sampled.tokens) == 6
        assert eng.chained_steps > 0 and eng.steps > eng.chained_steps
        reused = Run(eng, [1, 42, 43], 30, end_id=-1).wait()
        assert reused.tokens == reference.greedy([1, 42, 43], 30)
        assert not eng._inflight
    finally:
        eng.stop()


@pytest.mark.parametrize("async_decode", [False, True])
def test_admission_wait_lets_a_burst_join_in_one_prefill(
    tiny_model: Path, reference: Reference, async_decode: bool
) -> None:
    """While rows decode, a lone arrival waits out admission_wait_ms; arrivals that fill every
    free row join at once, in one prefill; the outputs stay exact."""
    eng = _started_slot_engine(tiny_model, 2048, async_decode=async_decode, admission_wait_ms=400)
    try:
        running = Run(eng, [1, 9, 8, 7], 2000, end_id=-1)  # decodes until cancelled below
        while not running.events:
            time.sleep(0.001)
        lone = Run(eng, [1, 5, 6], 4, end_id=-1)
        assert lone.wait().tokens == reference.greedy([1, 5, 6], 4)
        waited = lone.request.scheduled_ns / 1e9 - _perf_to_monotonic(lone.request.submitted_at)
        assert waited >= 0.35, f"joined after {waited:.3f} s, not after the 0.4 s wait"
        while eng.active != 1:  # the lone row has left: three rows are free
            time.sleep(0.001)
        before = eng.prefills
        burst = [Run(eng, [1, 40 + i, 41 + i], 6, end_id=-1) for i in range(3)]  # 3 free rows
        for run, i in zip(burst, range(3), strict=True):
            assert run.wait().tokens == reference.greedy([1, 40 + i, 41 + i], 6)
        assert eng.prefills - before == 1 and len({r.request.scheduled_ns for r in burst}) == 1
        assert not running.done.is_set()  # it decoded all along
        eng.cancel(running.request)
        assert running.wait().events[-1].finished == FINISH_CANCELLED
    finally:
        eng.stop()


def _perf_to_monotonic(perf_s: float) -> float:
    """A time.perf_counter() reading on time.monotonic()'s clock (seconds)."""
    return perf_s + (time.monotonic() - time.perf_counter())


def test_bucketed_prefills_pad_into_the_scratch_slot_only(
    tiny_model: Path, reference: Reference
) -> None:
    """Small prefills go through (requests, width) buckets: three prompts fill a bucket of four
    rows whose padding row writes the scratch slot, never a free slot; their slots are reused;
    a group too large for any bucket takes the unbucketed prefill; every output equals
    generate's."""
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=8, max_seq_len=256, max_num_tokens=512),
        kv_cache="slots",
        fused_layers=False,
        prefill_graphs=True,
    )
    assert eng.slots is not None and eng.slots.num_slots == 9  # 8 rows + the scratch slot
    assert eng.prefill_buckets[0] == (1, 64) and max(k * w for k, w in eng.prefill_buckets) <= 512
    scratch = eng.slots.kv[:, :, 8]
    scratch.fill_(float("nan"))  # no row reads it: what a padding row writes replaces this
    prompts = [[1] + [(i * 17 + j * 3) % 1700 + 9 for j in range(5 + 7 * i)] for i in range(3)]
    firsts = [Run(eng, p, 1, end_id=-1) for p in prompts]  # queued before the engine starts
    eng.start()
    try:
        for run, p in zip(firsts, prompts, strict=True):
            assert run.wait().tokens == reference.greedy(p, 1)
        # the padding row of the (4, 64) bucket wrote positions 0..63 of the scratch slot
        assert eng.prefilled == 3 and not bool(scratch[:, :, :64].isnan().any())
        assert bool(scratch[:, :, 64:].isnan().all())
        assert float(eng.slots.kv[:, :, 3:8].abs().sum()) == 0  # no free slot was touched
        runs = [Run(eng, p, 12, end_id=-1) for p in prompts]
        for run, p in zip(runs, prompts, strict=True):
            assert run.wait().tokens == reference.greedy(p, 12)
        # three prompts of 130 tokens (width 136) in one group: no bucket of <= 512 tokens holds it
        long_prompts = [[1] + [(j * 7) % 1700 + 3 + i for j in range(129)] for i in (1, 2, 4)]
        assert not any(k >= 3 and w >= 136 for k, w in eng.prefill_buckets)
        got: list[list[int]] = [[], [], []]
        done = threading.Semaphore(0)

        def on_event(ev: Event) -> None:
            got[ev.request.tag].extend(ev.tokens)
            if ev.finished:
                done.release()

        before = eng.prefills
        eng.submit_many(
            [
                Request(prompt=p, max_new_tokens=8, end_id=-1, on_event=on_event, tag=i)
                for i, p in enumerate(long_prompts)
            ]
        )
        for _ in long_prompts:
            assert done.acquire(timeout=60)
        assert eng.prefills - before == 1
        assert got == [reference.greedy(p, 8) for p in long_prompts]
    finally:
        eng.stop()


def _mixed_engine(tiny_model: Path, max_batch_size: int) -> Engine:
    """A slot engine (not started) with fused layers, async_decode and mixed prefills of 256
    tokens; max_seq_len and max_num_tokens 512."""
    return Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=max_batch_size, max_seq_len=512, max_num_tokens=512),
        kv_cache="slots",
        fused_layers=True,
        async_decode=True,
        mixed_prefill_tokens=256,
    )


def test_arrivals_are_prefilled_inside_decode_steps(tiny_model: Path, reference: Reference) -> None:
    """While a row decodes, arrivals that fit a mixed bucket are prefilled in the same forward as
    its next step, launched while the last step is in flight: alone, two at once (one bucket of
    two), three into a bucket of four whose padding row writes the scratch slot only; they take
    the rows of requests that ended without the steps draining; a prompt wider than every mixed
    bucket is prefilled on its own; every output equals generate's."""
    eng = _mixed_engine(tiny_model, max_batch_size=8)
    assert sorted(eng.mixed_buckets) == [(1, 64), (1, 128), (1, 256), (2, 64), (2, 128), (4, 64)]
    assert eng.prefill_buckets == []  # prefill_graphs off: prefills on their own are unbucketed
    assert eng.slots is not None and eng.slots.num_slots == 9  # 8 rows + the scratch slot
    scratch = eng.slots.kv[:, :, 8]
    scratch.fill_(float("nan"))  # no row reads it
    eng.start()
    try:
        running = Run(eng, [1, 9, 8, 7], 500, end_id=-1)  # decodes until cancelled below
        while not running.events:
            time.sleep(0.001)
        synced = eng.synced_launches
        alone = Run(eng, [1, 5, 6, 7, 8], 10, end_id=-1).wait()
        assert alone.tokens == reference.greedy([1, 5, 6, 7, 8], 10)
        assert eng.mixed_steps == 1 and eng.prefilled == 2
        pair = [[1] + [(j * 11 + i) % 1700 + 4 for j in range(70 + i)] for i in range(2)]
        trio = [[1] + [(j * 5 + i) % 1700 + 6 for j in range(3 + 20 * i)] for i in range(3)]
        before = eng.mixed_steps
        got: list[list[int]] = [[] for _ in range(5)]
        done = threading.Semaphore(0)

        def on_event(ev: Event) -> None:
            got[ev.request.tag].extend(ev.tokens)
            if ev.finished:
                done.release()

        for group, first in ((pair, 0), (trio, 2)):
            eng.submit_many(
                [
                    Request(prompt=p, max_new_tokens=9, end_id=-1, on_event=on_event, tag=first + i)
                    for i, p in enumerate(group)
                ]
            )
            for _ in group:
                assert done.acquire(timeout=60)
        assert got == [reference.greedy(p, 9) for p in pair + trio]
        assert eng.mixed_steps - before == 2  # one step each group, as it arrived whole
        assert eng.synced_launches == synced  # every one launched while a step was in flight
        assert len(eng._rows) <= 4  # the pair and the trio took the rows of those that ended
        assert not bool(scratch[:, :, :64].isnan().any())  # the trio's padding row wrote it
        assert bool(scratch[:, :, 128:].isnan().all())
        wide = [1] + [(j * 3) % 1700 + 2 for j in range(299)]  # width 304: wider than 256
        before, prefills = eng.mixed_steps, eng.prefills
        assert Run(eng, wide, 8, end_id=-1).wait().tokens == reference.greedy(wide, 8)
        assert eng.mixed_steps == before and eng.prefills == prefills + 1
        assert not running.done.is_set()  # it decoded all along
        eng.cancel(running.request)
        assert running.wait().events[-1].finished == FINISH_CANCELLED
        assert running.tokens == reference.greedy([1, 9, 8, 7], len(running.tokens))
    finally:
        eng.stop()


def test_a_request_taking_an_ended_row_gets_a_clean_slot(
    tiny_model: Path, reference: Reference
) -> None:
    """A row that ended is fed on (at later positions) until a request takes it; the mixed step
    that prefills that request writes the ended row's decode token into the scratch slot, not
    into the slot it hands over: past what the new request wrote, the slot stays zero."""
    eng = _mixed_engine(tiny_model, max_batch_size=4).start()
    seen: list[tuple[int, bool]] = []

    def check(ev: Event) -> None:  # on the engine thread, as the first token is handed out
        if not seen:
            assert eng.slots is not None
            row = eng._rows.index(ev.request)
            clean = bool((eng.slots.kv[:, :, row, eng.slots.dirty[row] :] == 0).all())
            seen.append((row, clean))

    try:
        runner = Run(eng, [1, 9, 8, 7], 400, end_id=-1)
        short = Run(eng, [1, 3, 4, 5], 3, end_id=-1).wait()
        while len(runner.tokens) < 150:  # the ended row is fed well past a 64-wide prompt
            time.sleep(0.001)
        ended_row = eng._rows.index(short.request)
        got: list[int] = []
        done = threading.Event()

        def on_event(ev: Event) -> None:
            check(ev)
            got.extend(ev.tokens)
            if ev.finished:
                done.set()

        eng.submit(Request(prompt=[1, 6, 7, 8, 9], max_new_tokens=2, on_event=on_event, end_id=-1))
        assert done.wait(60) and got == reference.greedy([1, 6, 7, 8, 9], 2)
        assert seen == [(ended_row, True)]
        eng.cancel(runner.request)
        runner.wait()
    finally:
        eng.stop()


def test_the_capture_inputs_of_mixed_steps_write_the_scratch_slot_only(tiny_model: Path) -> None:
    """What warm-up runs (and captures) for every mixed bucket writes no slot a row owns."""
    import torch

    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=4, max_seq_len=128, max_num_tokens=256),
        kv_cache="slots",
        fused_layers=True,
        mixed_prefill_tokens=128,
    )
    assert eng.slots is not None and eng.mixed_buckets
    kv = eng.slots.kv
    kv.fill_(1.0)
    with torch.inference_mode():
        for batch in eng.batch_buckets:
            for rows, width in eng.mixed_buckets:
                eng._load_scratch_mixed(batch, rows, width)
                eng._mixed_body(batch, eng.length_buckets[-1], rows, width)
    assert bool((kv[:, :, :-1] == 1.0).all())
    assert not bool((kv[:, :, -1, :64] == 1.0).any())


@pytest.mark.parametrize(
    ("option", "asked", "cuda_default"),
    [
        ("mixed_prefill_tokens", 128, 256),
        ("flex_decode_batch", 2, 32),
        ("fused_kv_writes", True, True),
    ],
)
def test_options_of_the_fused_layers_need_them_and_default_to_off_on_cpu(
    tiny_model: Path, option: str, asked: int, cuda_default: int
) -> None:
    with pytest.raises(ValueError, match=f"^{option} needs fused_layers"):
        Engine(
            str(tiny_model),
            limits=EngineLimits(max_batch_size=2, max_seq_len=64),
            kv_cache="slots",
            fused_layers=False,
            **{option: asked},  # type: ignore[arg-type]
        )
    eng = Engine(str(tiny_model), limits=EngineLimits(max_batch_size=2, max_seq_len=64))
    assert getattr(eng, option) == (cuda_default if eng.device.type == "cuda" else 0)
    assert eng.slots is not None and (eng.slots.flex is None) == (eng.flex_decode_batch == 0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, on torch.compile
def test_flex_decode_is_on_by_default_only_where_warm_up_compiles_every_bucket(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CUDA graphs every (batch, L) bucket's flex kernel compiles at capture; without them
    (or with compile_decode) the first request of each bucket would wait for it: off there."""
    import torch

    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=64, max_seq_len=128),
        kv_cache="slots",
        fused_layers=True,
    )
    monkeypatch.setattr(engine_module, "_triton_available", lambda: True)
    eng.device = torch.device("cuda")  # the decision alone: nothing runs on it
    assert eng.slots is not None
    eng._setup_flex(None, graphs=False)
    assert eng.flex_decode_batch == 0 and eng.slots.flex is None
    eng._setup_flex(None, graphs=True)
    assert eng.flex_decode_batch == engine_module.FLEX_DECODE_BATCH and eng.slots.flex is not None


def test_fused_kv_writes_default_to_where_the_fused_kernels_compile(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unasked, the rotary kernel writes the KV cache where the fused layers' kernels are
    compiled (CUDA with Triton, not under compile_decode); asked, as asked."""
    import torch

    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=2, max_seq_len=64),
        kv_cache="slots",
        fused_layers=False,
    )
    seen: list[tuple[bool, bool]] = []
    monkeypatch.setattr(
        engine_module._fused,
        "fuse",
        lambda *a, compile, kv_writes: seen.append((compile, kv_writes)),
    )
    monkeypatch.setattr(engine_module, "_triton_available", lambda: True)
    eng.device = torch.device("cuda")  # the decision alone: nothing runs on it
    for compile, asked in ((True, None), (False, None), (True, False), (False, True)):
        eng._fuse_layers(True, compile=compile, kv_writes=asked)
    assert seen == [(True, True), (False, False), (True, False), (False, True)]
    monkeypatch.setattr(engine_module, "_triton_available", lambda: False)
    eng._fuse_layers(True, compile=True, kv_writes=None)
    assert seen[-1] == (False, False) and eng.fused_kv_writes is False


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flex_decode_attention_computes_what_sdpa_does(dtype: str) -> None:
    """The slot decode attention through flex attention (its eager reference here) against
    SDPA's path: rows at different positions of their slots, the mask hiding what lies past
    each (garbage, here); below the flex threshold the SDPA path runs, bit for bit."""
    import torch

    kind = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, d, seq, length = 4, 8, 2, 16, 96, 64
    cache = engine_module._SlotCache(1, batch, seq, kv_heads, d, kind, torch.device("cpu"))
    cache.kv.copy_(torch.randn(cache.kv.shape, generator=gen).to(kind) * 4)
    pos = torch.tensor([0, 5, 37, 63])
    mask = engine_module._decode_mask(pos, torch.arange(length), kind)
    q = torch.randn(batch, 1, heads, d, generator=gen).to(kind).transpose(1, 2)
    key, value = (cache.kv[0, i].transpose(1, 2) for i in (0, 1))

    def attend(c: engine_module._SlotCache | None) -> torch.Tensor:
        return engine_module._decode_attention(c, q, key, value, mask, d**-0.5)

    want = attend(None)
    cache.flex, cache.flex_from = engine_module._flex_decoder(compiled=False), batch
    tol = {"atol": 2e-2, "rtol": 2e-2} if kind == torch.bfloat16 else {}
    torch.testing.assert_close(attend(cache), want, **tol)  # type: ignore[arg-type]
    cache.flex_from = batch + 1
    assert torch.equal(attend(cache), want)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_compiled_flex_attention_gets_the_kernel_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled flex decoder hands flex_attention FLEX_KERNEL_OPTIONS, or the options it was
    made with (what the bench's flex_tune phase and A/B pass); the eager reference none. The
    compiled function is the eager flex attention here, wrapped to record its keyword arguments."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    seen: list[object] = []
    real_compile = torch.compile

    def fake_compile(fn: Callable[..., torch.Tensor], **kw: object) -> Callable[..., torch.Tensor]:
        if fn is not flex_attention:  # the eager reference compiles its own parts
            return real_compile(fn, **kw)  # type: ignore[no-any-return, call-overload]

        def recorded(*args: object, **kwargs: object) -> torch.Tensor:
            seen.append(kwargs["kernel_options"])
            kwargs["kernel_options"] = None  # the eager reference takes none it does not know
            return fn(*args, **kwargs)

        return recorded

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(engine_module, "FLEX_KERNEL_OPTIONS", {"num_stages": 3})
    q = torch.randn(2, 4, 1, 16)
    key, value = torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    mask = engine_module._decode_mask(torch.tensor([3, 7]), torch.arange(8), torch.float32)
    outs = [
        engine_module._flex_decoder(compiled, options)((q, key, value), mask, None)
        for compiled, options in ((False, None), (True, None), (True, {"SPLIT_KV": 2}), (True, {}))
    ]
    assert all(torch.equal(out, outs[0]) for out in outs)
    assert seen == [{"num_stages": 3}, {"SPLIT_KV": 2}, None]
    assert engine_module.FLEX_KERNEL_OPTIONS == {"num_stages": 3}  # never changed by a caller


def test_a_flex_attention_that_fails_falls_back_to_sdpa(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    cache = engine_module._SlotCache(1, 2, 8, 1, 16, torch.float32, torch.device("cpu"))

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no kernel for this")

    cache.flex, cache.flex_from = broken, 1
    q, mask = (
        torch.randn(2, 2, 1, 16),
        engine_module._decode_mask(torch.tensor([3, 7]), torch.arange(8), torch.float32),
    )
    key, value = (cache.kv[0, i].transpose(1, 2) for i in (0, 1))
    got = engine_module._decode_attention(cache, q, key, value, mask, None)
    assert torch.equal(got, engine_module._decode_attention(None, q, key, value, mask, None))
    assert cache.flex is None and "flex attention failed" in caplog.text


def test_rows_carried_after_their_request_ended_are_counted(tiny_model: Path) -> None:
    """A row whose request ended rides along while another row keeps the steps chaining: each
    such step counts it once in ``ended_row_steps`` (none while a request waited: none did)."""
    eng = _mixed_engine(tiny_model, max_batch_size=2).start()
    try:
        running = Run(eng, [1, 9, 8, 7], 500, end_id=-1)  # decodes until cancelled below
        while not running.events:
            time.sleep(0.001)
        Run(eng, [1, 5, 6], 2, end_id=-1).wait()
        steps = eng.steps
        while eng.steps < steps + 5:
            time.sleep(0.001)
        assert eng.ended_row_steps >= 4
        assert eng.ended_row_steps_queued == 0
        eng.cancel(running.request)
        running.wait()
    finally:
        eng.stop()


def test_async_decode_is_on_by_default_only_on_cuda(tiny_model: Path) -> None:
    eng = Engine(str(tiny_model), limits=EngineLimits(max_batch_size=2, max_seq_len=64))
    assert eng.async_decode is (eng.device.type == "cuda")


def test_the_kv_budget_in_tokens_caps_the_batch(tiny_model: Path, reference: Reference) -> None:
    limits = EngineLimits(
        max_batch_size=8, max_seq_len=128, max_tokens_in_paged_kv_cache=3 * 128 + 5
    )
    eng = Engine(str(tiny_model), limits=limits, kv_cache="slots")
    assert eng.limits.max_batch_size == 3 and eng.batch_buckets == [1, 2, 3]
    assert eng.slots is not None and eng.slots.kv.shape[2:4] == (3, 128)
    assert eng.kv_cache_bytes == 3 * 128 * eng.kv_bytes_per_token
    cfg = eng.model.config
    assert (
        eng.kv_bytes_per_token
        == cfg.num_hidden_layers
        * 2
        * cfg.num_key_value_heads
        * (cfg.hidden_size // cfg.num_attention_heads)
        * 4
    )  # fp32 on CPU
    eng.start()
    try:
        runs = [Run(eng, [1, 9, 10 + i], 6, end_id=-1) for i in range(5)]  # 5 requests, 3 slots
        for i, run in enumerate(runs):
            assert run.wait().tokens == reference.greedy([1, 9, 10 + i], 6)
    finally:
        eng.stop()
    with pytest.raises(ValueError, match="KV-cache budget holds no sequence of max_seq_len 128"):
        Engine(
            str(tiny_model), limits=dataclasses.replace(limits, max_tokens_in_paged_kv_cache=100)
        )


def test_models_the_slot_layout_cannot_serve_exactly_get_the_dynamic_one(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.sliding_window = 16  # attention would have to forget: slots do not
    with pytest.raises(ValueError, match=r"sliding window \(16\) is shorter than max_seq_len 64"):
        Engine("", model=model, limits=EngineLimits(max_seq_len=64), kv_cache="slots")
    assert Engine("", model=model, limits=EngineLimits(max_seq_len=64)).kv_layout == "dynamic"
    model.config.sliding_window = None
    model.config.model_type = "gpt2"
    assert "model type 'gpt2'" in (engine_module._slots_unsupported(model, 64) or "")


def test_buckets() -> None:
    assert engine_module._buckets(64, 1) == [1, 2, 4, 8, 16, 32, 64]
    assert engine_module._buckets(48, 1) == [1, 2, 4, 8, 16, 32, 48]
    assert engine_module._buckets(256, 64) == [64, 128, 256]
    assert engine_module._buckets(1, 1) == [1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch's own
def test_the_compiled_decode_step_matches_generate(tiny_model: Path, reference: Reference) -> None:
    """compile_decode (opt-in): torch.compile with dynamic rows; one compilation for every batch
    above one, and the same tokens."""
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=4, max_seq_len=128),
        kv_cache="slots",
        compile_decode=True,
    )
    eng.start()
    try:
        prompts = [[1] + [(i * 17 + j * 3) % 1900 + 6 for j in range(3 + 11 * i)] for i in range(5)]
        runs = [Run(eng, p, 10, end_id=-1) for p in prompts]
        for run, prompt in zip(runs, prompts, strict=True):
            assert run.wait().tokens == reference.greedy(prompt, 10)
        assert eng._forward != eng._decode_forward  # it did not fall back to eager
    finally:
        eng.stop()


def test_merge_events_joins_each_requests_waiting_events_in_order() -> None:
    a = Request(prompt=[1], max_new_tokens=4, on_event=lambda ev: None)
    b = Request(prompt=[2], max_new_tokens=4, on_event=lambda ev: None)
    events = [
        Event(a, [10], [-0.1], kv_tokens=2, token_ns=5),
        Event(b, [20], [-0.2], kv_tokens=2, token_ns=6),
        Event(a, [11], [-0.3], kv_tokens=3, token_ns=7),
        Event(a, [], [], finished=FINISH_LENGTH, kv_tokens=3),
        Event(b, [], [], finished=FINISH_ERROR, error="boom", kv_tokens=2),
    ]
    merged = merge_events(events)
    assert [ev.request for ev in merged] == [a, b]
    first, second = merged
    assert (first.tokens, first.log_probs, first.finished, first.kv_tokens) == (
        [10, 11], [-0.1, -0.3], FINISH_LENGTH, 3,
    )  # fmt: skip
    assert first.token_ns == 7  # the newest token's time (the final event has none)
    assert (second.tokens, second.finished, second.error) == ([20], FINISH_ERROR, "boom")
    assert merge_events(events[:1]) == events[:1] and merge_events([]) == []
