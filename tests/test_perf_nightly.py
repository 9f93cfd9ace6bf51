"""scripts/nightly_perf.sh: the matrix, the history, and regressions caught (noise-aware)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.perf_fakes import make_results
from trtbuild._perf_history import History
from trtbuild.errors import SpecError
from trtbuild.perf_nightly import PerfMatrix

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nightly_perf.sh"


def nightly(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "TRTBUILD": str(Path(sys.executable).parent / "trtbuild"),
            "TRTBUILD_PERF_LOCK": str(tmp_path / "lock"),
            **env,
        },
    )


def matrix(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(body)
    return path


COMPARE_ONLY = """
baseline_runs: 5
min_baseline_runs: 3
noise_factor: 2
thresholds:
  output_tokens_per_s: 5
  ttft_ms_p50: 10
entries:
  - name: tiny
    url: 127.0.0.1:1
"""


def history(db: Path, throughputs: list[float], ttfts: list[float]) -> None:
    with History(db) as h:
        for day, (tps, ttft) in enumerate(zip(throughputs, ttfts, strict=True), 1):
            h.append(
                make_results(tokens_per_s=tps, ttft_ms=ttft, started=f"2026-01-{day:02d}T03:00:00Z")
            )


def test_a_slower_run_fails_naming_the_metric(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    history(db, [500, 502, 498, 501, 499, 400], [5.0, 5.1, 4.9, 5.0, 5.0, 5.0])
    done = nightly(
        [str(matrix(tmp_path, COMPARE_ONLY)), "--compare-only"], tmp_path, TRTBUILD_PERF_DB=str(db)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    regressed = [ln for ln in done.stdout.splitlines() if ln.startswith("REGRESSED")]
    # throughput fell by a fifth (requests/s with it); TTFT did not move
    (line,) = [ln for ln in regressed if "output_tokens_per_s" in ln]
    assert "tiny/ensemble/stream/in16-out8/c1/cpu2@ci: output_tokens_per_s 400" in line
    assert "median 500" in line and "-20.0%" in line
    assert len(regressed) == 2 and not any("ttft" in ln for ln in regressed)
    last = done.stderr.splitlines()[-1]
    assert (
        last
        == "Error: nightly perf: 2 regression(s) (output_tokens_per_s, requests_per_s); see the list above"
    )


def test_a_run_within_the_series_noise_passes(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    # this series jitters by about 8% run to run; 7% below its median is within that
    history(db, [500, 540, 460, 530, 470, 465], [5.0, 5.4, 4.6, 5.3, 4.7, 5.3])
    done = nightly(
        [str(matrix(tmp_path, COMPARE_ONLY)), "--compare-only", "--db", str(db)], tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 regressed" in done.stdout and "REGRESSED" not in done.stdout


def test_the_script_says_how_to_call_it(tmp_path: Path) -> None:
    done = nightly([], tmp_path)
    assert done.returncode == 2 and "MATRIX.yaml" in done.stdout
    missing = nightly([str(matrix(tmp_path, COMPARE_ONLY)), "--compare-only"], tmp_path)
    assert missing.returncode == 2 and "no history database" in missing.stderr


def test_the_matrix_is_strict(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown metric 'tokens_per_second'"):
        PerfMatrix.read(matrix(tmp_path, COMPARE_ONLY + "thresholds: {tokens_per_second: 5}\n"))
    with pytest.raises(SpecError, match="Extra inputs are not permitted"):
        PerfMatrix.read(matrix(tmp_path, COMPARE_ONLY.replace("url:", "urll:")))
    with pytest.raises(SpecError, match="exactly one of repo, engine or url"):
        PerfMatrix.read(matrix(tmp_path, "entries: [{name: a, url: x, repo: r}]\n"))
    m = PerfMatrix.read(matrix(tmp_path, "history: h.sqlite\nentries: [{name: a, repo: r}]\n"))
    assert m.history == tmp_path / "h.sqlite" and m.entries[0].repo == tmp_path / "r"
    assert m.thresholds_percent()["output_tokens_per_s"] == 5.0  # the defaults apply


@pytest.mark.server
def test_a_real_tiny_matrix_appends_to_the_history(served: Any, tmp_path: Path) -> None:
    body = f"""
history: history.sqlite
results_dir: results
min_baseline_runs: 1
thresholds: {{output_tokens_per_s: 1000, requests_per_s: 1000, ttft_ms_p50: 1000,
  ttft_ms_p99: 1000, itl_ms_p50: 1000, itl_ms_p99: 1000, e2e_latency_ms_p50: 1000,
  e2e_latency_ms_p99: 1000}}
entries:
  - name: tiny
    url: {served.grpc_url}
    input_len: [8]
    output_len: [4]
    concurrency: [2]
    num_prompts: 8
    measurement_interval_ms: 300
    stability_percent: 999
    max_trials: 3
    warmup_ms: 0
"""
    path = matrix(tmp_path, body)
    for _ in (1, 2):
        done = nightly([str(path)], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "1 without a baseline yet" not in done.stdout  # the second run had one
    with History(tmp_path / "history.sqlite") as h:
        (info,) = h.series()
    assert info.runs == 2 and info.key.startswith("tiny/ensemble/stream/in8-out4/c2/")
    assert len(list((tmp_path / "results").glob("*/tiny-in8-out4/results.json"))) >= 1
    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "trtbuild"), "perf", "history",
            str(tmp_path / "history.sqlite"), "--series", "c2", "--plot", str(tmp_path / "t.png"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "TTFT p50 (ms)" in shown.stdout and (tmp_path / "t.png").stat().st_size > 10_000
