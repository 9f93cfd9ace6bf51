"""perf_analyzer starts as installed once trtbuild gives it its environment."""

from __future__ import annotations

import os

import pytest

from trtbuild import proc
from trtbuild.perf_analyzer import cuda_runtime_libdir, find_perf_analyzer


def test_perf_analyzer_starts_with_the_environment_trtbuild_gives_it() -> None:
    tool = find_perf_analyzer()
    result = proc.run([tool.binary, "--version"], env=tool.env, check=False, quiet=True)
    assert result.returncode == 0, result.output
    assert "Perf Analyzer Version 2.51" in result.output


def test_without_it_the_binary_misses_libcudart() -> None:
    """What users hit when calling it by hand (the README says what to export)."""
    import subprocess

    loader = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False)
    if "libcudart.so.12" in loader.stdout:
        pytest.skip("this machine has a system-wide libcudart.so.12")
    tool = find_perf_analyzer()
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run(
        [str(tool.binary), "--version"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "libcudart.so.12" in done.stderr


def test_the_library_path_names_the_cuda_runtime_wheel() -> None:
    libdir = cuda_runtime_libdir()
    assert libdir is not None and (libdir / "libcudart.so.12").is_file()
    assert str(libdir) in find_perf_analyzer().env["LD_LIBRARY_PATH"].split(os.pathsep)
