"""The portable runtime's continuous-batching engine, in process (no Triton)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Reference
from trtbuild.runtime.engine import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    EngineLimits,
    Event,
    Request,
    RequestError,
    Sampling,
)


@pytest.fixture(scope="module")
def engine(tiny_model: Path):  # type: ignore[no-untyped-def]
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(
            max_batch_size=4, max_seq_len=256, max_num_tokens=256, max_queue_size=8
        ),
    )
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
    tokens, events = collect(engine, [1, 90, 91], 16, end_id=-1, stop_words=[[999999], word])
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
    ],
)
def test_invalid_requests_are_refused(
    engine: Engine, prompt: list[int], n: int, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        engine.submit(Request(prompt=prompt, max_new_tokens=n, on_event=lambda ev: None))


def test_full_queue_refuses_new_requests(tiny_model: Path) -> None:
    eng = Engine(
        str(tiny_model),
        limits=EngineLimits(max_batch_size=1, max_seq_len=64, max_num_tokens=64, max_queue_size=1),
    )
    # not started: nothing drains the queue
    eng.submit(Request(prompt=[1, 2], max_new_tokens=4, on_event=lambda ev: None))
    with pytest.raises(RequestError, match="queue is full"):
        eng.submit(Request(prompt=[1, 2], max_new_tokens=4, on_event=lambda ev: None))


def test_seeded_sampling_is_deterministic_and_seed_dependent(engine: Engine) -> None:
    def sample(seed: int) -> list[int]:
        s = Sampling(temperature=1.0, top_k=50, top_p=0.95, seed=seed)
        return collect(engine, [1, 5, 6], 12, end_id=-1, sampling=s)[0]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_limits_beyond_the_model_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Engine(str(tiny_model), limits=EngineLimits(max_seq_len=10**6))
