"""The nightly perf run (``scripts/nightly_perf.sh MATRIX.yaml``): a matrix of ``trtbuild perf``
runs, appended to the history, each series compared with its own past.

The matrix is a YAML file (``PerfMatrix``, read only here; unknown keys are errors). Each entry
names what to measure, a repository (served for the entry), an engine directory (a repository is
rendered from it into a temp dir, then served) or the URL of a running server, and lists of
input lengths, output lengths and load levels; every input x output combination is one run.
Relative paths are relative to the YAML file. Example::

    history: perf-history.sqlite     # or $TRTBUILD_PERF_DB
    results_dir: perf-nightly        # one directory per run, under <UTC time>/
    baseline_runs: 7                 # compare with the median of the last 7 runs of a series
    min_baseline_runs: 3             # fewer than this: "no baseline yet", never a failure
    noise_factor: 2                  # and the regression must exceed 2x the series' spread
    thresholds:                      # percent, per metric (null: do not compare it)
      output_tokens_per_s: 5
      ttft_ms_p99: 25
    entries:
      - name: llama-8b-fp8
        repo: /models/llama-8b/repository
        models: [ensemble, tensorrt_llm]
        input_len: [128, 1024]
        output_len: [128]
        concurrency: [1, 8, 32]

Regressions are reported, one readable line each, and make the run fail (``PerfRegression``,
exit 1), after every entry was measured and appended.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from trtbuild._perf_history import DEFAULT_THRESHOLDS_PERCENT, METRICS, Comparison, History
from trtbuild.errors import RuntimeFailure, SpecError, TrtbuildError, first_error
from trtbuild.perf import PartialRun, run_perf
from trtbuild.repo import make_repository
from trtbuild.server import TritonServer
from trtbuild.specs import PerfNightlySpec, PerfSla, PerfSpec, RepoOptions, ServeSpec, StrictModel

DB_ENV = "TRTBUILD_PERF_DB"


class PerfRegression(RuntimeFailure):
    """A series got worse beyond its threshold and its own noise (or a run failed)."""


class MatrixEntry(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the series' label")
    repo: Path | None = None
    engine: Path | None = None
    url: str | None = None
    models: list[str] = Field(default_factory=lambda: ["ensemble"], min_length=1)
    input_len: list[int] = Field(default_factory=lambda: [128], min_length=1)
    output_len: list[int] = Field(default_factory=lambda: [64], min_length=1)
    concurrency: list[int] | None = None
    request_rate: list[float] | None = None
    dataset: Path | None = None
    stream: bool | None = None
    tokenizer: Path | None = None
    gpus: int | None = Field(None, ge=0)
    num_prompts: int | None = Field(None, ge=1)
    seed: int = 0
    measurement_interval_ms: int = Field(4000, ge=100)
    stability_percent: float = Field(50.0, gt=0)
    max_trials: int = Field(10, ge=3)
    warmup_ms: int = Field(1500, ge=0)
    sla: PerfSla = PerfSla()

    @model_validator(mode="after")
    def _one_source(self) -> MatrixEntry:
        given = [k for k in ("repo", "engine", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"entry {self.name!r}: give exactly one of repo, engine or url")
        return self


class PerfMatrix(StrictModel):
    history: Path | None = Field(None, description="the SQLite history (else $TRTBUILD_PERF_DB)")
    results_dir: Path = Path("perf-nightly")
    baseline_runs: int = Field(7, ge=1)
    min_baseline_runs: int = Field(3, ge=1)
    noise_factor: float = Field(2.0, ge=0)
    thresholds: dict[str, float | None] = Field(default_factory=dict)
    entries: list[MatrixEntry] = Field(min_length=1)

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for metric, threshold in value.items():
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
            if threshold is not None and threshold < 0:
                raise ValueError(f"threshold of {metric} must be >= 0 (percent)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> PerfMatrix:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("two entries share a name; names key the history")
        return self

    def thresholds_percent(self) -> dict[str, float]:
        merged: dict[str, float | None] = {**DEFAULT_THRESHOLDS_PERCENT, **self.thresholds}
        return {m: t for m, t in merged.items() if t is not None}

    @classmethod
    def read(cls, path: Path) -> PerfMatrix:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a mapping with 'entries'; see docs/perf.md")
        try:
            matrix = cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{path}: invalid {first_error(exc)}") from exc
        return matrix.resolved(path.parent)

    def resolved(self, base: Path) -> PerfMatrix:
        """Relative paths made relative to ``base`` (the YAML file's directory)."""

        def at(p: Path | None) -> Path | None:
            return None if p is None or p.is_absolute() else base / p

        entries = [
            e.model_copy(
                update={
                    k: at(getattr(e, k))
                    for k in ("repo", "engine", "dataset", "tokenizer")
                    if at(getattr(e, k)) is not None
                }
            )
            for e in self.entries
        ]
        update: dict[str, object] = {"entries": entries}
        if at(self.results_dir) is not None:
            update["results_dir"] = at(self.results_dir)
        if at(self.history) is not None:
            update["history"] = at(self.history)
        return self.model_copy(update=update)


def history_path(spec: PerfNightlySpec, matrix: PerfMatrix) -> Path:
    if spec.db is not None:
        return spec.db
    if matrix.history is not None:
        return matrix.history
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env)
    raise SpecError(
        f"no history database: set 'history:' in {spec.matrix}, or {DB_ENV}, or pass --db"
    )


@contextlib.contextmanager
def _entry_server(
    entry: MatrixEntry, work: Path
) -> Iterator[tuple[str | None, str | None, Path | None]]:
    """(gRPC url, metrics url, repository) for an entry: a running server, or one started here."""
    if entry.url is not None:
        yield entry.url, None, None
        return

    repo = entry.repo
    if repo is None:
        assert entry.engine is not None
        repo = make_repository(RepoOptions(engine_dir=entry.engine, out=work / "repository")).path
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=5)
    print(f"[{entry.name}] starting tritonserver for {repo} ...", file=sys.stderr, flush=True)
    with TritonServer(serve, quiet=True) as server:
        yield server.grpc_url, server.metrics_url, repo


def run_nightly(spec: PerfNightlySpec, *, out: TextIO | None = None) -> list[Comparison]:
    """Measure the matrix (unless ``compare_only``), append it, compare; see the docstring."""
    out = out if out is not None else sys.stdout
    matrix = PerfMatrix.read(spec.matrix)
    db = history_path(spec, matrix)
    if spec.compare_only and not Path(db).is_file():
        raise SpecError(f"{db} does not exist; there is no history to compare yet")
    failures: list[str] = []
    touched: set[str] = set()
    with History(db) as history:
        if not spec.compare_only:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for entry in matrix.entries:
                try:
                    touched |= _run_entry(entry, matrix, stamp, history, failures, out)
                except (TrtbuildError, ValidationError) as exc:
                    failures.append(f"{entry.name}: {_message(exc)}")
        else:
            names = {e.name for e in matrix.entries}
            touched = {s.key for s in history.series() if s.key.split("/", 1)[0] in names}
        comparisons = history.compare_latest(
            touched,
            matrix.thresholds_percent(),
            baseline_runs=matrix.baseline_runs,
            min_runs=matrix.min_baseline_runs,
            noise_factor=matrix.noise_factor,
        )
    regressed = [c for c in comparisons if c.status == "regressed"]
    improved = [c for c in comparisons if c.status == "improved"]
    fresh = {c.series for c in comparisons if c.status == "no-baseline"}
    print(
        f"compared {len({c.series for c in comparisons})} series ({len(comparisons)} metrics) "
        f"in {db}: {len(regressed)} regressed, {len(improved)} improved, "
        f"{len(fresh)} without a baseline yet",
        file=out,
    )
    for c in improved:
        print(f"improved:  {c.describe()}", file=out)
    for c in regressed:
        print(f"REGRESSED: {c.describe()}", file=out)
    for failure in failures:
        print(f"FAILED:    {failure}", file=out)
    if regressed or failures:
        metrics = sorted({c.metric for c in regressed})
        parts = []
        if regressed:
            parts.append(f"{len(regressed)} regression(s) ({', '.join(metrics)})")
        if failures:
            parts.append(f"{len(failures)} failed run(s)")
        raise PerfRegression(f"nightly perf: {' and '.join(parts)}; see the list above")
    return comparisons


def _run_entry(
    entry: MatrixEntry,
    matrix: PerfMatrix,
    stamp: str,
    history: History,
    failures: list[str],
    out: TextIO,
) -> set[str]:
    """Every input x output combination of one entry, against one server; the series measured."""

    touched: set[str] = set()
    with (
        tempfile.TemporaryDirectory(prefix="trtbuild-nightly-") as tmp,
        _entry_server(entry, Path(tmp)) as (url, metrics_url, repo),
    ):
        for in_len, out_len in itertools.product(entry.input_len, entry.output_len):
            name = f"{entry.name}-in{in_len}-out{out_len}"
            run_dir = Path(matrix.results_dir) / stamp / name
            perf = PerfSpec(
                repo=repo,
                url=url,
                metrics_url=metrics_url,
                models=entry.models,
                concurrency=entry.concurrency,
                request_rate=entry.request_rate,
                input_len=in_len,
                output_len=out_len,
                dataset=entry.dataset,
                num_prompts=entry.num_prompts,
                stream=entry.stream,
                tokenizer=entry.tokenizer,
                seed=entry.seed,
                measurement_interval_ms=entry.measurement_interval_ms,
                stability_percent=entry.stability_percent,
                max_trials=entry.max_trials,
                warmup_ms=entry.warmup_ms,
                sla=entry.sla,
                gpus=entry.gpus,
                label=entry.name,
                out=run_dir,
            )
            try:
                results = run_perf(perf, out=out)
            except PartialRun as exc:
                failures.append(f"{name}: {exc.message} (not added to the history)")
                continue
            history.append(results, results_path=str(run_dir))
            touched.update(lvl.series for _, lvl in results.levels())
    return touched


def _message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return f"invalid {first_error(exc)}"
    return str(getattr(exc, "message", None) or exc)


__all__ = ["DB_ENV", "MatrixEntry", "PerfMatrix", "PerfRegression", "history_path", "run_nightly"]
