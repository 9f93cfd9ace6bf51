"""``trtbuild perf``: load a served model with perf_analyzer and report LLM metrics.

One run: for each load level (a concurrency, or a request rate) and each model asked for (the
ensemble, the core model ``tensorrt_llm``, the BLS), a discarded warm-up, then a perf_analyzer
measurement driven by an ``--input-data`` file (prompts of an exact token length or a dataset,
fixed output lengths with end tokens ignored) and read back from its ``--profile-export-file``:
TTFT, inter-token and end-to-end latency, output tokens/s, requests/s, tokens/s per GPU and
goodput (``trtbuild._perf_metrics`` defines each), with the server's own view sampled from its
metrics endpoint meanwhile. Models are measured back to back at each level, so several of them
in one run compare the serving paths under the same conditions (reported as ratios).

Everything lands in one directory, written atomically: ``results.json`` (``_perf_results``),
``results.csv``, PNG plots and ``report.html`` (or ``.md``), optionally genai-perf-shaped
exports. A run that cannot finish (the server died, perf_analyzer failed) still writes what it
measured, marked ``partial``, and raises ``PartialRun`` (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO, cast

from trtbuild import __version__, proc
from trtbuild._atomic import atomic_dir, check_writable
from trtbuild._perf_export import ExportError, TokenSource, parse_export, records
from trtbuild._perf_genai import write_genai_perf
from trtbuild._perf_history import HEADLINE, METRICS, History
from trtbuild._perf_metrics import NoMeasurement, level_metrics, measured_window
from trtbuild._perf_prompts import (
    Prompt,
    PromptTokenizer,
    Target,
    input_data,
    read_dataset,
    synthetic_prompts,
    target_from_config,
)
from trtbuild._perf_report import (
    metric_label,
    plot_trend,
    ratio_table,
    results_table,
    write_plots,
    write_report,
)
from trtbuild._perf_results import (
    CSV_FILE,
    GpuInfo,
    HostInfo,
    LevelResult,
    PerfResults,
    Ratio,
    RunContext,
    SeriesResult,
    Workload,
    write_csv,
)
from trtbuild._perf_sampler import Sampler, summarize
from trtbuild.builder.manifest import MANIFEST, read_manifest
from trtbuild.client import Client
from trtbuild.errors import RuntimeFailure, SpecError, TrtbuildError, UserError
from trtbuild.files.repo_spec import SPEC_FILE, read_repo_spec
from trtbuild.gpus import detect_gpus
from trtbuild.perf_analyzer import PerfAnalyzer, find_perf_analyzer
from trtbuild.server import TritonServer
from trtbuild.specs import PerfHistorySpec, PerfSpec, RepoSpec, ServeSpec

POLL_S = 0.25
LIVENESS_S = 1.0
DEFAULT_PROMPTS = 100
NO_EXPORT = "perf_analyzer wrote no profile export"


class PartialRun(RuntimeFailure):
    """The run stopped early; what it measured was written, marked partial."""


@dataclass
class _Run:
    """What one measurement of one model at one level came to."""

    export: Path | None
    returncode: int
    output: str
    problem: str | None = None  # why there is nothing to read (None: read ``export``)
    server_gone: bool = False


# -- where the server is, and whether it is still there -----------------------------------------
@dataclass
class _Server:
    url: str  # gRPC
    metrics_url: str | None
    problem: Callable[[], str | None]  # None while it serves; else what happened to it


def _grpc_problem(url: str) -> Callable[[], str | None]:
    def check() -> str | None:
        import tritonclient.grpc as grpcclient

        try:
            with grpcclient.InferenceServerClient(url) as client:
                if client.is_server_live(client_timeout=3.0):
                    return None
        except Exception as exc:  # tritonclient raises its own types  # noqa: BLE001
            return f"the server at {url} stopped answering ({str(exc).strip()[:200]})"
        return f"the server at {url} is no longer live"

    return check


def _default_metrics_url(grpc_url: str) -> str:
    host = grpc_url.rsplit(":", 1)[0] if ":" in grpc_url else grpc_url
    return f"http://{host}:8002/metrics"


@contextlib.contextmanager
def _serving(spec: PerfSpec) -> Iterator[_Server]:
    if spec.url is not None:
        yield _Server(
            spec.url, spec.metrics_url or _default_metrics_url(spec.url), _grpc_problem(spec.url)
        )
        return

    assert spec.repo is not None
    serve = ServeSpec(
        repo=spec.repo,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        tritonserver=spec.tritonserver,
        startup_timeout=spec.startup_timeout,
        shutdown_grace=5,
    )
    print(f"starting tritonserver for {spec.repo} ...", file=sys.stderr, flush=True)
    with TritonServer(serve, quiet=True) as server:

        def problem() -> str | None:
            if server.running():
                return None
            if server.failure is not None:
                return server.failure.message
            return (
                f"tritonserver ended ({proc.describe_returncode(server.returncode)}) during the "
                f"run (log: {server.log_path})"
            )

        yield _Server(server.grpc_url, spec.metrics_url or server.metrics_url, problem)


# -- the served models ------------------------------------------------------------------------------
def _grpc(url: str) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url)


def _served(url: str) -> tuple[str, dict[str, str]]:
    """(tritonserver version, {model: state}) of the server at ``url``."""
    try:
        with _grpc(url) as client:
            version = str(client.get_server_metadata().version)
            index = client.get_model_repository_index()
    except Exception as exc:  # noqa: BLE001 - tritonclient's own exception types
        raise RuntimeFailure(
            f"cannot reach a Triton server at {url} (gRPC): {str(exc).strip()[:300]}; start one "
            "(trtbuild serve REPO) or pass REPO instead of --url"
        ) from exc
    return version, {m.name: m.state for m in index.models}


def _targets(url: str, spec: PerfSpec, states: dict[str, str]) -> list[tuple[Target, bool]]:
    """Each model asked for, with whether it is streamed."""

    found = []
    with Client(url) as client:
        for model in spec.models:
            if states.get(model) != "READY":
                served = ", ".join(sorted(m for m, s in states.items() if s == "READY")) or "none"
                raise UserError(
                    f"model {model!r} is not served at {url} (ready: {served}); pick --model "
                    "ensemble, tensorrt_llm or tensorrt_llm_bls"
                )
            io = client.model_io(model)
            target = target_from_config(model, client.model_config(model), io.decoupled)
            if spec.stream is True and not target.decoupled:
                raise UserError(
                    f"model {model!r} is not decoupled and cannot stream; drop --stream (it is "
                    "then measured on whole responses) or pick --model ensemble"
                )
            found.append((target, target.decoupled if spec.stream is None else spec.stream))
    return found


def _parameters(url: str, model: str) -> dict[str, str]:

    with Client(url) as client:
        try:
            config = client.model_config(model)
        except TrtbuildError:
            return {}
    params = config.get("parameters", {}) or {}
    return {k: str((v or {}).get("string_value", "")) for k, v in params.items()}


# -- context -----------------------------------------------------------------------------------------
def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        head = proc.run(
            ["git", "-C", here, "rev-parse", "HEAD"], quiet=True, check=False, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = proc.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            quiet=True,
            check=False,
            timeout=10,
        )
    except TrtbuildError:
        return None
    return head.output.strip() + ("+dirty" if dirty.output.strip() else "")


def _host() -> HostInfo:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return HostInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        cpu=cpu,
        cpus=os.cpu_count() or 1,
        memory_bytes=memory,
        python=platform.python_version(),
    )


def _gpus() -> tuple[list[GpuInfo], str | None, list[str]]:
    """(GPUs, driver version, their short names) of this machine."""

    found = detect_gpus()
    driver = None
    smi = shutil.which("nvidia-smi")
    if found and smi:
        with contextlib.suppress(TrtbuildError):
            result = proc.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                quiet=True,
                check=False,
                timeout=30,
            )
            if result.returncode == 0 and result.output.strip():
                driver = result.output.strip().splitlines()[0].strip()
    gpus = [GpuInfo(index=g.index, name=g.name, memory_mib=g.memory_mib) for g in found]
    names = [g.spec.name if g.spec is not None else _slug(g.name) for g in found]
    return gpus, driver, names


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def _gpus_serving(
    spec: PerfSpec, repo_spec: RepoSpec | None, detected: int, local: bool
) -> int | None:
    if spec.gpus is not None:
        return spec.gpus
    if repo_spec is not None:
        if repo_spec.runtime == "torch":
            if repo_spec.device == "cpu":
                return 0
            return 1 if (detected or repo_spec.device.startswith("cuda")) else 0
        listed = sum(len(group) for group in repo_spec.gpu_device_ids)
        return listed or repo_spec.tp * repo_spec.pp
    return detected if local else None


def _is_local(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname())


def _repo_context(repo: Path | None) -> tuple[RepoSpec | None, dict[str, Any] | None, list[str]]:
    """(repository spec, engine manifest, notes) of a trtbuild repository."""

    notes: list[str] = []
    if repo is None or not (Path(repo) / SPEC_FILE).is_file():
        if repo is not None:
            notes.append(f"{repo} has no {SPEC_FILE}: its spec is not recorded")
        return None, None, notes
    try:
        repo_spec = read_repo_spec(repo)
    except (TrtbuildError, ValueError) as exc:
        notes.append(f"the repository spec of {repo} could not be read ({exc})")
        return None, None, notes
    manifest = None

    if (Path(repo_spec.engine_dir) / MANIFEST).is_file():
        try:
            manifest = read_manifest(repo_spec.engine_dir).model_dump(mode="json")
        except TrtbuildError as exc:
            notes.append(f"the engine manifest could not be read ({exc.message})")
    return repo_spec, manifest, notes


def _label(spec: PerfSpec, manifest: dict[str, Any] | None) -> str:
    if spec.label:
        return spec.label
    source = (manifest or {}).get("source") or {}
    if source.get("repo_id"):
        return str(source["repo_id"])
    if source.get("path"):
        return Path(str(source["path"])).name
    if spec.repo is not None:
        return Path(spec.repo).resolve().name
    return "model"


# -- running perf_analyzer -------------------------------------------------------------------------
def _argv(
    tool: PerfAnalyzer,
    target: Target,
    url: str,
    data: Path,
    export: Path,
    spec: PerfSpec,
    level: float,
    *,
    warmup: bool,
) -> list[str]:
    argv = [str(tool.binary), "-m", target.model, "-i", "grpc", "-u", url]
    argv += ["--input-data", str(data), "--profile-export-file", str(export)]
    if target.decoupled:
        argv.append("--streaming")
    if spec.mode == "concurrency":
        argv += ["--concurrency-range", str(int(level))]
    else:
        argv += ["--request-rate-range", f"{level:g}"]
    if warmup:
        argv += ["--measurement-interval", str(spec.warmup_ms), "--max-trials", "1"]
    else:
        argv += ["--measurement-interval", str(spec.measurement_interval_ms)]
        argv += ["--stability-percentage", f"{spec.stability_percent:g}"]
        argv += ["--max-trials", str(spec.max_trials)]
    return argv


def _perf_analyzer(
    tool: PerfAnalyzer,
    argv: list[str],
    export: Path,
    log_path: Path,
    *,
    server: _Server,
    limit_s: float,
    quiet: bool,
    tick: Callable[[], None],
) -> _Run:
    """Run perf_analyzer to its end, unless the server goes away or it overruns ``limit_s``."""
    export.unlink(missing_ok=True)  # never read an older run's file
    with open(log_path, "wb") as log:
        # perf_analyzer itself needs only the library path (PATH is for genai-perf)
        env = {k: v for k, v in tool.env.items() if k == "LD_LIBRARY_PATH"}
        child = proc.spawn(argv, env=env, log=log, quiet=quiet)
        started = time.monotonic()
        next_check = started + LIVENESS_S
        problem = None
        gone = False
        try:
            while child.poll() is None:
                time.sleep(POLL_S)
                tick()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + LIVENESS_S
                    problem = server.problem()
                    if problem is not None:
                        gone = True
                        break
                if now - started > limit_s:
                    problem = (
                        f"perf_analyzer did not finish within {limit_s:.0f} s; stopped it (raise "
                        "--max-trials or shorten --measurement-interval)"
                    )
                    break
        finally:
            if child.poll() is None:
                proc.stop_group(child, grace=5)
    output = log_path.read_text(errors="replace")
    code = child.returncode
    if problem is None and code not in (0, 2):
        problem = server.problem()
        gone = problem is not None
        if problem is None:
            problem = (
                f"perf_analyzer failed ({proc.describe_returncode(code)}): "
                f"{_pa_error(output)} (log: {log_path.name})"
            )
    if problem is None and not export.is_file():
        problem = NO_EXPORT
    return _Run(export if problem is None else None, code, output, problem, gone)


def _pa_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:400]


# -- the verb ------------------------------------------------------------------------------------
def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def series_key(
    label: str, target: str, streamed: bool, workload: Workload, level: float, machine: str
) -> str:
    """The history key of one model at one level: what must match for two runs to compare."""
    io = (
        f"in{workload.input_len}"
        if workload.input_len
        else f"data-{Path(workload.dataset or '').stem}"
    )
    load = f"c{level:g}" if workload.mode == "concurrency" else f"rate{level:g}"
    mode = "stream" if streamed else "whole"
    label = label.replace("/", "_")
    return f"{label}/{target}/{mode}/{io}-out{workload.output_len}/{load}/{machine}"


def run_perf(spec: PerfSpec, *, out: TextIO | None = None) -> PerfResults:
    """``trtbuild perf``: measure, write ``spec.out``, print the tables; see the module docstring."""
    out = out if out is not None else sys.stdout
    tool = find_perf_analyzer()
    check_writable(spec.out, force=spec.force)
    if spec.dataset is not None and not Path(spec.dataset).is_file():
        raise SpecError(f"--dataset {spec.dataset} is not a file; give a JSONL file of prompts")
    if spec.repo is not None and not Path(spec.repo).is_dir():
        raise SpecError(f"{spec.repo} is not a directory; give a model repository")
    repo_spec, manifest, notes = _repo_context(spec.repo)
    started = _utc()
    with tempfile.TemporaryDirectory(prefix="trtbuild-perf-") as tmp, _serving(spec) as server:
        results = _measure(spec, tool, server, repo_spec, manifest, notes, started, Path(tmp))
        with atomic_dir(spec.out, force=spec.force) as final:
            _write(results, spec, final, Path(tmp))
        _print_tables(results, out)
        print(
            f"wrote {spec.out}/results.json, {CSV_FILE}, report.{spec.report} and plots",
            file=sys.stderr,
        )
        if results.partial:  # raised here, so that a server that died says so after it
            raise PartialRun(
                f"partial results ({results.partial_reason}); what was measured is in "
                f'{spec.out}/results.json, marked "partial": true'
            )
    return results


def _measure(
    spec: PerfSpec,
    tool: PerfAnalyzer,
    server: _Server,
    repo_spec: RepoSpec | None,
    manifest: dict[str, Any] | None,
    notes: list[str],
    started: str,
    work: Path,
) -> PerfResults:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)
    triton_version, states = _served(server.url)
    targets = _targets(server.url, spec, states)
    pre = _parameters(server.url, "preprocessing") if "preprocessing" in states else {}
    tokenizer_dir = (
        spec.tokenizer
        or (Path(pre["tokenizer_dir"]) if pre.get("tokenizer_dir") else None)
        or (Path(repo_spec.tokenizer_dir) if repo_spec else None)
    )
    if tokenizer_dir is None:
        raise SpecError(
            "no tokenizer: the server has no preprocessing model to take it from; pass "
            "--tokenizer DIR (the served model's Hugging Face tokenizer)"
        )
    add_special = (
        pre.get("add_special_tokens", "true").lower() != "false"
        if pre
        else (repo_spec.add_special_tokens if repo_spec else True)
    )
    tok = PromptTokenizer(tokenizer_dir, add_special_tokens=add_special)
    prompts = _prompts(spec, tok)
    _check_limits(spec, prompts, pre, repo_spec)

    gpus, driver, gpu_names = _gpus()
    serving = _gpus_serving(spec, repo_spec, len(gpus), _is_local(server.url))
    host = _host()
    short_host = host.hostname.split(".")[0]
    if serving and gpu_names:
        machine = f"{gpu_names[0]} x{serving} on {short_host}"
        machine_key = f"{gpu_names[0]}x{serving}@{short_host}"
    else:
        machine = f"CPU ({host.cpus} cores) on {short_host}"
        machine_key = f"cpu{host.cpus}@{short_host}"
    version = proc.run([tool.binary, "--version"], env=tool.env, quiet=True, check=False).output
    label = _label(spec, manifest)
    workload = Workload(
        mode=spec.mode,
        levels=spec.levels,
        input_len=None if spec.dataset else spec.input_len,
        output_len=spec.output_len,
        dataset=str(spec.dataset) if spec.dataset else None,
        prompts=len(prompts),
        seed=spec.seed,
        measurement_interval_ms=spec.measurement_interval_ms,
        stability_percent=spec.stability_percent,
        max_trials=spec.max_trials,
        warmup_ms=spec.warmup_ms,
        sla_ttft_ms=spec.sla.ttft_ms,
        sla_itl_ms=spec.sla.itl_ms,
    )
    context = RunContext(
        git_revision=_git_revision(),
        trtbuild_version=__version__,
        host=host,
        gpus=gpus,
        gpu_driver=driver,
        gpus_serving=serving,
        machine=machine,
        machine_key=machine_key,
        tritonserver_version=triton_version,
        perf_analyzer_version=next(iter(version.strip().splitlines()), None),
        url=server.url,
        metrics_url=server.metrics_url,
        repository=str(Path(spec.repo).resolve()) if spec.repo else None,
        repository_spec=repo_spec.model_dump(mode="json") if repo_spec else None,
        engine_manifest=manifest,
        tokenizer=str(tokenizer_dir),
    )
    sampler = Sampler(server.metrics_url, spec.sample_interval_s) if server.metrics_url else None
    if sampler is not None and (why := sampler.available()) is not None:
        notes.append(f"server metrics not sampled: {why}")
        sampler = None
    counts = {p.text: len(p.ids) for p in prompts}
    data_files = {}
    for target, streamed in targets:
        data_files[target.model] = work / f"input-{target.model}.json"
        data_files[target.model].write_text(
            json.dumps(input_data(target, prompts, stream=streamed))
        )
        if not target.decoupled and spec.stream is None and len(targets) > 1:
            notes.append(
                f"{target.model} is not decoupled: measured on whole responses (no TTFT/ITL)"
            )
    series = {
        t.model: SeriesResult.model_validate(
            {"model": t.model, "kind": t.kind, "streamed": s, "token_source": t.token_source}
        )
        for t, s in targets
    }
    measured: dict[str, list[LevelResult]] = {t.model: [] for t, _ in targets}
    partial_reason: str | None = None
    stop = False
    plan = [(level, t, s) for level in spec.levels for t, s in targets]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[server]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )

    def name(level: float) -> str:
        return f"c={level:g}" if spec.mode == "concurrency" else f"{level:g} req/s"

    with progress:
        task = progress.add_task("perf", total=len(plan), server="")
        for level, target, streamed in plan:
            key = series_key(label, target.model, streamed, workload, level, machine_key)
            if stop:
                measured[target.model].append(
                    LevelResult(
                        level=level,
                        series=key,
                        stable=False,
                        error="not measured: the run stopped early",
                    )
                )
                continue
            data = data_files[target.model]
            slug = f"{target.model}-{'c' if spec.mode == 'concurrency' else 'rate'}{level:g}"
            log = work / f"{slug}.log"

            def tick() -> None:
                latest = sampler.latest() if sampler is not None else None
                if latest is not None:
                    active = latest.total("nv_trt_llm_request_metrics", request_type="active")
                    waiting = latest.total("nv_trt_llm_request_metrics", request_type="waiting")
                    if active is not None:
                        progress.update(task, server=f"active {active:g}, waiting {waiting or 0:g}")

            try:
                run: _Run | None = None
                samples: list[Any] = []
                if spec.warmup_ms:
                    progress.update(task, description=f"{target.model} {name(level)}: warm-up")
                    warm = work / "warmup.json"
                    run = _perf_analyzer(
                        tool,
                        _argv(tool, target, server.url, data, warm, spec, level, warmup=True),
                        warm,
                        log,
                        server=server,
                        limit_s=60 + spec.warmup_ms * 3 / 1000,
                        quiet=True,
                        tick=tick,
                    )
                    if run.problem is None or run.problem == NO_EXPORT:  # one window: never stable
                        run = None
                if run is None:
                    progress.update(task, description=f"{target.model} {name(level)}: measuring")
                    export = work / f"{slug}.export.json"
                    if sampler is not None:
                        sampler.start()
                    try:
                        for attempt in (1, 2):
                            run = _perf_analyzer(
                                tool,
                                _argv(
                                    tool, target, server.url, data, export, spec, level,
                                    warmup=False,
                                ),
                                export,
                                log,
                                server=server,
                                limit_s=120
                                + spec.max_trials * spec.measurement_interval_ms * 3 / 1000,
                                quiet=False,
                                tick=tick,
                            )  # fmt: skip
                            if not _empty_export(run) or attempt == 2:
                                break
                            # perf_analyzer 2.51 exited 0 having written an empty export
                            # (seen on a loaded 2-core machine): measure once more
                            notes.append(f"{target.model} {name(level)}: perf_analyzer wrote an "
                                         "empty profile export; measured again")  # fmt: skip
                    finally:
                        samples = sampler.stop() if sampler is not None else []
                assert run is not None
                result = _level(
                    run, target, streamed, level, key, samples, spec, serving, tok, counts
                )
            except KeyboardInterrupt:  # Ctrl-C: keep what was measured, marked partial
                run = _Run(None, -2, "", "interrupted (Ctrl-C)", False)
                result = LevelResult(level=level, series=key, stable=False, error=run.problem)
            measured[target.model].append(result)
            progress.advance(task)
            where = f"{target.model} {name(level)}"
            if result.error is not None:
                partial_reason = partial_reason or f"{where}: {result.error}"
                console.print(f"[red]{where}: {result.error}[/red]")
                if run.server_gone or not result.error.startswith("no stable"):
                    stop = True
            elif result.metrics is not None:
                console.print(_summary_line(where, result))
    finished = _utc()
    full = [s.model_copy(update={"levels": measured[model]}) for model, s in series.items()]
    results = PerfResults(
        label=label,
        started_utc=started,
        finished_utc=finished,
        partial=partial_reason is not None,
        partial_reason=partial_reason,
        context=context,
        workload=workload,
        series=full,
        notes=notes,
    )
    return results.model_copy(update={"ratios": ratios(results)})


def _empty_export(run: _Run) -> bool:
    return run.problem is None and run.export is not None and run.export.stat().st_size == 0


def _summary_line(where: str, result: LevelResult) -> str:
    m = result.metrics
    assert m is not None
    ttft = f", TTFT p50 {m.ttft_ms.p50:.1f} ms" if m.ttft_ms else ""
    itl = f", ITL p50 {m.itl_ms.p50:.2f} ms" if m.itl_ms else ""
    stable = "" if result.stable else " (not stable)"
    return (
        f"{where}: {m.output_tokens_per_s:.1f} tok/s, {m.requests_per_s:.2f} req/s{ttft}{itl}, "
        f"E2E p50 {m.e2e_latency_ms.p50:.1f} ms ({m.requests} requests){stable}"
    )


def _level(
    run: _Run,
    target: Target,
    streamed: bool,
    level: float,
    key: str,
    samples: list[Any],
    spec: PerfSpec,
    gpus: int | None,
    tok: PromptTokenizer,
    counts: dict[str, int],
) -> LevelResult:
    server = summarize(samples)
    if run.problem is not None or run.export is None:
        error = run.problem or NO_EXPORT
        if run.returncode == 2 and not run.server_gone:
            error = (
                f"no stable measurement within {spec.max_trials} trials of "
                f"{spec.measurement_interval_ms} ms (raise --max-trials or --stability-percentage)"
            )
        return LevelResult(level=level, series=key, stable=False, server=server, error=error)

    def input_tokens(inputs: dict[str, Any]) -> int | None:
        if "input_lengths" in inputs:
            return int(inputs["input_lengths"])
        text = inputs.get("text_input")
        return counts.get(text) if isinstance(text, str) else None

    try:
        export = parse_export(
            run.export.read_bytes(), string_outputs=target.string_outputs, outputs=target.outputs
        )
        found = records(
            export,
            cast(TokenSource, target.token_source),
            count_text=tok.count_plain,
            input_tokens=input_tokens,
        )
        window = measured_window(export.window_boundaries)
        if window is None:
            raise NoMeasurement("perf_analyzer recorded no measurement window")
        metrics = level_metrics(found, window, streamed=streamed, sla=spec.sla, gpus=gpus)
    except (ExportError, NoMeasurement) as exc:
        size = run.export.stat().st_size
        where = f"{run.export.name}: {size:,} bytes, perf_analyzer exit {run.returncode}"
        if isinstance(exc, ExportError) and size < 200:  # what it wrote, and what it said
            where += f"; it said: {proc.tail(run.output, 3)!r}"
        return LevelResult(
            level=level, series=key, stable=False, server=server, error=f"{exc} ({where})"
        )
    return LevelResult(
        level=level, series=key, stable=run.returncode == 0, metrics=metrics, server=server
    )


def ratios(results: PerfResults) -> list[Ratio]:
    """Every other model against the core model (else the first one), level by level."""
    if len(results.series) < 2:
        return []
    names = [s.model for s in results.series]
    base_name = "tensorrt_llm" if "tensorrt_llm" in names else names[0]
    base = next(s for s in results.series if s.model == base_name)
    found = []
    for other in results.series:
        if other.model == base_name:
            continue
        for lvl in other.levels:
            ref = next((b for b in base.levels if b.level == lvl.level), None)
            if ref is None or ref.metrics is None or lvl.metrics is None:
                continue
            a, b = lvl.metrics, ref.metrics

            def div(x: float | None, y: float | None) -> float | None:
                return x / y if x is not None and y else None

            found.append(
                Ratio(
                    level=lvl.level,
                    model=other.model,
                    baseline=base_name,
                    output_tokens_per_s=div(a.output_tokens_per_s, b.output_tokens_per_s),
                    requests_per_s=div(a.requests_per_s, b.requests_per_s),
                    e2e_latency_ms_p50=div(a.e2e_latency_ms.p50, b.e2e_latency_ms.p50),
                    ttft_ms_p50=div(
                        a.ttft_ms.p50 if a.ttft_ms else None, b.ttft_ms.p50 if b.ttft_ms else None
                    ),
                    itl_ms_p50=div(
                        a.itl_ms.p50 if a.itl_ms else None, b.itl_ms.p50 if b.itl_ms else None
                    ),
                )
            )
    return found


def _prompts(spec: PerfSpec, tok: PromptTokenizer) -> list[Prompt]:
    if spec.dataset is not None:
        return read_dataset(
            spec.dataset, tok, count=spec.num_prompts, output_len=spec.output_len, seed=spec.seed
        )
    return synthetic_prompts(
        tok,
        count=spec.num_prompts or DEFAULT_PROMPTS,
        input_len=spec.input_len,
        output_len=spec.output_len,
        seed=spec.seed,
    )


def _check_limits(
    spec: PerfSpec, prompts: list[Prompt], pre: dict[str, str], repo_spec: RepoSpec | None
) -> None:
    """Refuse, before any load, prompts the deployment would refuse."""

    def limit(name: str) -> int | None:
        if pre.get(name, "").isdigit():
            return int(pre[name])
        return getattr(repo_spec.limits, name) if repo_spec is not None else None

    max_input, max_seq = limit("max_input_len"), limit("max_seq_len")
    longest = max(len(p.ids) for p in prompts)
    if max_input is not None and longest > max_input:
        raise SpecError(
            f"prompts of {longest} tokens exceed the deployment's max_input_len {max_input}; pass "
            f"--input-len {max_input} or less"
        )
    worst = max(len(p.ids) + p.output_len for p in prompts)
    if max_seq is not None and worst > max_seq:
        raise SpecError(
            f"prompt + output reach {worst} tokens, beyond the deployment's max_seq_len {max_seq}; "
            "lower --input-len or --output-len"
        )


def _write(results: PerfResults, spec: PerfSpec, final: Path, work: Path) -> None:

    results.write(final)
    write_csv(results, final / CSV_FILE)
    plots = write_plots(results, final)
    write_report(results, final, plots, spec.report)
    if spec.genai_perf_export:
        write_genai_perf(results, final)
    if spec.keep_raw:
        raw = final / "raw"
        raw.mkdir()
        for path in sorted(work.iterdir()):
            if path.is_file() and path.name != "warmup.json":
                shutil.copy2(path, raw / path.name)


def _print_tables(results: PerfResults, out: IO[str] | TextIO) -> None:
    from rich.console import Console

    console = Console(file=out, width=None if out.isatty() else 160)
    console.print(results_table(results))
    table = ratio_table(results)
    if table is not None:
        console.print(table)
    for note in results.notes:
        print(f"note: {note}", file=sys.stderr)


# -- history -----------------------------------------------------------------------------------------
def show_history(spec: PerfHistorySpec, *, out: TextIO | None = None) -> None:
    """``trtbuild perf history``: the series of a database, or one series' trend (and plot)."""
    from rich.console import Console
    from rich.table import Table

    out = out if out is not None else sys.stdout
    console = Console(file=out, width=None if out.isatty() else 160)
    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise SpecError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    if spec.plot is not None and spec.plot.exists() and not spec.force:
        raise SpecError(f"{spec.plot} exists; pass --force to replace it")
    with History(spec.db, create=False) as history:
        if spec.series is None:
            table = Table(title=f"Series in {spec.db}")
            for column in ("series", "runs", "first (UTC)", "last (UTC)"):
                table.add_column(column)
            for info in history.series():
                table.add_row(info.key, str(info.runs), info.first_utc, info.last_utc)
            console.print(table)
            return
        key = history.find_series(spec.series)
        rows = history.points(key, spec.last)
        metrics = spec.metrics or [m for m in HEADLINE if any(m in v for _, _, v in rows)]
        table = Table(title=f"{key}: last {len(rows)} run(s)")
        table.add_column("run")
        table.add_column("started (UTC)")
        table.add_column("git")
        for metric in metrics:
            table.add_column(metric_label(metric), justify="right")
        for run_id, started, values in rows:
            git = (history.run_git(run_id) or "-")[:12]
            cells = [f"{values[m]:,.2f}" if m in values else "-" for m in metrics]
            table.add_row(str(run_id), started, git, *cells)
        console.print(table)
    if spec.plot is not None and rows:
        plot_trend(key, [(started, values) for _, started, values in rows], metrics, spec.plot)
        print(f"wrote {spec.plot}", file=sys.stderr)


__all__ = ["PartialRun", "ratios", "run_perf", "series_key", "show_history"]
