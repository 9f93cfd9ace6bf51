"""``trtbuild perf`` for real: perf_analyzer against the served portable repository (CPU).

Short windows and tiny lengths keep it quick; nothing here asserts a speed (benchmarks are not
timed tests), only that every metric is there, consistent and counted from what was served.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trtbuild._perf_report import figures
from trtbuild._perf_results import CSV_COLUMNS, PerfResults
from trtbuild.cli import main
from trtbuild.errors import IncompatibleArtifact, SpecError

pytestmark = pytest.mark.server

OUTPUT_LEN = 4
SHORT = [
    "--input-len", "8", "--output-len", str(OUTPUT_LEN), "--num-prompts", "8",
    "--measurement-interval", "300", "--stability-percentage", "999", "--max-trials", "3",
    "--warmup", "0",
]  # fmt: skip


def run_main(args: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code or 0), stdout.getvalue()


@pytest.fixture(scope="module")
def sweep(served: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The core model, the ensemble and the BLS at concurrency 1 and 2, in one run."""
    out = tmp_path_factory.mktemp("perf") / "run"
    code, table = run_main(
        [
            "perf", str(served.spec.repo), "--url", served.grpc_url,
            "--metrics-url", served.metrics_url, "--compare-models", "--concurrency", "1,2",
            *SHORT, "--label", "tiny", "--out", str(out), "--genai-perf-export",
        ]
    )  # fmt: skip
    assert code == 0, table
    return out, table


def test_the_json_has_every_metric_for_every_model_and_level(sweep: tuple[Path, str]) -> None:
    out, table = sweep
    results = PerfResults.read(out / "results.json")
    assert not results.partial and results.partial_reason is None
    assert [s.model for s in results.series] == ["tensorrt_llm", "ensemble", "tensorrt_llm_bls"]
    assert {s.model: s.streamed for s in results.series} == {
        "tensorrt_llm": True,
        "ensemble": True,
        "tensorrt_llm_bls": False,  # not decoupled: whole responses, said so in a note
    }
    assert any("tensorrt_llm_bls is not decoupled" in n for n in results.notes)
    for series, lvl in results.levels():
        m = lvl.metrics
        assert m is not None and lvl.error is None, (series.model, lvl.error)
        assert m.requests > 0 and m.window_s > 0
        assert m.output_tokens_per_s > 0 and m.requests_per_s > 0
        assert m.e2e_latency_ms.n == m.requests
        for dist in (m.e2e_latency_ms, m.output_tokens_per_request):
            assert dist.p50 <= dist.p90 <= dist.p99 <= dist.max
        if series.streamed:
            assert m.ttft_ms is not None and m.itl_ms is not None
            assert m.ttft_ms.p50 < m.e2e_latency_ms.p50 and m.ttft_ms.mean < m.e2e_latency_ms.mean
        else:
            assert m.ttft_ms is None and m.itl_ms is None
        assert lvl.server is not None and lvl.server.samples >= 1  # the metrics endpoint
        assert lvl.series.startswith(f"tiny/{series.model}/")
        assert m.output_tokens_per_s_per_gpu is None  # served on CPU: no GPU to divide by
    c = results.context
    assert c.tritonserver_version == "2.51.0" and "2.51" in (c.perf_analyzer_version or "")
    assert c.repository_spec is not None and c.repository_spec["runtime"] == "torch"
    assert c.engine_manifest is not None and c.gpus_serving == 0
    assert c.host.cpus >= 1 and c.machine.startswith("CPU")
    assert results.workload.input_len == 8 and results.workload.levels == [1.0, 2.0]
    assert "tensorrt_llm_bls (whole)" in table and "Serving overhead" in table


def test_token_counts_are_the_served_ones_and_equal_the_requested_length(
    sweep: tuple[Path, str],
) -> None:
    results = PerfResults.read(sweep[0])
    sources = {s.model: s.token_source for s in results.series}
    assert sources == {
        "tensorrt_llm": "output_ids",
        "ensemble": "num_output_tokens",
        "tensorrt_llm_bls": "num_output_tokens",
    }
    for _, lvl in results.levels():
        m = lvl.metrics
        assert m is not None
        assert m.output_tokens_per_request.min == m.output_tokens_per_request.max == OUTPUT_LEN
        assert m.requests_with_unexpected_output_tokens == 0
        assert m.input_tokens_per_request is not None and m.input_tokens_per_request.max == 8


def test_ratios_put_each_path_against_the_core_model(sweep: tuple[Path, str]) -> None:
    results = PerfResults.read(sweep[0])
    assert {(r.model, r.level) for r in results.ratios} == {
        (m, level) for m in ("ensemble", "tensorrt_llm_bls") for level in (1.0, 2.0)
    }
    for r in results.ratios:
        assert r.baseline == "tensorrt_llm" and r.output_tokens_per_s and r.output_tokens_per_s > 0
        assert (r.ttft_ms_p50 is None) == (r.model == "tensorrt_llm_bls")


def test_csv_report_and_plots_are_written(sweep: tuple[Path, str]) -> None:
    out = sweep[0]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 6
    assert all(float(r["output_tokens_per_s"]) > 0 for r in rows)
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3  # self-contained
    assert "<h2>Results</h2>" in report and "<h2>Definitions</h2>" in report
    assert 'src="http' not in report and "<script" not in report and "<link" not in report
    from PIL import Image

    for name in ("throughput_latency.png", "ttft.png", "itl.png"):
        with Image.open(out / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
            assert len(colors) > 10  # drawn, not blank


def test_every_plot_names_its_axes_units_model_and_machine(sweep: tuple[Path, str]) -> None:
    results = PerfResults.read(sweep[0])
    drawn = figures(results)
    assert sorted(drawn) == ["itl.png", "throughput_latency.png", "ttft.png"]
    import matplotlib.pyplot as plt

    try:
        for name, fig in drawn.items():
            (ax,) = fig.axes
            assert "(ms)" in ax.get_ylabel(), name
            assert ax.get_xlabel() in (
                "output throughput (tokens/s)",
                "concurrency (requests in flight)",
            )
            title = ax.get_title()
            assert "tiny" in title and results.context.machine in title and "ensemble" in title
            assert ax.get_legend() is not None
    finally:
        for fig in drawn.values():
            plt.close(fig)


def test_genai_perf_shaped_exports(sweep: tuple[Path, str]) -> None:
    path = (
        sweep[0] / "genai-perf" / "ensemble-triton-tensorrtllm-concurrency2"
        / "profile_export_genai_perf.json"
    )  # fmt: skip
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["request_throughput", "request_latency", "time_to_first_token"]
    for key in ("inter_token_latency", "output_token_throughput", "output_sequence_length"):
        assert key in data
    assert data["output_sequence_length"]["avg"] == OUTPUT_LEN
    assert set(data["time_to_first_token"]) == {
        "unit", "avg", "p25", "p50", "p75", "p90", "p95", "p99", "min", "max", "std",
    }  # fmt: skip
    assert data["input_config"]["concurrency"] == 2 and data["input_config"]["streaming"] is True


def test_request_rate_dataset_and_whole_responses(served: Any, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        '{"text_input": "Hello there"}\n{"text_input": "Say \\"hi\\"", "output_len": 3}\n'
    )
    code, _ = run_main(
        [
            "perf", "--url", served.grpc_url, "--metrics-url", served.metrics_url,
            "--request-rate", "20", "--dataset", str(data), "--no-stream", *SHORT,
            "--sla-ttft", "10000", "--out", str(tmp_path / "run"), "--report", "md",
        ]
    )  # fmt: skip
    assert code == 0
    results = PerfResults.read(tmp_path / "run")
    ((series, lvl),) = results.levels()
    assert series.model == "ensemble" and not series.streamed
    assert results.workload.mode == "request_rate" and results.workload.dataset == str(data)
    m = lvl.metrics
    assert m is not None and m.expected_output_tokens is None  # the dataset varies it
    assert m.requests_with_unexpected_output_tokens == 0
    assert {m.output_tokens_per_request.min, m.output_tokens_per_request.max} <= {3.0, 4.0}
    assert m.goodput_requests_per_s is not None and m.goodput_requests_per_s > 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "![Output throughput vs end-to-end latency](throughput_latency.png)" in report
    assert not (tmp_path / "run" / "ttft.png").exists()  # nothing streamed: no TTFT plot


def test_bad_input_exits_2_before_any_load(
    served: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--url", served.grpc_url]
    cases = [
        ([], "give a repository to serve (REPO) or a running server (--url)"),
        ([*url, "--concurrency", "1,x"], "is not a comma-separated list of integers"),
        ([*url, "--compare-models", "--model", "ensemble"], "--compare-models or --model"),
        ([*url, "--concurrency", "1", "--request-rate", "2"], "not both"),
        ([*url, "--model", "tensorrt_llm_bls", "--stream"], "is not decoupled and cannot stream"),
        ([*url, "--model", "nope"], "model 'nope' is not served"),
        ([*url, "--input-len", "5000"], "max_input_len"),
    ]
    for args, message in cases:
        out = tmp_path / f"out{len(message)}"
        with pytest.raises(SystemExit) as info:
            main(
                ["perf", *args, *SHORT[4:], "--out", str(out)]
                if args
                else ["perf", "--out", str(out)]
            )
        err = capsys.readouterr().err
        assert info.value.code == 2, (args, err)
        assert message in err, (args, err)
        assert not out.exists()  # nothing half-written
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit) as info:
        main(["perf", *url, "--out", str(taken)])
    assert info.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


def test_perf_help_shows_the_measuring_command_and_the_subcommands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run_main(["perf", "--help"])
    assert code == 0
    assert out.startswith("Usage: trtbuild perf [OPTIONS] [REPO]")
    assert "trtbuild perf history DB" in out and "--compare-models" in out
    code, out = run_main(["perf", "history", "--help"])
    assert code == 0 and out.startswith("Usage: trtbuild perf history [OPTIONS] DB")
    with pytest.raises(SystemExit) as info:
        main(["perf", "history", "/nonexistent/h.sqlite"])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_killing_the_server_mid_run_gives_a_partial_result_and_exit_1(
    portable_engine: Path, tmp_path: Path
) -> None:
    """The server dies after the first level: that level is kept, the run is marked partial."""
    from trtbuild.render import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec, ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    repo = render_repository(repo_spec(portable_engine, limits=limits), tmp_path / "repository")
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TRTBUILD_DEBUG"}
    with TritonServer(serve, quiet=True, watch=False) as server:
        child = subprocess.Popen(
            [
                sys.executable, "-m", "trtbuild", "perf", "--url", server.grpc_url,
                "--metrics-url", server.metrics_url, "--concurrency", "1,2,4", *SHORT,
                "--out", str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        seen = []
        assert child.stderr is not None
        for line in child.stderr:
            seen.append(line)
            if line.startswith("ensemble c=1:"):  # the first level is measured: now kill it
                assert server.pid is not None
                os.killpg(server.pid, signal.SIGKILL)
                break
        rest, tail = child.communicate(timeout=120)
    err = "".join(seen) + tail
    assert child.returncode == 1, err
    assert tail.rstrip().splitlines()[-1].startswith("Error: partial results (ensemble c=2: ")
    results = PerfResults.read(out / "results.json")
    assert results.partial is True
    assert results.partial_reason is not None and "c=2" in results.partial_reason
    levels = results.series[0].levels
    assert levels[0].metrics is not None and levels[0].error is None
    assert levels[1].metrics is None and levels[1].error
    assert levels[2].metrics is None and "not measured" in (levels[2].error or "")
    assert "[PARTIAL]" in rest


def test_an_empty_export_is_measured_again_and_said(
    served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf_analyzer 2.51 has exited 0 with a 0-byte profile export (seen on a loaded 2-core
    machine); a stand-in that runs the real one and then empties its first export shows the
    level measured once more, the results complete, and the notes saying so."""
    import trtbuild.perf as perf
    from trtbuild.perf_analyzer import PerfAnalyzer, find_perf_analyzer

    real = find_perf_analyzer()
    marker = tmp_path / "emptied"
    fake = tmp_path / "fake_perf_analyzer"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'"{real.binary}" "$@"; code=$?\n'
        'export_file=""; prev=""\n'
        'for arg in "$@"; do [ "$prev" = --profile-export-file ] && export_file="$arg"; prev="$arg"; done\n'
        f'if [ -n "$export_file" ] && [ ! -e "{marker}" ]; then : > "$export_file"; touch "{marker}"; fi\n'
        "exit $code\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(perf, "find_perf_analyzer", lambda: PerfAnalyzer(fake, real.env))
    code, table = run_main(
        [
            "perf", "--url", served.grpc_url, "--metrics-url", served.metrics_url,
            "--model", "tensorrt_llm", "--concurrency", "1", *SHORT, "--out", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    assert code == 0, table
    assert marker.exists()  # the first export really was emptied
    results = PerfResults.read(tmp_path / "run")
    assert not results.partial
    ((_, lvl),) = results.levels()
    assert lvl.metrics is not None and lvl.error is None
    assert any("wrote an empty profile export; measured again" in n for n in results.notes)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b"{", SpecError, r"is not valid JSON \(Expecting .*; run 'trtbuild perf' again$"),
        (b"\xff{", SpecError, r"is not valid JSON \('utf-8' codec.*; run 'trtbuild perf' again$"),
        (b'{"format": 99}', IncompatibleArtifact, "has format 99, newer than this trtbuild reads"),
    ],
    ids=["not-json", "not-utf8", "newer"],
)
def test_a_broken_or_newer_results_file_names_the_fix(
    tmp_path: Path, content: bytes, error: type[Exception], message: str
) -> None:
    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(error, match=message):
        PerfResults.read(tmp_path)
