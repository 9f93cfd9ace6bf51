"""Find Triton's perf_analyzer and the environment it needs to start.

``tritonclient==2.51.0``'s manylinux wheel puts a ``perf_analyzer`` binary next to the Python
interpreter. It links ``libcudart.so.12`` (also on machines without a GPU) and Debian's
``libb64.so.0d``: the first comes from PyPI's ``nvidia-cuda-runtime-cu12`` (trtbuild's ``bench``
extra), whose directory is not on the loader's path, so the binary fails as installed with
"libcudart.so.12: cannot open shared object file". ``find_perf_analyzer`` returns the binary with
the ``LD_LIBRARY_PATH`` (and ``PATH``, for genai-perf, which runs ``perf_analyzer`` from ``PATH``)
that make it start. By hand::

    export LD_LIBRARY_PATH="$(python -c 'import nvidia.cuda_runtime as m; print(m.__path__[0])')/lib:$LD_LIBRARY_PATH"
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from trtbuild.errors import ToolNotFound

SETUP_HINT = (
    "Run 'make setup' (tritonclient==2.51.0 ships perf_analyzer; the bench extra its libcudart)."
)


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]  # added to the caller's environment when running it


def cuda_runtime_libdir() -> Path | None:
    """The directory holding ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel."""
    try:
        import nvidia.cuda_runtime as cuda_runtime
    except ImportError:
        return None
    for base in getattr(cuda_runtime, "__path__", []):
        lib = Path(base) / "lib"
        if (lib / "libcudart.so.12").is_file():
            return lib
    return None


def _prepend(name: str, directory: Path) -> str:
    current = os.environ.get(name, "")
    return f"{directory}{os.pathsep}{current}" if current else str(directory)


def find_perf_analyzer() -> PerfAnalyzer:
    """The perf_analyzer beside this Python (else on PATH) and the environment that starts it."""
    beside = Path(sys.executable).parent / "perf_analyzer"
    found = beside if beside.is_file() else shutil.which("perf_analyzer")
    if found is None:
        raise ToolNotFound("perf_analyzer", SETUP_HINT)
    binary = Path(found)
    env = {"PATH": _prepend("PATH", binary.parent)}
    libdir = cuda_runtime_libdir()
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = _prepend("LD_LIBRARY_PATH", libdir)
    return PerfAnalyzer(binary, env)


__all__ = ["PerfAnalyzer", "cuda_runtime_libdir", "find_perf_analyzer"]
