"""``results.json`` (and ``results.csv``) of a ``trtbuild perf`` run: one typed model, read and
written only here.

Every number carries its unit in its name (``_ms``, ``_s``, ``_per_s``, ``_bytes``, ``_percent``)
or is a count (``requests``, ``tokens``). A run that did not finish (the server died,
perf_analyzer failed) is written anyway, with ``partial: true`` and ``partial_reason``; the levels
it measured are complete, the one it was in carries ``error`` and no metrics.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trtbuild.errors import SpecError, first_error
from trtbuild.files._json import load_json, refuse_newer_format

RESULTS_FILE = "results.json"
CSV_FILE = "results.csv"
FORMAT = 1


class _Record(BaseModel):
    # read back by later trtbuild versions (history, reports): unknown keys are tolerated
    model_config = ConfigDict(extra="ignore", frozen=True)


class Distribution(_Record):
    """Summary of one per-request quantity (unit: the field's name says it)."""

    n: int = Field(description="values summarized")
    mean: float
    std: float
    min: float
    p25: float
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float
    max: float


class ServerContext(_Record):
    """Sampled from the metrics endpoint while perf_analyzer ran this level (None: not exposed)."""

    samples: int
    queue_time_ms: dict[str, float] = Field(
        default_factory=dict,
        description="per model: mean queue time per request (counter deltas over the level)",
    )
    pending_requests_mean: float | None = None
    pending_requests_max: float | None = None
    active_requests_mean: float | None = None
    active_requests_max: float | None = None
    waiting_requests_mean: float | None = None
    waiting_requests_max: float | None = None
    kv_cache_used_percent_mean: float | None = None
    kv_cache_used_percent_max: float | None = None
    gpu_utilization_percent_mean: float | None = None
    gpu_memory_used_bytes_max: float | None = None
    cpu_utilization_percent_mean: float | None = None


class LevelMetrics(_Record):
    """What one load level measured, from perf_analyzer's per-response timestamps."""

    window_s: float = Field(description="the measured windows (perf_analyzer's last three)")
    requests: int = Field(description="requests that started inside the windows")
    requests_completed: int = Field(description="requests whose last response came in them")
    output_tokens: int = Field(description="tokens delivered inside the windows")
    output_tokens_per_s: float
    requests_per_s: float
    output_tokens_per_s_per_gpu: float | None = None
    goodput_requests_per_s: float | None = None
    ttft_ms: Distribution | None = Field(None, description="None: responses were not streamed")
    itl_ms: Distribution | None = Field(None, description="per request: (last - first) / (n - 1)")
    e2e_latency_ms: Distribution
    output_tokens_per_request: Distribution
    input_tokens_per_request: Distribution | None = None
    output_tokens_per_s_per_request: Distribution
    expected_output_tokens: int | None = Field(
        None, description="what every request asked for (None: the dataset varies it)"
    )
    requests_with_unexpected_output_tokens: int = 0


class LevelResult(_Record):
    level: float = Field(description="concurrency (requests in flight) or request rate (req/s)")
    series: str = Field(description="the history key of this model at this level on this machine")
    stable: bool = Field(description="perf_analyzer found three windows within its stability")
    metrics: LevelMetrics | None = None
    server: ServerContext | None = None
    error: str | None = Field(None, description="why this level has no metrics")


class SeriesResult(_Record):
    model: str
    kind: Literal["core", "text"] = Field(description="token ids in (core) or text in")
    streamed: bool
    token_source: Literal["output_ids", "num_output_tokens", "tokenizer"]
    levels: list[LevelResult] = Field(default_factory=list)


class Ratio(_Record):
    """``model`` against ``baseline`` at one level: model's value / baseline's value."""

    level: float
    model: str
    baseline: str
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    e2e_latency_ms_p50: float | None = None
    ttft_ms_p50: float | None = None
    itl_ms_p50: float | None = None


class GpuInfo(_Record):
    index: int
    name: str
    memory_mib: int


class HostInfo(_Record):
    hostname: str
    platform: str
    cpu: str
    cpus: int
    memory_bytes: int | None = None
    python: str


class RunContext(_Record):
    git_revision: str | None = None
    trtbuild_version: str
    host: HostInfo
    gpus: list[GpuInfo] = Field(default_factory=list)
    gpu_driver: str | None = None
    gpus_serving: int | None = Field(None, description="GPUs tokens/s per GPU divides by")
    machine: str = Field(description="the machine, for titles: GPU model (or CPU) and host")
    machine_key: str = Field(description="the machine in series keys: gpu model x count, or cpuN")
    tritonserver_version: str | None = None
    perf_analyzer_version: str | None = None
    url: str
    metrics_url: str | None = None
    repository: str | None = None
    repository_spec: dict[str, Any] | None = None
    engine_manifest: dict[str, Any] | None = None
    tokenizer: str


class Workload(_Record):
    mode: Literal["concurrency", "request_rate"]
    levels: list[float]
    input_len: int | None = Field(None, description="tokens per prompt (None: a dataset)")
    output_len: int
    dataset: str | None = None
    prompts: int
    seed: int
    measurement_interval_ms: int
    stability_percent: float
    max_trials: int
    warmup_ms: int
    sla_ttft_ms: float | None = None
    sla_itl_ms: float | None = None


class PerfResults(_Record):
    format: int = FORMAT
    label: str
    started_utc: str
    finished_utc: str
    partial: bool = False
    partial_reason: str | None = None
    context: RunContext
    workload: Workload
    series: list[SeriesResult]
    ratios: list[Ratio] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    # -- the one reader and writer of results.json
    @classmethod
    def read(cls, path: Path) -> PerfResults:
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        data = load_json(path, fix="run 'trtbuild perf' again")
        refuse_newer_format(path, data, FORMAT)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{path}: invalid {first_error(exc)}") from exc

    def write(self, path: Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    def levels(self) -> list[tuple[SeriesResult, LevelResult]]:
        return [(s, lvl) for s in self.series for lvl in s.levels]


# -- results.csv: one row per model and level ------------------------------------------------------
CSV_COLUMNS = [
    "model",
    "streamed",
    "mode",
    "level",
    "series",
    "stable",
    "error",
    "requests",
    "window_s",
    "output_tokens_per_s",
    "requests_per_s",
    "output_tokens_per_s_per_gpu",
    "goodput_requests_per_s",
    *[
        f"{m}_{s}"
        for m in ("ttft_ms", "itl_ms", "e2e_latency_ms")
        for s in ("mean", "p50", "p90", "p99")
    ],
    "output_tokens_per_request_mean",
    "input_tokens_per_request_mean",
    "requests_with_unexpected_output_tokens",
    "server_pending_requests_mean",
    "server_active_requests_mean",
    "server_waiting_requests_mean",
    "server_kv_cache_used_percent_max",
    "server_gpu_utilization_percent_mean",
    "server_gpu_memory_used_bytes_max",
    "server_cpu_utilization_percent_mean",
]


def csv_rows(results: PerfResults) -> list[dict[str, Any]]:
    rows = []
    for series, lvl in results.levels():
        row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
        row.update(
            model=series.model,
            streamed=series.streamed,
            mode=results.workload.mode,
            level=f"{lvl.level:g}",
            series=lvl.series,
            stable=lvl.stable,
            error=lvl.error or "",
        )
        m = lvl.metrics
        if m is not None:
            row.update(
                requests=m.requests,
                window_s=round(m.window_s, 3),
                output_tokens_per_s=round(m.output_tokens_per_s, 2),
                requests_per_s=round(m.requests_per_s, 3),
                output_tokens_per_s_per_gpu=_round(m.output_tokens_per_s_per_gpu, 2),
                goodput_requests_per_s=_round(m.goodput_requests_per_s, 3),
                output_tokens_per_request_mean=round(m.output_tokens_per_request.mean, 2),
                input_tokens_per_request_mean=_round(
                    m.input_tokens_per_request.mean if m.input_tokens_per_request else None, 2
                ),
                requests_with_unexpected_output_tokens=m.requests_with_unexpected_output_tokens,
            )
            for name in ("ttft_ms", "itl_ms", "e2e_latency_ms"):
                dist = getattr(m, name)
                for stat in ("mean", "p50", "p90", "p99"):
                    row[f"{name}_{stat}"] = _round(getattr(dist, stat) if dist else None, 3)
        s = lvl.server
        if s is not None:
            row.update(
                server_pending_requests_mean=_round(s.pending_requests_mean, 2),
                server_active_requests_mean=_round(s.active_requests_mean, 2),
                server_waiting_requests_mean=_round(s.waiting_requests_mean, 2),
                server_kv_cache_used_percent_max=_round(s.kv_cache_used_percent_max, 2),
                server_gpu_utilization_percent_mean=_round(s.gpu_utilization_percent_mean, 2),
                server_gpu_memory_used_bytes_max=_round(s.gpu_memory_used_bytes_max, 0),
                server_cpu_utilization_percent_mean=_round(s.cpu_utilization_percent_mean, 2),
            )
        rows.append(row)
    return rows


def write_csv(results: PerfResults, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(results))
    Path(path).write_text(buffer.getvalue())
    return Path(path)


def _round(value: float | None, digits: int) -> float | str:
    return "" if value is None else round(value, digits)


__all__ = [
    "CSV_COLUMNS",
    "CSV_FILE",
    "RESULTS_FILE",
    "Distribution",
    "LevelMetrics",
    "LevelResult",
    "PerfResults",
    "Ratio",
    "RunContext",
    "SeriesResult",
    "ServerContext",
    "Workload",
    "write_csv",
]
