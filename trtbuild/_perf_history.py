"""The perf history: a SQLite file of every measured series, and the regression check over it.

A *series* is one model at one load level of one workload on one machine; its key (built by
``trtbuild.perf``) names the label, model, streaming, input/output lengths, the level and the
machine (GPU model or CPU, and the host), so histories from several machines share one file
without mixing. Each run adds one row to ``runs`` and one row per series and metric to
``points``. Partial runs are never added.

A metric of the latest run *regresses* when it is worse than the median of the series' previous
N runs by more than its threshold (percent) *and* by more than ``noise_factor`` times the
series' own run-to-run spread (1.4826 x the median absolute deviation of those N runs, a robust
standard deviation), so a series that always jitters by 8% does not fail a 5% threshold.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trtbuild._perf_results import LevelMetrics, PerfResults
from trtbuild.errors import SpecError

SCHEMA_VERSION = 1

THROUGHPUTS = (
    "output_tokens_per_s",
    "requests_per_s",
    "output_tokens_per_s_per_gpu",
    "goodput_requests_per_s",
)
LATENCIES = tuple(
    f"{name}_{stat}"
    for name in ("ttft_ms", "itl_ms", "e2e_latency_ms")
    for stat in ("mean", "p50", "p90", "p99")
)
METRICS = THROUGHPUTS + LATENCIES
HEADLINE = ("output_tokens_per_s", "ttft_ms_p50", "itl_ms_p50", "e2e_latency_ms_p50")
DEFAULT_THRESHOLDS_PERCENT: dict[str, float] = {
    "output_tokens_per_s": 5.0,
    "requests_per_s": 5.0,
    "ttft_ms_p50": 10.0,
    "ttft_ms_p99": 20.0,
    "itl_ms_p50": 10.0,
    "itl_ms_p99": 20.0,
    "e2e_latency_ms_p50": 10.0,
    "e2e_latency_ms_p99": 20.0,
}
MAD_TO_SIGMA = 1.4826


def higher_is_better(metric: str) -> bool:
    return metric in THROUGHPUTS


def level_points(m: LevelMetrics) -> dict[str, float]:
    """The stored metrics of one level (those it has)."""
    points: dict[str, float] = {
        "output_tokens_per_s": m.output_tokens_per_s,
        "requests_per_s": m.requests_per_s,
    }
    if m.output_tokens_per_s_per_gpu is not None:
        points["output_tokens_per_s_per_gpu"] = m.output_tokens_per_s_per_gpu
    if m.goodput_requests_per_s is not None:
        points["goodput_requests_per_s"] = m.goodput_requests_per_s
    for name in ("ttft_ms", "itl_ms", "e2e_latency_ms"):
        dist = getattr(m, name)
        if dist is not None:
            for stat in ("mean", "p50", "p90", "p99"):
                points[f"{name}_{stat}"] = getattr(dist, stat)
    return points


# -- the comparison (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    series: str
    metric: str
    latest: float
    baseline: float | None  # median of the previous runs
    spread: float | None  # robust run-to-run standard deviation of those runs
    runs: int  # previous runs compared with
    threshold_percent: float
    noise_factor: float
    status: str  # regressed | improved | ok | no-baseline

    @property
    def change_percent(self) -> float | None:
        if not self.baseline:
            return None
        return (self.latest - self.baseline) / self.baseline * 100

    def describe(self) -> str:
        unit = (
            "tokens/s"
            if "tokens_per_s" in self.metric
            else ("req/s" if self.metric.endswith("requests_per_s") else "ms")
        )
        if self.status == "no-baseline":
            return (
                f"{self.series}: {self.metric} {self.latest:.4g} {unit}: no baseline yet "
                f"({self.runs} previous run(s))"
            )
        assert self.baseline is not None and self.spread is not None
        direction = "higher is better" if higher_is_better(self.metric) else "lower is better"
        return (
            f"{self.series}: {self.metric} {self.latest:.4g} {unit} vs median "
            f"{self.baseline:.4g} of the last {self.runs} runs ({self.change_percent:+.1f}%, "
            f"{direction}; threshold {self.threshold_percent:g}%, run-to-run spread "
            f"{self.spread:.3g} {unit} x {self.noise_factor:g})"
        )


def compare(
    series: str,
    metric: str,
    latest: float,
    previous: Sequence[float],
    *,
    threshold_percent: float,
    noise_factor: float,
    min_runs: int,
) -> Comparison:
    """Is ``latest`` a regression against ``previous`` (oldest first)? See the module docstring."""
    if len(previous) < min_runs:
        return Comparison(
            series, metric, latest, None, None, len(previous), threshold_percent, noise_factor,
            "no-baseline",
        )  # fmt: skip
    median = statistics.median(previous)
    spread = MAD_TO_SIGMA * statistics.median(abs(v - median) for v in previous)
    worse = (median - latest) if higher_is_better(metric) else (latest - median)
    margin = max(abs(median) * threshold_percent / 100.0, noise_factor * spread)
    if worse > margin:
        status = "regressed"
    elif -worse > margin:
        status = "improved"
    else:
        status = "ok"
    return Comparison(
        series, metric, latest, median, spread, len(previous), threshold_percent, noise_factor,
        status,
    )  # fmt: skip


# -- the database -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesInfo:
    key: str
    runs: int
    first_utc: str
    last_utc: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_utc TEXT NOT NULL,
    label TEXT NOT NULL,
    machine TEXT NOT NULL,
    git_revision TEXT,
    trtbuild_version TEXT NOT NULL,
    results_path TEXT,
    context_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    series TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, series, metric)
);
CREATE INDEX IF NOT EXISTS points_by_series ON points (series, metric, run_id);
"""


class History:
    """``with History(path) as h:`` the one reader and writer of a history database."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SpecError(
                f"{self.path} does not exist; a history is made by scripts/nightly_perf.sh (or "
                "give the path of an existing one)"
            )
        if self.path.exists() and not self.path.is_file():
            raise SpecError(f"{self.path} is not a file; give the path of a history database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SpecError(
                    f"{self.path} has history schema {version}, newer than this trtbuild reads "
                    f"({SCHEMA_VERSION}); upgrade trtbuild"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise SpecError(f"{self.path} is not a trtbuild perf history ({exc})") from exc
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, results: PerfResults, *, results_path: str | None = None) -> int:
        """Add a complete run; returns its run id."""
        if results.partial:
            raise ValueError("a partial run is not added to the history")
        c = results.context
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO runs (started_utc, label, machine, git_revision, trtbuild_version, "
                "results_path, context_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    results.started_utc,
                    results.label,
                    c.machine_key,
                    c.git_revision,
                    c.trtbuild_version,
                    results_path,
                    json.dumps(
                        {
                            "host": c.host.model_dump(),
                            "gpus": [g.model_dump() for g in c.gpus],
                            "tritonserver": c.tritonserver_version,
                            "workload": results.workload.model_dump(),
                        }
                    ),
                ),
            )
            run_id = int(cursor.lastrowid or 0)
            rows = [
                (run_id, lvl.series, metric, value)
                for _, lvl in results.levels()
                if lvl.metrics is not None
                for metric, value in level_points(lvl.metrics).items()
            ]
            self._db.executemany(
                "INSERT INTO points (run_id, series, metric, value) VALUES (?, ?, ?, ?)", rows
            )
        return run_id

    def series(self) -> list[SeriesInfo]:
        rows = self._db.execute(
            "SELECT p.series, COUNT(DISTINCT p.run_id), MIN(r.started_utc), MAX(r.started_utc) "
            "FROM points p JOIN runs r ON r.id = p.run_id GROUP BY p.series ORDER BY p.series"
        ).fetchall()
        return [SeriesInfo(str(k), int(n), str(a), str(b)) for k, n, a, b in rows]

    def find_series(self, wanted: str) -> str:
        """The key equal to ``wanted``, else the one key containing it."""
        keys = [s.key for s in self.series()]
        if wanted in keys:
            return wanted
        matches = [k for k in keys if wanted in k]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SpecError(
                f"no series in {self.path} matches {wanted!r}; 'trtbuild perf history "
                f"{self.path}' lists them"
            )
        shown = "\n  ".join(matches[:20])
        raise SpecError(
            f"{wanted!r} matches {len(matches)} series; give more of the key:\n  {shown}"
        )

    def points(
        self, series: str, last: int | None = None
    ) -> list[tuple[int, str, dict[str, float]]]:
        """(run id, started, {metric: value}) of a series, oldest first (the last ``last``)."""
        rows = self._db.execute(
            "SELECT r.id, r.started_utc, p.metric, p.value FROM points p JOIN runs r "
            "ON r.id = p.run_id WHERE p.series = ? ORDER BY r.id",
            (series,),
        ).fetchall()
        runs: dict[int, tuple[str, dict[str, float]]] = {}
        for run_id, started, metric, value in rows:
            runs.setdefault(int(run_id), (str(started), {}))[1][str(metric)] = float(value)
        ordered = [(rid, started, values) for rid, (started, values) in runs.items()]
        return ordered[-last:] if last else ordered

    def run_git(self, run_id: int) -> str | None:
        row = self._db.execute("SELECT git_revision FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def compare_latest(
        self,
        series_keys: Iterable[str],
        thresholds: dict[str, float],
        *,
        baseline_runs: int,
        min_runs: int,
        noise_factor: float,
    ) -> list[Comparison]:
        """Each thresholded metric of each series' latest run against its previous runs."""
        found = []
        for key in sorted(set(series_keys)):
            history = self.points(key, baseline_runs + 1)
            if not history:
                continue
            *previous, (_, _, latest) = history
            for metric, threshold in sorted(thresholds.items()):
                if metric not in latest:
                    continue
                before = [values[metric] for _, _, values in previous if metric in values]
                found.append(
                    compare(
                        key,
                        metric,
                        latest[metric],
                        before,
                        threshold_percent=threshold,
                        noise_factor=noise_factor,
                        min_runs=min_runs,
                    )
                )
        return found


__all__ = [
    "DEFAULT_THRESHOLDS_PERCENT",
    "HEADLINE",
    "METRICS",
    "Comparison",
    "History",
    "SeriesInfo",
    "compare",
    "higher_is_better",
    "level_points",
]
