"""The metrics of one load level, from per-request timestamps and token counts. Pure: no I/O.

Definitions (times are perf_analyzer's client-side clock, nanoseconds):

- the *windows*: perf_analyzer's measurement windows of the level (its last three: the ones its
  stability check accepted), from the first boundary to the last;
- **TTFT**: first response carrying a token - request sent (streamed requests only);
- **ITL** (inter-token latency), per request: (last response - first token response) /
  (output tokens - 1), for requests with at least two tokens; genai-perf's definition;
- **end-to-end latency**: last response - request sent;
- latencies and per-request token counts are over the requests that *started* inside the windows;
- **output tokens/s**: tokens whose response arrived inside the windows / window seconds;
- **requests/s**: requests whose last response arrived inside the windows / window seconds;
- **goodput**: like requests/s, counting only requests within every SLA bound given;
- **tokens/s per GPU**: output tokens/s / GPUs serving.

Percentiles interpolate linearly between the two nearest ranks (numpy's default, as genai-perf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from trtbuild._perf_results import Distribution, LevelMetrics
from trtbuild.specs import PerfSla

NS_PER_MS = 1e6
NS_PER_S = 1e9


class NoMeasurement(ValueError):
    """The level recorded nothing that can be measured; the message says what to change."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as perf_analyzer recorded it."""

    start_ns: int
    response_ns: tuple[int, ...]
    response_tokens: tuple[int, ...]  # output tokens each response carried
    expected_tokens: int | None = None  # what the request asked for
    input_tokens: int | None = None

    def __post_init__(self) -> None:
        if len(self.response_ns) != len(self.response_tokens):
            raise ValueError("response_ns and response_tokens must have one entry per response")

    @property
    def output_tokens(self) -> int:
        return sum(self.response_tokens)

    @property
    def end_ns(self) -> int:
        return self.response_ns[-1]

    @property
    def first_token_ns(self) -> int:
        for t, n in zip(self.response_ns, self.response_tokens, strict=True):
            if n > 0:
                return t
        return self.response_ns[0]

    def ttft_ms(self) -> float:
        return (self.first_token_ns - self.start_ns) / NS_PER_MS

    def e2e_ms(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_MS

    def itl_ms(self) -> float | None:
        n = self.output_tokens
        if n < 2:
            return None
        return (self.end_ns - self.first_token_ns) / (n - 1) / NS_PER_MS


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's ``linear`` method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> Distribution | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return Distribution(
        n=len(values),
        mean=mean,
        std=std,
        min=min(values),
        p25=percentile(values, 25),
        p50=percentile(values, 50),
        p75=percentile(values, 75),
        p90=percentile(values, 90),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        max=max(values),
    )


def measured_window(boundaries: Sequence[int], windows: int = 3) -> tuple[int, int] | None:
    """The span of the last ``windows`` measurement windows; None without two boundaries."""
    if len(boundaries) < 2:
        return None
    return boundaries[max(0, len(boundaries) - 1 - windows)], boundaries[-1]


def good(record: RequestRecord, sla: PerfSla, streamed: bool) -> bool:
    if sla.ttft_ms is not None:
        ttft = record.ttft_ms() if streamed else record.e2e_ms()
        if ttft > sla.ttft_ms:
            return False
    if sla.itl_ms is not None:
        itl = record.itl_ms()
        if itl is None or itl > sla.itl_ms:
            return False
    return True


def level_metrics(
    records: Sequence[RequestRecord],
    window: tuple[int, int],
    *,
    streamed: bool,
    sla: PerfSla | None = None,
    gpus: int | None = None,
) -> LevelMetrics:
    """The level's metrics (see the module docstring); ``NoMeasurement`` if nothing to measure."""
    start, end = window
    if end <= start:
        raise NoMeasurement("the measurement windows are empty; lengthen --measurement-interval")
    window_s = (end - start) / NS_PER_S
    answered = [r for r in records if r.response_ns]
    started = [r for r in answered if start <= r.start_ns <= end]
    if not started:
        raise NoMeasurement(
            "no request started inside the measured windows; lengthen --measurement-interval"
        )
    completed = [r for r in answered if start <= r.end_ns <= end]
    tokens_in_window = sum(
        n
        for r in answered
        for t, n in zip(r.response_ns, r.response_tokens, strict=True)
        if start <= t <= end
    )
    tokens_per_s = tokens_in_window / window_s
    itl = [v for r in started if (v := r.itl_ms()) is not None]
    e2e = [r.e2e_ms() for r in started]
    per_request_rate = [r.output_tokens / (r.e2e_ms() / 1000.0) for r in started if r.e2e_ms() > 0]
    inputs = [float(r.input_tokens) for r in started if r.input_tokens is not None]
    expected = {r.expected_tokens for r in started}
    unexpected = sum(
        1 for r in started if r.expected_tokens is not None and r.output_tokens != r.expected_tokens
    )
    goodput = None
    if sla is not None and sla.given:
        goodput = sum(1 for r in completed if good(r, sla, streamed)) / window_s
    e2e_dist = distribution(e2e)
    out_dist = distribution([float(r.output_tokens) for r in started])
    rate_dist = distribution(per_request_rate) or distribution([0.0])
    assert e2e_dist is not None and out_dist is not None and rate_dist is not None
    return LevelMetrics(
        window_s=window_s,
        requests=len(started),
        requests_completed=len(completed),
        output_tokens=tokens_in_window,
        output_tokens_per_s=tokens_per_s,
        requests_per_s=len(completed) / window_s,
        output_tokens_per_s_per_gpu=tokens_per_s / gpus if gpus else None,
        goodput_requests_per_s=goodput,
        ttft_ms=distribution([r.ttft_ms() for r in started]) if streamed else None,
        itl_ms=distribution(itl) if streamed else None,
        e2e_latency_ms=e2e_dist,
        output_tokens_per_request=out_dist,
        input_tokens_per_request=distribution(inputs),
        output_tokens_per_s_per_request=rate_dist,
        expected_output_tokens=expected.pop() if len(expected) == 1 else None,
        requests_with_unexpected_output_tokens=unexpected,
    )


__all__ = [
    "NoMeasurement",
    "RequestRecord",
    "distribution",
    "level_metrics",
    "measured_window",
    "percentile",
]
