"""Tables, plots and the report of a ``trtbuild perf`` run (and of a history series).

Plots are PNGs drawn with matplotlib's Agg backend (no display needed): every axis names its
quantity and unit, every title the model, the target(s) and the machine. The HTML report is one
file with the plots embedded (base64) and no external resources; the Markdown report links the
PNGs beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from trtbuild._perf_results import LevelResult, PerfResults, Ratio, SeriesResult

PLOTS = {
    "throughput_latency.png": "Output throughput vs end-to-end latency",
    "ttft.png": "Time to first token vs load",
    "itl.png": "Inter-token latency vs load",
}

DEFINITIONS = [
    ("TTFT", "first response carrying a token - request sent (streamed targets only)"),
    ("ITL", "per request: (last response - first token) / (output tokens - 1)"),
    ("E2E", "end-to-end latency: last response - request sent"),
    ("output tok/s", "tokens whose response arrived in the measured windows / window seconds"),
    ("req/s", "requests whose last response arrived in the windows / window seconds"),
    ("goodput", "like req/s, counting only requests within every SLA bound given"),
    ("tok/s/GPU", "output tok/s / GPUs serving"),
    (
        "tokens",
        "counted from the returned ids (core model) or the server's num_output_tokens, never "
        "from the request",
    ),
]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def level_name(results: PerfResults, level: float) -> str:
    if results.workload.mode == "concurrency":
        return f"c={level:g}"
    return f"{level:g} req/s"


def load_axis(results: PerfResults) -> str:
    if results.workload.mode == "concurrency":
        return "concurrency (requests in flight)"
    return "request rate (requests/s)"


def workload_line(results: PerfResults) -> str:
    w = results.workload
    inputs = (
        f"{w.input_len} input tokens" if w.input_len else f"dataset {Path(w.dataset or '').name}"
    )
    return f"{inputs}, {w.output_len} output tokens, {w.prompts} prompts, seed {w.seed}"


# -- terminal tables ------------------------------------------------------------------------------
def results_table(results: PerfResults) -> Table:
    title = f"{results.label} on {results.context.machine}: {workload_line(results)}"
    if results.partial:
        title += " [PARTIAL]"
    table = Table(title=title)
    for column in (
        "model",
        "load",
        "requests",
        "out tok/s",
        "req/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "E2E p50 ms",
        "E2E p99 ms",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    sla = results.workload.sla_ttft_ms is not None or results.workload.sla_itl_ms is not None
    if sla:
        table.add_column("goodput req/s", justify="right")
    for series, lvl in results.levels():
        table.add_row(*_row(results, series, lvl, sla))
    return table


def _row(results: PerfResults, series: SeriesResult, lvl: LevelResult, sla: bool) -> list[str]:
    name = series.model + ("" if series.streamed else " (whole)")
    m = lvl.metrics
    if m is None:
        failed = "skipped" if (lvl.error or "").startswith("not measured") else "FAILED"
        return [name, level_name(results, lvl.level), failed] + ["-"] * (8 + sla)
    row = [
        name,
        level_name(results, lvl.level),
        str(m.requests),
        _fmt(m.output_tokens_per_s),
        _fmt(m.requests_per_s, 2),
        _fmt(m.ttft_ms.p50 if m.ttft_ms else None, 2),
        _fmt(m.ttft_ms.p99 if m.ttft_ms else None, 2),
        _fmt(m.itl_ms.p50 if m.itl_ms else None, 2),
        _fmt(m.itl_ms.p99 if m.itl_ms else None, 2),
        _fmt(m.e2e_latency_ms.p50, 1),
        _fmt(m.e2e_latency_ms.p99, 1),
    ]
    if sla:
        row.append(_fmt(m.goodput_requests_per_s, 2))
    return row


def ratio_table(results: PerfResults) -> Table | None:
    if not results.ratios:
        return None
    table = Table(title=f"Serving overhead: each model / {results.ratios[0].baseline}")
    for column in ("model", "load", "out tok/s", "req/s", "E2E p50", "TTFT p50", "ITL p50"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results.ratios:
        table.add_row(
            r.model,
            level_name(results, r.level),
            *_ratio_cells(r),
        )
    return table


# -- plots ----------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(results: PerfResults, what: str, models: Sequence[str]) -> str:
    return f"{what}\n{results.label} | {', '.join(models)} | {results.context.machine}"


def _measured(series: SeriesResult) -> list[LevelResult]:
    return [lvl for lvl in series.levels if lvl.metrics is not None]


def write_plots(results: PerfResults, out_dir: Path) -> list[Path]:
    """The run's PNGs in ``out_dir``; a plot with nothing to draw is left out."""
    plt = _pyplot()
    return [_save(fig, out_dir / name, plt) for name, fig in figures(results).items()]


def figures(results: PerfResults) -> dict[str, Any]:
    """{file name: matplotlib figure} of the run's plots (the caller saves or closes them)."""
    plt = _pyplot()
    written: dict[str, Any] = {}
    measured = [(s, _measured(s)) for s in results.series]
    measured = [(s, levels) for s, levels in measured if levels]
    note = " (partial run)" if results.partial else ""
    if measured:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for series, levels in measured:
            xs = [lvl.metrics.output_tokens_per_s for lvl in levels if lvl.metrics]
            ys = [lvl.metrics.e2e_latency_ms.p50 for lvl in levels if lvl.metrics]
            ax.plot(xs, ys, marker="o", label=_label(series))
            for lvl, x, y in zip(levels, xs, ys, strict=True):
                ax.annotate(
                    level_name(results, lvl.level),
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        ax.set_xlabel("output throughput (tokens/s)")
        ax.set_ylabel("end-to-end latency, p50 (ms)")
        _finish(ax, _title(results, "Throughput vs latency" + note, [s.model for s, _ in measured]))
        fig.tight_layout()
        written["throughput_latency.png"] = fig
    streamed = [(s, levels) for s, levels in measured if s.streamed]
    for name, field, what in (
        ("ttft.png", "ttft_ms", "Time to first token"),
        ("itl.png", "itl_ms", "Inter-token latency"),
    ):
        drawable = [
            (s, [lvl for lvl in levels if lvl.metrics and getattr(lvl.metrics, field)])
            for s, levels in streamed
        ]
        drawable = [(s, levels) for s, levels in drawable if levels]
        if not drawable:
            continue
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for series, levels in drawable:
            xs = [lvl.level for lvl in levels]
            dists = [getattr(lvl.metrics, field) for lvl in levels]
            (line,) = ax.plot(xs, [d.p50 for d in dists], marker="o", label=f"{series.model} p50")
            ax.plot(
                xs,
                [d.p99 for d in dists],
                marker="^",
                linestyle="--",
                color=line.get_color(),
                label=f"{series.model} p99",
            )
        ax.set_xlabel(load_axis(results))
        ax.set_ylabel(f"{what.lower()} (ms)")
        levels_all = sorted({lvl.level for _, ls in drawable for lvl in ls})
        if levels_all[0] > 0 and levels_all[-1] / levels_all[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(levels_all)
        ax.set_xticklabels([f"{v:g}" for v in levels_all])
        _finish(ax, _title(results, what + note, [s.model for s, _ in drawable]))
        fig.tight_layout()
        written[name] = fig
    return written


def _label(series: SeriesResult) -> str:
    return series.model + ("" if series.streamed else " (whole responses)")


def _finish(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    if ax.get_xscale() == "linear":
        ax.set_xlim(left=0)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_trend(
    series: str, rows: Sequence[tuple[str, dict[str, float]]], metrics: Sequence[str], path: Path
) -> Path:
    """One panel per metric over the runs of a history series (x: the runs, oldest first)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(9, 2.2 * len(metrics) + 1.2), dpi=110, sharex=True
    )
    axes = axes if len(metrics) > 1 else [axes]
    labels = [when[:19].replace("T", " ") for when, _ in rows]
    for ax, metric in zip(axes, metrics, strict=True):
        points = [(i, values[metric]) for i, (_, values) in enumerate(rows) if metric in values]
        ax.plot([i for i, _ in points], [v for _, v in points], marker="o")
        ax.set_ylabel(metric_label(metric), fontsize=8)
        ax.grid(True, alpha=0.3)
        top = max((v for _, v in points), default=1.0)
        ax.set_ylim(0, top * 1.15 or 1.0)
    axes[-1].set_xticks(range(len(rows)))
    axes[-1].set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    axes[-1].set_xlabel("run (started, UTC)")
    fig.suptitle(f"Trend of {series}", fontsize=9)
    return _save(fig, path, plt)


def metric_label(metric: str) -> str:
    """``ttft_ms_p50`` -> ``TTFT p50 (ms)``."""
    names = {
        "ttft_ms": "TTFT",
        "itl_ms": "ITL",
        "e2e_latency_ms": "E2E latency",
        "output_tokens_per_s": "output (tokens/s)",
        "requests_per_s": "requests/s",
        "goodput_requests_per_s": "goodput (requests/s)",
        "output_tokens_per_s_per_gpu": "tokens/s per GPU",
    }
    for prefix, name in names.items():
        if metric == prefix:
            return name
        if metric.startswith(prefix + "_"):
            return f"{name} {metric[len(prefix) + 1 :]} (ms)"
    return metric


# -- the report ---------------------------------------------------------------------------------
def _context_rows(results: PerfResults) -> list[tuple[str, str]]:
    c = results.context
    spec = c.repository_spec or {}
    gpus = ", ".join(f"{g.name} ({g.memory_mib} MiB)" for g in c.gpus) or "none"
    rows = [
        ("machine", c.machine),
        ("host", f"{c.host.hostname}: {c.host.cpu}, {c.host.cpus} CPUs, {c.host.platform}"),
        ("GPUs", gpus + (f", driver {c.gpu_driver}" if c.gpu_driver else "")),
        ("GPUs serving", "-" if c.gpus_serving is None else str(c.gpus_serving)),
        ("tritonserver", c.tritonserver_version or "-"),
        ("perf_analyzer", c.perf_analyzer_version or "-"),
        ("trtbuild", f"{c.trtbuild_version} (git {c.git_revision or 'unknown'})"),
        ("server", c.url),
        ("repository", c.repository or "-"),
        ("runtime", str(spec.get("runtime", "-"))),
        ("tokenizer", c.tokenizer),
        ("workload", workload_line(results)),
        (
            "measurement",
            f"{results.workload.measurement_interval_ms} ms windows (last 3 measured), "
            f"stability {results.workload.stability_percent:g}%, warm-up "
            f"{results.workload.warmup_ms} ms",
        ),
        ("started", results.started_utc),
    ]
    return rows


def _table_rows(results: PerfResults) -> tuple[list[str], list[list[str]]]:
    sla = results.workload.sla_ttft_ms is not None or results.workload.sla_itl_ms is not None
    table = results_table(results)
    header = [str(c.header) for c in table.columns]
    rows = [_row(results, s, lvl, sla) for s, lvl in results.levels()]
    return header, rows


def _server_rows(results: PerfResults) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "load",
        "queue ms (per model)",
        "pending",
        "active",
        "waiting",
        "KV cache % max",
        "GPU util %",
        "GPU mem GiB max",
        "CPU util %",
    ]
    rows = []
    for series, lvl in results.levels():
        s = lvl.server
        if s is None:
            continue
        queue = ", ".join(f"{m} {v:.2f}" for m, v in sorted(s.queue_time_ms.items())) or "-"
        rows.append(
            [
                series.model,
                level_name(results, lvl.level),
                queue,
                _fmt(s.pending_requests_mean),
                _fmt(s.active_requests_mean),
                _fmt(s.waiting_requests_mean),
                _fmt(s.kv_cache_used_percent_max),
                _fmt(s.gpu_utilization_percent_mean),
                _fmt(
                    s.gpu_memory_used_bytes_max / 2**30 if s.gpu_memory_used_bytes_max else None, 2
                ),
                _fmt(s.cpu_utilization_percent_mean),
            ]
        )
    return header, rows


def _ratio_cells(r: Ratio) -> list[str]:
    """The five ratio columns every overhead table shows, formatted alike."""
    values = (
        r.output_tokens_per_s,
        r.requests_per_s,
        r.e2e_latency_ms_p50,
        r.ttft_ms_p50,
        r.itl_ms_p50,
    )
    return [_fmt(v, 3) for v in values]


def _ratio_rows(results: PerfResults) -> tuple[list[str], list[list[str]]]:
    header = ["model", "baseline", "load", "out tok/s", "req/s", "E2E p50", "TTFT p50", "ITL p50"]
    rows = [
        [
            r.model,
            r.baseline,
            level_name(results, r.level),
            *_ratio_cells(r),
        ]
        for r in results.ratios
    ]
    return header, rows


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.partial { background: #fde2e2; border: 1px solid #c00; padding: 0.6em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def write_report(results: PerfResults, out_dir: Path, plots: Sequence[Path], fmt: str) -> Path:
    """``report.html`` (self-contained) or ``report.md`` in ``out_dir``."""
    title = f"trtbuild perf: {results.label} on {results.context.machine}"
    sections: list[tuple[str, str, Any]] = [
        ("Results", "table", _table_rows(results)),
    ]
    if results.ratios:
        sections.append(
            ("Serving overhead (ratios to the baseline)", "table", _ratio_rows(results))
        )
    server = _server_rows(results)
    if server[1]:
        sections.append(("Server side, sampled from the metrics endpoint", "table", server))
    sections.append(("Plots", "plots", plots))
    sections.append(("Context", "table", (["", ""], [list(r) for r in _context_rows(results)])))
    sections.append(
        ("Definitions", "table", (["metric", "definition"], [list(d) for d in DEFINITIONS]))
    )
    if results.notes:
        sections.append(("Notes", "list", results.notes))
    if fmt == "md":
        path = out_dir / "report.md"
        parts = [f"# {title}\n"]
        if results.partial:
            parts.append(f"> **PARTIAL RUN**: {results.partial_reason}\n")
        for heading, kind, content in sections:
            parts.append(f"## {heading}\n")
            if kind == "table":
                parts.append(_md_table(*content) + "\n")
            elif kind == "plots":
                parts += [f"![{PLOTS.get(p.name, p.stem)}]({p.name})\n" for p in content]
            else:
                parts += [f"- {n}" for n in content] + [""]
        path.write_text("\n".join(parts))
        return path
    path = out_dir / "report.html"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if results.partial:
        body.append(
            f'<p class="partial"><b>PARTIAL RUN</b>: {html.escape(results.partial_reason or "")}</p>'
        )
    for heading, kind, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "table":
            body.append(_html_table(*content))
        elif kind == "plots":
            for p in content:
                data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
                alt = html.escape(PLOTS.get(Path(p).name, Path(p).stem))
                body.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
        else:
            body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in content) + "</ul>")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path.write_text(page)
    return path


__all__ = [
    "PLOTS",
    "metric_label",
    "plot_trend",
    "ratio_table",
    "results_table",
    "write_plots",
    "write_report",
]
