"""The Python-backend stubs' environment: refused when it would corrupt tensors, built when it can be.

The "host" here is a real venv standing in for a GPU image's Python: a numpy package that reports
2.x in its own site-packages, and this test run's site-packages (torch, transformers...) behind it
through a .pth file, as an image's packages would be.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from trtbuild import _stub_env, paths, server
from trtbuild._stub_env import EnvReport


def _host(tmp_path: Path, numpy_version: str | None) -> Path:
    """A venv seeing this run's packages, its own numpy a stand-in reporting ``numpy_version``
    (None: this run's numpy); returns its bin dir."""
    venv = tmp_path / f"host-numpy-{numpy_version}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "zz_image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if numpy_version is None:
        return venv / "bin"
    (site / "numpy").mkdir()
    (site / "numpy" / "__init__.py").write_text(f"__version__ = {numpy_version!r}\n")
    info = site / f"numpy-{numpy_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: numpy\nVersion: {numpy_version}\n"
    )
    (info / "RECORD").write_text(
        f"numpy/__init__.py,,\nnumpy-{numpy_version}.dist-info/METADATA,,\n"
    )
    return venv / "bin"


def _host_env(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    real = server._python_env

    def env() -> dict[str, str]:
        result = real()
        result["PATH"] = f"{bin_dir}{os.pathsep}{result['PATH']}"
        return result

    monkeypatch.setattr(server, "_python_env", env)


def _numpy_wheel(folder: Path) -> Path:
    """This interpreter's numpy (< 2) packed as a wheel, as `pip download 'numpy<2'` would give."""
    dist = metadata.distribution("numpy")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"numpy-{dist.version}-{tag}-{tag}-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for name in dist.files or []:
            path = Path(str(dist.locate_file(name)))
            if str(name).startswith("..") or "__pycache__" in str(name) or not path.is_file():
                continue
            archive.write(path, str(name))
    return wheel


@pytest.fixture(scope="module")
def repository(portable_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtbuild.render import render_repository
    from trtbuild.specs import ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=2, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    return render_repository(
        repo_spec(portable_engine, limits=limits),
        tmp_path_factory.mktemp("stub-env") / "repository",
    )


def test_the_models_imports_are_read_from_their_source(repository: Path) -> None:
    assert _stub_env.needed_modules(repository) == ("numpy", "tokenizers", "torch", "transformers")


def test_optional_and_type_checking_imports_are_not_needed() -> None:
    tree = ast.parse(
        "import os\nimport numpy\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import mypy_only\n"
        "try:\n    import fast_json\nexcept ImportError:\n    import slow_json\n"
        "def f():\n    from transformers import AutoModel\n"
    )
    assert _stub_env._required_imports(tree) == ["os", "numpy", "typing", "transformers"]


@pytest.mark.parametrize(
    ("numpy", "triton", "failures", "expected"),
    [
        ("2.1.0", (2, 51), {}, "numpy 2.1.0, and Triton 2.51's stub corrupts tensors"),
        ("2.1.0", (2, 52), {}, None),  # python_backend#384: pybind11 2.12 reads numpy 2
        ("1.26.4", (2, 51), {}, None),
        (
            "1.26.4",
            (2, 51),
            {"transformers": "AttributeError: np.long"},
            "cannot import transformers",
        ),
    ],
)
def test_what_a_stub_cannot_run_with(
    numpy: str, triton: tuple[int, int], failures: dict[str, str], expected: str | None
) -> None:
    why = _stub_env.problem(EnvReport("/img/bin/python3", "3.12.3", numpy, failures), triton)
    assert (why is None) if expected is None else (expected in (why or ""))


def test_only_a_numpy_1_wheel_for_this_python_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTBUILD_HOME", str(tmp_path / "trtbuild"))
    wheels = tmp_path / "trtbuild" / "wheels"
    wheels.mkdir(parents=True)
    for name in (
        "numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
        "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl",
        "numpy-1.25.2-cp312-cp312-manylinux_2_17_x86_64.whl",
        "numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl",
    ):
        (wheels / name).write_bytes(b"")
    found = _stub_env.find_numpy_wheel("3.12.3")
    assert found is not None and found.name.startswith("numpy-1.26.4-cp312")
    assert _stub_env.find_numpy_wheel("3.10.1") is None
    given = wheels / "numpy-1.25.2-cp312-cp312-manylinux_2_17_x86_64.whl"
    monkeypatch.setenv(_stub_env.NUMPY_WHEEL_ENV, str(given))  # a wheel named outright wins
    assert _stub_env.find_numpy_wheel("3.12.3") == given


def test_serve_refuses_a_host_whose_numpy_is_2_with_the_fix(
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trtbuild.cli import main

    _host_env(monkeypatch, _host(tmp_path, "2.1.0"))
    with pytest.raises(SystemExit) as exited:
        main(["serve", str(repository), "--http-port", "0"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one line: what is wrong, and the fix
    assert "with numpy 2.1.0, and Triton 2.51's stub corrupts tensors with numpy >= 2" in err
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    fix = (
        f"fix: python3 -m pip download 'numpy<2' --no-deps --only-binary=:all: --python-version "
        f"{version} -d {paths.home() / 'wheels'}, then serve again"
    )
    assert fix in err
    assert not (paths.home() / "stub-envs").exists()  # nothing was built, nothing started


def test_with_a_numpy_1_wheel_serve_builds_a_stub_environment_that_serves(
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec

    _host_env(monkeypatch, _host(tmp_path, "2.1.0"))
    wheel = _numpy_wheel(paths.home() / "wheels")
    spec = ServeSpec(repo=repository, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    with TritonServer(spec, quiet=True) as srv:
        built = Path(srv.install.env["PATH"].split(os.pathsep)[0]).parent
        request = urllib.request.Request(
            f"http://{srv.http_url}/v2/models/ensemble/generate",
            data=json.dumps({"text_input": "What is Triton?", "max_tokens": 4}).encode(),
        )
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - loopback
            body = json.loads(resp.read())
    assert body["text_output"]  # tensors came through the stubs intact
    assert built.parent == paths.home() / "stub-envs"
    marker = json.loads((built / _stub_env.MARKER).read_text())
    assert marker["numpy_wheel"] == str(wheel)
    assert not any(x.startswith(("numpy==", "scipy", "scikit-learn")) for x in marker["linked"])
    assert any(x.startswith("torch==") for x in marker["linked"])
    assert f"serving with trtbuild's stub environment {built} (numpy from {wheel.name}" in (
        capsys.readouterr().err
    )


def test_a_view_holds_what_torch_and_transformers_require_and_nothing_else(
    repository: Path, tmp_path: Path
) -> None:
    """The image case where numpy 1.26 went first on PATH and transformers then imported the
    image's scikit-learn, built for numpy 2: the dedicated view links only the install
    requirements of what the models import, so optional extras such as scipy never come in."""
    bin_dir = _host(tmp_path, None)
    site = next(bin_dir.parent.glob("lib/python3*/site-packages"))
    for name in ("scipy", "sklearn"):  # stand-ins that fail to import, as on the image
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("raise AttributeError('np.long needs numpy 2')\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    python = _stub_env._stub_python(env)
    modules = _stub_env.needed_modules(repository)
    closure_out = _stub_env._run_script(str(python), env, _stub_env._CLOSURE, json.dumps(modules))
    names = {d["name"] for d in _stub_env._tagged(closure_out, "TRTBUILD-CLOSURE", "")["dists"]}
    assert {"torch", "transformers", "numpy", "tokenizers", "huggingface-hub"} <= names
    assert not names & {"scipy", "scikit-learn", "pytest", "trtbuild", "nvidia-pytriton"}
    built = _stub_env.build_env(python, env, modules, None)
    site_built = next(built.glob("lib/python3*/site-packages"))
    assert not (site_built / "scipy").exists() and not (site_built / "sklearn").exists()
    assert (site_built / "numpy").resolve() == (Path(sysconfig.get_paths()["purelib"]) / "numpy")
    report = _stub_env.probe(built / "bin" / "python3", env, modules)
    assert report.failures == {} and report.numpy == metadata.version("numpy")
    assert _stub_env.build_env(python, env, modules, None) == built  # reused, not rebuilt
