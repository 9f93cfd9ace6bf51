"""The wheel carries the templates, the Triton model.py files and the runtime modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_and_model_files(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("trtbuild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "trtbuild/cli.py",
        "trtbuild/files/hf.py",
        "trtbuild/files/model_config.py",
        "trtbuild/builder/engine.py",
        "trtbuild/ensembles/inflight_batcher_llm.py",
        "trtbuild/runtime/engine.py",
        "trtbuild/runtime/detok.py",
        "trtbuild/model_repository_templates/_macros.j2",
        "trtbuild/ensembles/upstream/trtllm-0.19.json",
        "trtbuild/ensembles/upstream/trtllm-1.2.json",
    }
    for model in (
        "ensemble",
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
        "tensorrt_llm_bls",
    ):
        expected.add(
            f"trtbuild/model_repository_templates/inflight_batcher_llm/{model}/config.pbtxt.j2"
        )
    for model in ("preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls"):
        expected.add(f"trtbuild/model_repository_templates/inflight_batcher_llm/{model}/1/model.py")
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)


def test_the_public_api_loads_from_the_package() -> None:
    """README's Python API: every name trtbuild exports resolves (lazily) to its definition."""
    import trtbuild
    from trtbuild import _API

    assert sorted(trtbuild.__all__) == sorted([*_API, "__version__"])
    for name, module in _API.items():
        obj = getattr(trtbuild, name)
        assert obj.__module__ == module or getattr(obj, "__module__", "").startswith(module), name
