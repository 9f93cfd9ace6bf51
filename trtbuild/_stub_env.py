"""The Python that Triton's Python-backend stubs run: checked before serving, built when needed.

A stub embeds its own interpreter and runs it isolated (``sys.flags.isolated``: PYTHONPATH and the
user site are ignored); its ``sys.prefix`` comes from the first ``python3`` on the PATH it is given.
With the nvidia-pytriton wheel trtbuild gives that PATH, so the stub's environment is trtbuild's to
get right. Two ways it went wrong on a GPU image (docs/perf/h200.md):

- numpy >= 2 with a stub from Triton <= 2.51 (the wheel's): the stub's pybind11 (2.10) reads numpy
  2's array descriptors at the wrong offsets; responses arrive as empty tensors and bytes tensors
  fail to deserialize, killing the stub. Triton 2.52 (python_backend#384, pybind11 2.12) fixed it.
- numpy 1.26 in front of an image whose scipy/scikit-learn need numpy 2: transformers imports
  scikit-learn while loading a model, and the model fails to load.

``prepare`` probes the environment the stub would get (the same interpreter, isolated, importing
what the repository's Python models import). If it would corrupt tensors or cannot import a
module, trtbuild builds a dedicated environment and probes that: a venv of the same interpreter
whose site-packages is numpy < 2 (from a wheel: the host's, if it is < 2, is used as is) plus
symlinks to the host's distributions that the models' imports need (their install requirements,
transitively: torch, transformers and what they require, never optional extras such as scipy or
scikit-learn). What cannot be made to work is refused (``StubEnvError``, exit 2) with a one-line
fix, before tritonserver starts.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtbuild import paths, proc
from trtbuild._atomic import atomic_dir
from trtbuild.errors import RuntimeFailure, UserError
from trtbuild.files.model_config import load_configs

WHEEL_TRITON = (2, 51)  # nvidia-pytriton 0.7.0 carries Triton 2.51
FIRST_NUMPY2_TRITON = (2, 52)  # python_backend#384 (pybind11 2.10 -> 2.12)
NUMPY_WHEEL_ENV = "TRTBUILD_STUB_NUMPY"  # a numpy<2 wheel, or a folder holding one
MARKER = "trtbuild-stub-env.json"
PROBE_TIMEOUT_S = 300.0
BACKEND_MODULES = frozenset({"triton_python_backend_utils"})  # the backend provides it
# installed beside transformers when present: tokenizers that need them are loaded through them
TOKENIZER_EXTRAS = ("sentencepiece", "tiktoken", "google.protobuf", "jinja2")
# imported while transformers loads a model, not when it is imported (scikit-learn comes in here)
DEEP_IMPORTS = {"transformers": ("transformers.modeling_utils", "transformers.generation.utils")}

_PROBE = r"""
import importlib, json, sys
mods, deep = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
       "prefix": sys.prefix, "numpy": None, "failures": {}}
for name in mods:
    try:
        module = importlib.import_module(name)
        if name == "numpy":
            out["numpy"] = str(module.__version__)
        for sub in deep.get(name, []):
            importlib.import_module(sub)
    except BaseException as exc:
        out["failures"][name] = ("%s: %s" % (type(exc).__name__, exc)).splitlines()[0][:300]
print("TRTBUILD-PROBE " + json.dumps(out))
"""

_CLOSURE = r"""
import json, re, sys
from importlib import metadata
roots = json.loads(sys.argv[1])
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
dists = {}
for d in metadata.distributions():
    if d.metadata["Name"]:
        dists.setdefault(norm(d.metadata["Name"]), d)  # the first on sys.path wins, as for imports
providers = metadata.packages_distributions()
todo = [norm(n) for m in roots for n in providers.get(m.split(".")[0], [])]
seen = {}
while todo:
    name = todo.pop()
    if name in seen or name not in dists:
        continue
    seen[name] = d = dists[name]
    for line in d.requires or []:
        if Requirement is not None:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(norm(req.name))
        elif "extra ==" not in line and "extra==" not in line:
            todo.append(norm(re.split(r"[ ;<>=!~\[(]", line, maxsplit=1)[0]))
out = []
for name, d in sorted(seen.items()):
    tops = sorted({str(f).split("/")[0] for f in (d.files or [])} - {"", "..", "__pycache__"})
    out.append({"name": name, "version": d.version, "site": str(d.locate_file("")), "top": tops})
base = getattr(sys, "_base_executable", None) or sys.executable
print("TRTBUILD-CLOSURE " + json.dumps({"dists": out, "base": base,
      "python": "%d.%d.%d" % sys.version_info[:3]}))
"""


class StubEnvError(UserError):
    """The Python-backend stubs' environment would not work; the message names the fix."""


@dataclass(frozen=True)
class EnvReport:
    """What the stub's interpreter imports, run the way the stub runs it (isolated)."""

    python: str  # the python3 the stub would take its prefix from
    version: str
    numpy: str | None
    failures: dict[str, str] = field(default_factory=dict)  # module -> first line of its error


def needed_modules(repo: Path) -> tuple[str, ...]:
    """The third-party modules the repository's Python models import (numpy first: the backend's
    own utilities import it), read from their source: ``model.py`` and the sibling modules it
    imports. Imports under ``if TYPE_CHECKING`` and imports an ``except ImportError`` covers are
    optional and left out."""
    repo = Path(repo)
    needed: set[str] = set()
    python_models = [m for m, c in load_configs(repo).items() if c.backend == "python"]
    for model in python_models:
        for version in sorted((repo / model).iterdir()):
            if version.is_dir() and (version / "model.py").is_file():
                needed |= _imports_of(version / "model.py", version)
    if not python_models:
        return ()
    needed.add("numpy")
    return tuple(sorted(needed, key=lambda m: (m != "numpy", m)))


def _imports_of(path: Path, folder: Path, seen: set[Path] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()  # tritonserver reports a model it cannot load
    found: set[str] = set()
    for name in _required_imports(tree):
        top = name.split(".")[0]
        local = folder / f"{top}.py"
        if local.is_file():
            found |= _imports_of(local, folder, seen)
        elif (folder / top / "__init__.py").is_file():
            continue
        elif top not in sys.stdlib_module_names and top not in BACKEND_MODULES:
            found.add(top)
    return found


def _required_imports(tree: ast.AST) -> list[str]:
    names: list[str] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import) and not optional:
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not optional and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for child in node.orelse:
                visit(child, optional)
            return
        elif isinstance(node, ast.Try):
            guarded = any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, optional or guarded)
            for handler in node.handlers:
                for child in handler.body:
                    visit(child, True)
            for child in [*node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        for sub in ast.iter_child_nodes(node):
            visit(sub, optional)

    visit(tree, False)
    return names


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    return any(
        isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
        for n in ast.walk(handler.type)
    )


# -- probing ------------------------------------------------------------------------------------
def probe(python: Path, env: dict[str, str], modules: tuple[str, ...]) -> EnvReport:
    """Import ``modules`` with ``python -I`` under ``env`` (what the stub does at load)."""
    return _probe(str(python), tuple(sorted(env.items())), modules)


@functools.lru_cache(maxsize=32)
def _probe(
    python: str, env_items: tuple[tuple[str, str], ...], modules: tuple[str, ...]
) -> EnvReport:
    deep = {m: list(DEEP_IMPORTS[m]) for m in modules if m in DEEP_IMPORTS and "torch" in modules}
    out = _run_script(python, dict(env_items), _PROBE, json.dumps(list(modules)), json.dumps(deep))
    data = _tagged(out, "TRTBUILD-PROBE", python)
    return EnvReport(python, data["python"], data["numpy"], dict(data["failures"]))


def _run_script(python: str, env: dict[str, str], script: str, *args: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env.update(env)
    try:
        done = proc.run(
            [python, "-I", "-c", script, *args],
            env=full_env,
            inherit_env=False,
            quiet=True,
            check=False,
            timeout=PROBE_TIMEOUT_S,
        )
    except (UserError, RuntimeFailure) as exc:
        raise StubEnvError(
            f"cannot run the Python-backend stub's interpreter {python} ({exc}); put a working "
            "python3 first on PATH"
        ) from exc
    return done.output


def _tagged(output: str, tag: str, python: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith(tag + " "):
            return dict(json.loads(line[len(tag) + 1 :]))
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    raise StubEnvError(
        f"the Python-backend stub's interpreter {python} fails to start isolated ({last}); "
        "put a working python3 first on PATH"
    )


def numpy_breaks_stub(numpy: str | None, triton: tuple[int, int]) -> bool:
    """numpy >= 2 with a stub older than Triton 2.52 corrupts every tensor."""
    return numpy is not None and _major(numpy) >= 2 and triton < FIRST_NUMPY2_TRITON


def problem(report: EnvReport, triton: tuple[int, int] = WHEEL_TRITON) -> str | None:
    """Why a stub running ``report``'s environment would fail, or None."""
    if numpy_breaks_stub(report.numpy, triton):
        return (
            f"the Python-backend stub would run {report.python} with numpy {report.numpy}, and "
            f"Triton {triton[0]}.{triton[1]}'s stub corrupts tensors with numpy >= 2 (empty "
            "outputs, dead stubs)"
        )
    if report.failures:
        name, error = next(iter(report.failures.items()))
        return f"the Python-backend stub's Python ({report.python}) cannot import {name} ({error})"
    return None


# -- preparing ----------------------------------------------------------------------------------
def prepare(
    repo: Path, env: dict[str, str], *, triton: tuple[int, int] = WHEEL_TRITON
) -> dict[str, str]:
    """The environment to start tritonserver with, so that every Python model of ``repo`` loads.

    ``env`` is what trtbuild would give tritonserver (its PATH decides the stub's interpreter).
    Returns ``env`` itself when that works, else ``env`` with a dedicated environment first on
    PATH; raises ``StubEnvError`` with a one-line fix when neither works.
    """
    modules = needed_modules(repo)
    if not modules:
        return env
    python = _stub_python(env)
    report = probe(python, env, modules)
    why = problem(report, triton)
    if why is None:
        return env
    wheel = None
    if report.numpy is None or _major(report.numpy) >= 2:
        wheel = find_numpy_wheel(report.version)
        if wheel is None:
            raise StubEnvError(f"{why}; fix: {_wheel_fix(report.version)}, then serve again")
    built = build_env(python, env, modules, wheel)
    new_env = {**env, "PATH": f"{built / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    second = probe(built / "bin" / "python3", new_env, modules)
    again = problem(second, triton)
    if again is not None:
        name = next(iter(second.failures), "numpy")
        fix = _wheel_fix(report.version) if name == "numpy" else f"{python} -m pip install {name}"
        raise StubEnvError(
            f"{why}; the stub environment trtbuild built for it ({built}) fails too: {again}; "
            f"fix: {fix}"
        )
    source = f"numpy from {wheel.name}" if wheel else "the host's numpy"
    print(
        f"note: {why}; serving with trtbuild's stub environment {built} ({source}, the host's "
        f"{', '.join(m for m in modules if m != 'numpy')} and their requirements)",
        file=sys.stderr,
        flush=True,
    )
    return new_env


def _stub_python(env: dict[str, str]) -> Path:
    found = shutil.which("python3", path=env.get("PATH", os.environ.get("PATH", "")))
    if found is None:
        raise StubEnvError(
            "no python3 on PATH for the Python-backend stub; put the Python that has torch and "
            "transformers first on PATH"
        )
    return Path(found)


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def _py_tag(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"cp{major}{minor}"


def _wheel_fix(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    return (
        f"python3 -m pip download 'numpy<2' --no-deps --only-binary=:all: --python-version "
        f"{major_minor} -d {wheels_dir()}"
    )


def wheels_dir() -> Path:
    return paths.home() / "wheels"


def find_numpy_wheel(python_version: str) -> Path | None:
    """A numpy < 2 wheel for this Python: ``$TRTBUILD_STUB_NUMPY`` (a wheel or a folder), else
    trtbuild's wheel folder. The newest 1.x wins."""
    given = os.environ.get(NUMPY_WHEEL_ENV)
    places = [Path(given)] if given else [wheels_dir()]
    tag = _py_tag(python_version)
    found: list[tuple[tuple[int, ...], Path]] = []
    for place in places:
        candidates = [place] if place.is_file() else sorted(place.glob("numpy-*.whl"))
        for wheel in candidates:
            parts = wheel.name.split("-")
            if len(parts) < 5 or parts[0] != "numpy" or _major(parts[1]) >= 2:
                continue
            if parts[2] != tag:
                continue
            found.append((tuple(int(x) for x in re.findall(r"\d+", parts[1])[:3]), wheel))
    return max(found)[1] if found else None


def build_env(
    python: Path, env: dict[str, str], modules: tuple[str, ...], wheel: Path | None
) -> Path:
    """A venv of ``python``'s interpreter holding numpy (from ``wheel``, else the host's) and
    symlinks to the host distributions ``modules`` need; reused while the host is unchanged."""
    roots = [*modules, *TOKENIZER_EXTRAS] if "transformers" in modules else list(modules)
    out = _run_script(str(python), env, _CLOSURE, json.dumps(roots))
    closure = _tagged(out, "TRTBUILD-CLOSURE", str(python))
    dists = [d for d in closure["dists"] if not (wheel is not None and d["name"] == "numpy")]
    key = hashlib.sha256(
        json.dumps(
            [
                closure["base"],
                closure["python"],
                wheel.name if wheel else None,
                [(d["name"], d["version"], d["site"]) for d in dists],
            ]  # fmt: skip
        ).encode()
    ).hexdigest()[:12]
    dest = paths.home() / "stub-envs" / f"py{_py_tag(closure['python'])[2:]}-{key}"
    marker = dest / MARKER
    if marker.is_file():
        return dest
    with atomic_dir(dest, force=True) as tmp:
        _make_venv(Path(closure["base"]), tmp)
        site = _site_packages(tmp)
        for dist in dists:
            for top in dist["top"]:
                source, link = Path(dist["site"]) / top, site / top
                if source.exists() and not link.exists() and not link.is_symlink():
                    link.symlink_to(source)
        if wheel is not None:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "key": key,
                    "python": closure["python"],
                    "numpy_wheel": str(wheel) if wheel else None,
                    "linked": [f"{d['name']}=={d['version']}" for d in dists],
                },  # fmt: skip
                indent=2,
            )
            + "\n"
        )
    return dest


def _make_venv(base: Path, dest: Path) -> None:
    """A venv without pip (``python -m venv`` is the standard library's)."""
    done = proc.run(
        [base, "-I", "-m", "venv", "--without-pip", "--clear", dest], quiet=True, check=False
    )
    if done.returncode != 0:
        raise StubEnvError(
            f"cannot make a venv with {base} for the Python-backend stub ({done.output.strip()}); "
            f"fix: install the venv module for {base} (Debian: apt-get install python3-venv)"
        )


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise StubEnvError(f"the venv {venv} has no lib/python3*/site-packages; report a bug")
    return found[0]
