"""trtbuild._perf_metrics: the metrics of a level from timestamps, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from trtbuild._perf_metrics import (
    NoMeasurement,
    RequestRecord,
    level_metrics,
    measured_window,
    percentile,
)
from trtbuild.specs import PerfSla

MS = 1_000_000  # ns


def streamed(
    start_ms: float, first_ms: float, gap_ms: float, tokens: int, **kw: int
) -> RequestRecord:
    """A streamed request: one token per response, the first after ``first_ms``."""
    start = int(start_ms * MS)
    stamps = tuple(start + int((first_ms + i * gap_ms) * MS) for i in range(tokens))
    return RequestRecord(start, stamps, (1,) * tokens, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [0, 25, 50, 90, 99, 100])
def test_percentiles_interpolate_like_numpy(q: float) -> None:
    values = [3.0, 1.0, 7.0, 2.0, 10.0, 4.5]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_the_last_three_windows_are_measured() -> None:
    assert measured_window([0, 10, 20, 30, 40, 50]) == (20, 50)
    assert measured_window([5, 15]) == (5, 15)
    assert measured_window([5]) is None


def test_ttft_itl_and_e2e_come_from_the_response_timestamps() -> None:
    # TTFT 10 ms, then a token every 2 ms: 5 tokens end at 18 ms
    records = [streamed(100 * i, 10, 2, 5, expected_tokens=5, input_tokens=7) for i in range(10)]
    m = level_metrics(records, (0, 1000 * MS), streamed=True)
    assert m.requests == 10 and m.requests_completed == 10
    assert m.ttft_ms is not None and m.ttft_ms.p50 == pytest.approx(10)
    assert m.itl_ms is not None and m.itl_ms.p50 == pytest.approx(2)
    assert m.e2e_latency_ms.p50 == pytest.approx(18)
    assert m.output_tokens == 50
    assert m.output_tokens_per_s == pytest.approx(50)  # 50 tokens in 1 s
    assert m.requests_per_s == pytest.approx(10)
    assert m.output_tokens_per_request.min == m.output_tokens_per_request.max == 5
    assert m.input_tokens_per_request is not None and m.input_tokens_per_request.mean == 7
    assert m.expected_output_tokens == 5 and m.requests_with_unexpected_output_tokens == 0
    assert m.output_tokens_per_s_per_gpu is None and m.goodput_requests_per_s is None


def test_itl_divides_by_the_tokens_not_the_responses() -> None:
    """A response that carries three tokens counts as three (TensorRT-LLM may batch them)."""
    r = RequestRecord(0, (10 * MS, 20 * MS), (1, 3))  # 4 tokens, 10 ms after the first
    assert r.itl_ms() == pytest.approx(10 / 3)
    assert r.output_tokens == 4


def test_an_empty_first_response_does_not_count_as_the_first_token() -> None:
    r = RequestRecord(0, (2 * MS, 9 * MS, 12 * MS), (0, 1, 1))
    assert r.ttft_ms() == pytest.approx(9)


def test_only_what_falls_inside_the_windows_is_counted() -> None:
    inside = streamed(100, 10, 2, 4)
    before = streamed(-50, 10, 2, 4)  # started before: its latencies are not counted
    late = streamed(995, 10, 2, 4)  # started inside, its tokens all came after
    m = level_metrics([inside, before, late], (0, 1000 * MS), streamed=True)
    assert m.requests == 2  # inside and late started inside
    assert m.requests_completed == 1  # inside only
    assert m.output_tokens == 4 + 0 + 0  # before's tokens came at -40..-34 ms; late's after 1000


def test_tokens_per_gpu_and_goodput() -> None:
    fast = [streamed(10 * i, 5, 1, 4) for i in range(6)]
    slow = [streamed(10 * i + 5, 50, 1, 4) for i in range(4)]
    m = level_metrics(fast + slow, (0, 500 * MS), streamed=True, sla=PerfSla(ttft_ms=20), gpus=2)
    assert m.output_tokens_per_s_per_gpu == pytest.approx(m.output_tokens_per_s / 2)
    assert m.goodput_requests_per_s == pytest.approx(6 / 0.5)
    assert m.requests_per_s == pytest.approx(10 / 0.5)
    itl_bound = level_metrics(fast + slow, (0, 500 * MS), streamed=True, sla=PerfSla(itl_ms=0.5))
    assert itl_bound.goodput_requests_per_s == 0


def test_whole_responses_have_no_ttft_or_itl() -> None:
    whole = [RequestRecord(i * 50 * MS, (i * 50 * MS + 30 * MS,), (8,)) for i in range(5)]
    m = level_metrics(whole, (0, 300 * MS), streamed=False)
    assert m.ttft_ms is None and m.itl_ms is None
    assert m.e2e_latency_ms.p50 == pytest.approx(30)
    assert m.output_tokens_per_s == pytest.approx(40 / 0.3)


def test_token_counts_other_than_asked_are_counted() -> None:
    records = [streamed(0, 1, 1, 4, expected_tokens=4), streamed(10, 1, 1, 3, expected_tokens=4)]
    m = level_metrics(records, (0, 100 * MS), streamed=True)
    assert m.requests_with_unexpected_output_tokens == 1


def test_nothing_measured_is_an_error_that_says_what_to_change() -> None:
    with pytest.raises(NoMeasurement, match="measurement-interval"):
        level_metrics([streamed(5000, 1, 1, 2)], (0, 100 * MS), streamed=True)
    with pytest.raises(NoMeasurement, match="measurement-interval"):
        level_metrics([], (10, 10), streamed=True)
