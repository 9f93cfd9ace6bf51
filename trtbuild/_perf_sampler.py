"""Server-side context for ``trtbuild perf``: Triton's metrics endpoint, sampled during a level.

``parse_prometheus`` and ``summarize`` are pure; ``Sampler`` is the one thread that reads the
endpoint. What is summarized, where the server exposes it (None otherwise):

- queue time per request, per model: growth of ``nv_inference_queue_duration_us`` over growth of
  ``nv_inference_request_success`` + ``nv_inference_request_failure`` (counters), in ms;
- pending requests (``nv_inference_pending_request_count``, all models), active and waiting
  requests (TensorRT-LLM's ``nv_trt_llm_request_metrics``, which the portable runtime exports too);
- KV-cache use (``nv_trt_llm_kv_cache_block_metrics``: ``fraction``, else ``used`` / ``max``);
- GPU utilization (``nv_gpu_utilization``) and memory (``nv_gpu_memory_used_bytes``, all GPUs
  summed), CPU utilization (``nv_cpu_utilization``).
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from trtbuild._perf_results import ServerContext

Labels = tuple[tuple[str, str], ...]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    time_s: float
    values: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.values.get(name, [])

    def total(self, name: str, **match: str) -> float | None:
        found = [v for labels, v in self.series(name) if _matches(labels, match)]
        return sum(found) if found else None


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {family: [(labels, value)]} (comments skipped)."""
    families: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isnan(number):
            continue
        families[name].append((dict(_LABEL.findall(labels or "")), number))
    return dict(families)


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return sum(known) / len(known), max(known)


def summarize(samples: Sequence[Sample]) -> ServerContext | None:
    """What the samples of one level say (see the module docstring); None without samples."""
    if not samples:
        return None
    first, last = samples[0], samples[-1]
    queue: dict[str, float] = {}
    for labels, q_end in last.series("nv_inference_queue_duration_us"):
        model = labels.get("model", "")
        q_start = first.total("nv_inference_queue_duration_us", model=model) or 0.0
        done = [
            (s.total("nv_inference_request_success", model=model) or 0.0)
            + (s.total("nv_inference_request_failure", model=model) or 0.0)
            for s in (first, last)
        ]
        if done[1] > done[0]:
            queue[model] = (q_end - q_start) / (done[1] - done[0]) / 1000.0
    pending = _stats([s.total("nv_inference_pending_request_count") for s in samples])
    active = _stats([s.total("nv_trt_llm_request_metrics", request_type="active") for s in samples])
    waiting = _stats(
        [s.total("nv_trt_llm_request_metrics", request_type="waiting") for s in samples]
    )
    kv = _stats([_kv_used_percent(s) for s in samples])
    util = _stats([_mean(s, "nv_gpu_utilization") for s in samples])
    gpu_mem = _stats([s.total("nv_gpu_memory_used_bytes") for s in samples])
    cpu = _stats([s.total("nv_cpu_utilization") for s in samples])
    return ServerContext(
        samples=len(samples),
        queue_time_ms=queue,
        pending_requests_mean=pending[0],
        pending_requests_max=pending[1],
        active_requests_mean=active[0],
        active_requests_max=active[1],
        waiting_requests_mean=waiting[0],
        waiting_requests_max=waiting[1],
        kv_cache_used_percent_mean=kv[0],
        kv_cache_used_percent_max=kv[1],
        gpu_utilization_percent_mean=util[0] * 100 if util[0] is not None else None,
        gpu_memory_used_bytes_max=gpu_mem[1],
        cpu_utilization_percent_mean=cpu[0] * 100 if cpu[0] is not None else None,
    )


def _mean(sample: Sample, name: str) -> float | None:
    values = [v for _, v in sample.series(name)]
    return sum(values) / len(values) if values else None


def _kv_used_percent(sample: Sample) -> float | None:
    name = "nv_trt_llm_kv_cache_block_metrics"
    fraction = sample.total(name, kv_cache_block_type="fraction")
    if fraction is not None:
        return fraction * 100
    used = sample.total(name, kv_cache_block_type="used")
    most = sample.total(name, kv_cache_block_type="max")
    if used is not None and most:
        return used / most * 100
    return None


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's server
        return str(resp.read().decode("utf-8", errors="replace"))


class Sampler:
    """Reads ``url`` every ``interval_s`` seconds between ``start()`` and ``stop()``."""

    def __init__(self, url: str, interval_s: float) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> str | None:
        """None when the endpoint answers; else why not."""
        try:
            fetch(self.url)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return f"{self.url} does not answer ({reason})"
        return None

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="trtbuild-perf-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._take()  # one last look: counters cover the whole level
        return list(self.samples)

    def _take(self) -> None:
        try:
            text = fetch(self.url)
        except (urllib.error.URLError, OSError, ValueError):
            self.errors += 1
            return
        self.samples.append(Sample(time.monotonic(), parse_prometheus(text)))

    def _run(self) -> None:
        while True:
            self._take()
            if self._stop.wait(self.interval_s):
                return


__all__ = ["Sample", "Sampler", "parse_prometheus", "summarize"]
