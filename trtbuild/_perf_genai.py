"""``trtbuild perf --genai-perf-export``: each level in genai-perf 0.0.8's profile-export JSON.

genai-perf writes ``<artifact dir>/<model>-triton-tensorrtllm-concurrency<N>/
profile_export_genai_perf.json`` (``request-rate<R>`` for a rate): one object per metric with its
``unit``, ``avg`` and, for per-request metrics, ``p25`` ... ``p99``, ``min``, ``max``, ``std``;
then ``input_config`` (its arguments). This writes the same layout and keys from trtbuild's
measurements, so tooling that reads genai-perf's files reads these. Differences, on purpose:
units are right where genai-perf 0.0.8 labels every non-time metric ``requests/sec``; token
counts are the served counts where genai-perf re-tokenizes the returned text; throughput is over
perf_analyzer's measured windows where genai-perf divides by the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trtbuild._perf_results import Distribution, LevelResult, PerfResults, SeriesResult

_STATS = ("p25", "p50", "p75", "p90", "p95", "p99", "min", "max", "std")


def _dist(d: Distribution, unit: str) -> dict[str, Any]:
    out: dict[str, Any] = {"unit": unit, "avg": d.mean}
    out.update({s: getattr(d, s) for s in _STATS})
    return out


def artifact_name(results: PerfResults, series: SeriesResult, lvl: LevelResult) -> str:
    if results.workload.mode == "concurrency":
        return f"{series.model}-triton-tensorrtllm-concurrency{int(lvl.level)}"
    return f"{series.model}-triton-tensorrtllm-request-rate{lvl.level:g}"


def genai_perf_json(results: PerfResults, series: SeriesResult, lvl: LevelResult) -> dict[str, Any]:
    m = lvl.metrics
    if m is None:
        raise ValueError("a level without metrics has no genai-perf export")
    w = results.workload
    out: dict[str, Any] = {
        "request_throughput": {"unit": "requests/sec", "avg": m.requests_per_s},
        "request_latency": _dist(m.e2e_latency_ms, "ms"),
    }
    if m.goodput_requests_per_s is not None:
        out["request_goodput"] = {"unit": "requests/sec", "avg": m.goodput_requests_per_s}
    # not streamed: genai-perf's time to first token is the request latency, and it drops ITL
    out["time_to_first_token"] = _dist(m.ttft_ms or m.e2e_latency_ms, "ms")
    if m.itl_ms is not None:
        out["inter_token_latency"] = _dist(m.itl_ms, "ms")
    out["output_token_throughput"] = {"unit": "tokens/sec", "avg": m.output_tokens_per_s}
    out["output_token_throughput_per_request"] = _dist(
        m.output_tokens_per_s_per_request, "tokens/sec"
    )
    out["output_sequence_length"] = _dist(m.output_tokens_per_request, "tokens")
    if m.input_tokens_per_request is not None:
        out["input_sequence_length"] = _dist(m.input_tokens_per_request, "tokens")
    goodput = {
        k: v
        for k, v in (("time_to_first_token", w.sla_ttft_ms), ("inter_token_latency", w.sla_itl_ms))
        if v is not None
    }
    out["input_config"] = {
        "subcommand": "profile",
        "model": [series.model],
        "backend": "tensorrtllm",
        "service_kind": "triton",
        "streaming": series.streamed,
        "u": results.context.url,
        "num_prompts": w.prompts,
        "output_tokens_mean": w.output_len,
        "output_tokens_stddev": 0,
        "output_tokens_mean_deterministic": False,
        "random_seed": w.seed,
        "synthetic_input_tokens_mean": w.input_len,
        "synthetic_input_tokens_stddev": 0,
        "goodput": goodput or None,
        "concurrency": int(lvl.level) if w.mode == "concurrency" else None,
        "request_rate": lvl.level if w.mode == "request_rate" else None,
        "measurement_interval": w.measurement_interval_ms,
        "stability_percentage": w.stability_percent,
        "tokenizer": results.context.tokenizer,
        "prompt_source": "file" if w.dataset else "synthetic",
        "input_file": w.dataset,
        "formatted_model_name": series.model,
        "extra_inputs": {"end_id": -1, "min_tokens": w.output_len},
        "generator": f"trtbuild perf {results.context.trtbuild_version}",
    }
    return out


def write_genai_perf(results: PerfResults, out_dir: Path) -> list[Path]:
    written = []
    for series, lvl in results.levels():
        if lvl.metrics is None:
            continue
        folder = out_dir / "genai-perf" / artifact_name(results, series, lvl)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "profile_export_genai_perf.json"
        path.write_text(json.dumps(genai_perf_json(results, series, lvl), indent=2) + "\n")
        written.append(path)
    return written


__all__ = ["artifact_name", "genai_perf_json", "write_genai_perf"]
