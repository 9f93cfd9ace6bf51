"""Synthetic ``trtbuild perf`` results, for history and report tests that need no server."""

from __future__ import annotations

from trtbuild._perf_results import (
    Distribution,
    HostInfo,
    LevelMetrics,
    LevelResult,
    PerfResults,
    RunContext,
    SeriesResult,
    Workload,
)
from trtbuild.perf import series_key

MACHINE = "cpu2@ci"


def dist(value: float, spread: float = 0.0) -> Distribution:
    return Distribution(
        n=10,
        mean=value,
        std=spread,
        min=value - spread,
        p25=value,
        p50=value,
        p75=value,
        p90=value + spread,
        p95=value + spread,
        p99=value + 2 * spread,
        max=value + 2 * spread,
    )


def workload(levels: list[float]) -> Workload:
    return Workload(
        mode="concurrency",
        levels=levels,
        input_len=16,
        output_len=8,
        prompts=10,
        seed=0,
        measurement_interval_ms=500,
        stability_percent=999,
        max_trials=3,
        warmup_ms=0,
    )


def make_results(
    *,
    label: str = "tiny",
    tokens_per_s: float = 500.0,
    ttft_ms: float = 5.0,
    itl_ms: float = 2.0,
    levels: tuple[float, ...] = (1.0,),
    started: str = "2026-01-01T00:00:00Z",
    models: tuple[str, ...] = ("ensemble",),
) -> PerfResults:
    w = workload(list(levels))
    series = []
    for model in models:
        measured = []
        for level in levels:
            e2e = ttft_ms + 7 * itl_ms
            metrics = LevelMetrics(
                window_s=1.5,
                requests=int(tokens_per_s * 1.5 / 8),
                requests_completed=int(tokens_per_s * 1.5 / 8),
                output_tokens=int(tokens_per_s * 1.5),
                output_tokens_per_s=tokens_per_s * level,
                requests_per_s=tokens_per_s * level / 8,
                ttft_ms=dist(ttft_ms, 0.5),
                itl_ms=dist(itl_ms, 0.1),
                e2e_latency_ms=dist(e2e, 1.0),
                output_tokens_per_request=dist(8.0),
                input_tokens_per_request=dist(16.0),
                output_tokens_per_s_per_request=dist(8 / e2e * 1000),
                expected_output_tokens=8,
            )
            measured.append(
                LevelResult(
                    level=level,
                    series=series_key(label, model, True, w, level, MACHINE),
                    stable=True,
                    metrics=metrics,
                )
            )
        series.append(
            SeriesResult(
                model=model,
                kind="text",
                streamed=True,
                token_source="num_output_tokens",
                levels=measured,
            )
        )
    return PerfResults(
        label=label,
        started_utc=started,
        finished_utc=started,
        context=RunContext(
            trtbuild_version="0.1.0",
            host=HostInfo(hostname="ci", platform="Linux", cpu="test", cpus=2, python="3.11"),
            machine="CPU (2 cores) on ci",
            machine_key=MACHINE,
            url="127.0.0.1:8001",
            tokenizer="/tokenizer",
        ),
        workload=w,
        series=series,
    )
