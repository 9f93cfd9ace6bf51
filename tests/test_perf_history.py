"""trtbuild._perf_history: the SQLite history and the noise-aware regression check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.perf_fakes import make_results
from trtbuild._perf_history import History, compare, level_points
from trtbuild.errors import SpecError


def _compare(latest: float, previous: list[float], metric: str = "output_tokens_per_s"):  # type: ignore[no-untyped-def]
    return compare("s", metric, latest, previous, threshold_percent=5, noise_factor=2, min_runs=3)


def test_a_drop_beyond_threshold_and_noise_regresses() -> None:
    c = _compare(80.0, [100.0, 101.0, 99.0, 100.5, 99.5])
    assert c.status == "regressed"
    assert c.baseline == 100.0 and c.change_percent == pytest.approx(-20)
    assert "output_tokens_per_s 80 tokens/s vs median 100" in c.describe()


def test_a_drop_within_the_series_own_spread_passes() -> None:
    """8% below the median fails a 5% threshold only if the series is steadier than that."""
    noisy = [100.0, 110.0, 90.0, 108.0, 93.0]
    assert _compare(92.0, noisy).status == "ok"
    steady = [100.0, 100.5, 99.5, 100.2, 99.8]
    assert _compare(92.0, steady).status == "regressed"


def test_latencies_regress_upwards_and_improve_downwards() -> None:
    base = [10.0, 10.1, 9.9, 10.0]
    assert _compare(13.0, base, "ttft_ms_p50").status == "regressed"
    assert _compare(7.0, base, "ttft_ms_p50").status == "improved"
    assert _compare(10.2, base, "ttft_ms_p50").status == "ok"


def test_too_few_runs_are_no_baseline_never_a_failure() -> None:
    c = _compare(1.0, [100.0, 100.0])
    assert c.status == "no-baseline" and "no baseline yet" in c.describe()


def test_runs_are_appended_listed_and_compared(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        for i, tps in enumerate([500.0, 505.0, 495.0, 400.0]):
            h.append(make_results(tokens_per_s=tps, started=f"2026-01-0{i + 1}T00:00:00Z"))
        (info,) = h.series()
        assert info.runs == 4 and info.key == "tiny/ensemble/stream/in16-out8/c1/cpu2@ci"
        assert h.find_series("ensemble/stream") == info.key
        points = h.points(info.key)
        assert [p[2]["output_tokens_per_s"] for p in points] == [500.0, 505.0, 495.0, 400.0]
        found = h.compare_latest(
            [info.key],
            {"output_tokens_per_s": 5.0, "ttft_ms_p50": 10.0},
            baseline_runs=5,
            min_runs=3,
            noise_factor=2,
        )
    status = {c.metric: c.status for c in found}
    assert status == {"output_tokens_per_s": "regressed", "ttft_ms_p50": "ok"}


def test_partial_runs_stay_out_and_bad_files_are_refused(tmp_path: Path) -> None:
    partial = make_results().model_copy(update={"partial": True, "partial_reason": "x"})
    with History(tmp_path / "h.sqlite") as h, pytest.raises(ValueError, match="partial"):
        h.append(partial)
    (tmp_path / "junk").write_text("not a database " * 100)
    with pytest.raises(SpecError, match="not a trtbuild perf history"):
        History(tmp_path / "junk")
    with pytest.raises(SpecError, match="does not exist"):
        History(tmp_path / "missing.sqlite", create=False)


def test_every_latency_statistic_is_stored() -> None:
    points = level_points(make_results().series[0].levels[0].metrics)  # type: ignore[arg-type]
    assert {"output_tokens_per_s", "requests_per_s", "ttft_ms_p99", "itl_ms_p50"} <= set(points)
    assert "output_tokens_per_s_per_gpu" not in points  # absent, not zero
