"""scripts/bench_gpu.py's parts that need no GPU: the served phase's ``trtbuild perf`` run
(real perf_analyzer against the real tritonserver of the ``served`` fixture) and the chart."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench_gpu


def test_trtbuild_perf_measures_the_running_server(bench: Any, served: Any, tmp_path: Path) -> None:
    """The served phase's trtbuild perf step: the CLI against the running server, read back
    through PerfResults, one row per model and level, its results.json copied to --out."""
    out = tmp_path / "out"
    out.mkdir()
    # on a shared 2-core CI machine any window counts (as in test_perf.py): this checks the
    # run and its rows, not perf_analyzer's stability on a loaded machine
    args = argparse.Namespace(
        workdir=str(tmp_path),
        out=out,
        perf_concurrency="2",
        perf_interval_ms=1000,
        perf_stability_percentage=999,
    )
    repo = Path(served.spec.repo)
    found = bench.trtbuild_perf(args, repo, served)
    assert found["returncode"] == 0, found["output_tail"]
    assert found["argv"][:3] == ["trtbuild", "perf", str(repo)]
    assert found["argv"][found["argv"].index("--stability-percentage") + 1] == "999"
    rows = {(r["model"], r["concurrency"]): r for r in found["rows"]}
    assert set(rows) == {("tensorrt_llm", 2.0), ("ensemble", 2.0)}
    for row in rows.values():
        assert row["error"] is None and row["requests"] > 0
        assert row["output_tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0
    copied = json.loads((out / "trtbuild_perf_results.json").read_text())
    assert {s["model"] for s in copied["series"]} == {"tensorrt_llm", "ensemble"}
    assert copied["workload"]["output_len"] == bench.OUTPUT


def test_trtbuild_perf_is_skipped_without_perf_analyzer(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtbuild import perf_analyzer

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))  # nothing beside it
    monkeypatch.setenv("PATH", str(tmp_path))
    assert perf_analyzer.shutil.which("perf_analyzer") is None
    args = argparse.Namespace(workdir=str(tmp_path), out=tmp_path, perf_concurrency="1")
    found = bench.trtbuild_perf(args, tmp_path, server=None)
    assert "perf_analyzer" in found["skipped"]


def test_the_chart_has_a_bar_per_series_and_level(bench: Any, tmp_path: Path) -> None:
    loops = [
        {"target": "tensorrt_llm", "concurrency": 1, "tokens_per_s": 190.0},
        {"target": "tensorrt_llm", "concurrency": 64, "tokens_per_s": 8700.0},
    ]
    perf_rows = [
        {"model": m, "concurrency": float(c), "output_tokens_per_s": v}
        for m, c, v in (
            ("tensorrt_llm", 1, 185.0),
            ("tensorrt_llm", 64, 8878.0),
            ("ensemble", 64, None),
        )
    ]
    served = {"loops": loops, "trtbuild_perf": {"rows": perf_rows}}
    (tmp_path / "served.json").write_text(json.dumps(served))
    svg = tmp_path / "chart.svg"
    bench.plot(tmp_path, svg, {1: 266.0, 64: 17055.0})
    root = ET.parse(svg).getroot()
    texts = [e.text for e in root.iter() if e.tag.endswith("text")]
    bars = [e for e in root.iter() if e.tag.endswith("rect") and e.get("width") != "12"]  # no key
    assert "trtbuild perf tensorrt_llm" in texts and "served tensorrt_llm" in texts
    assert "trtbuild perf ensemble" not in texts  # a level without a number draws nothing
    assert len(bars) == 4 and "8,878" in texts and "roofline 17,055" in texts
