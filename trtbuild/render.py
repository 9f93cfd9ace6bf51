"""Render Triton model repositories from the templates, strictly.

One Jinja environment (``StrictUndefined``: a missing value is an error, never an empty string).
Every ``{{ value }}`` passes through ``_finalize``: strings are quoted and escaped for pbtxt,
booleans become ``true``/``false``; enum identifiers must be marked with the ``ident`` filter. The
repository is rendered into a temp dir, every ``config.pbtxt`` is parsed as a Triton
``ModelConfig`` and the ensemble wiring is checked, and only then is it renamed into place.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from trtbuild._atomic import atomic_dir
from trtbuild.builder.manifest import MANIFEST, check_engine_dir
from trtbuild.ensembles import kind_for
from trtbuild.errors import SpecError, TrtbuildError
from trtbuild.files.model_config import ConfigParseError, config_files, load_configs, parse_config
from trtbuild.files.repo_spec import SPEC_FILE, read_repo_spec, write_repo_spec
from trtbuild.findings import errors
from trtbuild.specs import RepoSpec

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^-?\d+(, -?\d+)*$")


class TemplateRenderError(TrtbuildError):
    """A template could not be rendered or produced an invalid config (a bug in trtbuild)."""


def templates_root() -> Path:
    return Path(str(importlib.resources.files("trtbuild.model_repository_templates")))


def pbtxt_string(value: str) -> str:
    """A pbtxt string literal: quoted, with backslash, quote and control characters escaped."""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _finalize(value: Any) -> Markup:
    """Autoescape is on so that macro output arrives as ``Markup`` (already rendered config text);
    every other value is turned into pbtxt here, and strings are always quoted and escaped."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable
    if isinstance(value, bool):
        return Markup("true" if value else "false")
    if isinstance(value, int | float):
        return Markup(repr(value))
    if isinstance(value, str | Path):
        return Markup(pbtxt_string(str(value)))
    raise TemplateRenderError(f"cannot render {type(value).__name__} {value!r} into a config")


def _ident(value: Any) -> Markup:
    """Mark an enum name or a dims list to be rendered bare (validated, never free text)."""
    text = str(value)
    if not _IDENT.match(text):
        raise TemplateRenderError(f"{text!r} is not an identifier; render it as a string")
    return Markup(text)


def _pbstring(value: Any) -> str:
    """Parameters are strings in Triton configs: stringify a bool/number/str/path value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise TemplateRenderError("a parameter value is None")
    return str(value)


def _yaml(value: Any) -> Markup:
    """A YAML document (``1/model.yaml``), written by the YAML library so every string is quoted
    and escaped as YAML needs."""
    import yaml

    return Markup(yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=1000).rstrip())


def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_root())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=True,
        finalize=_finalize,
    )
    env.filters["ident"] = _ident
    env.filters["pbstring"] = _pbstring
    env.filters["yaml"] = _yaml
    return env


def _parse_rendered(text: str, where: str) -> Any:
    """A rendered config must parse: a failure is a bug in trtbuild's templates."""
    try:
        return parse_config(text, where)
    except ConfigParseError as exc:
        raise TemplateRenderError(exc.message) from exc


def render_model_dir(
    env: jinja2.Environment,
    src: str,
    dst: Path,
    context: dict[str, Any],
    extra_files: dict[str, Path | None] | None = None,
) -> None:
    """Render ``templates/<src>``: ``*.j2`` through Jinja, everything else copied verbatim.

    ``extra_files`` maps a path in the model dir to a file copied there, or to ``None`` to leave
    that template file out (a flavor that does not use it)."""
    root = templates_root() / src
    if not root.is_dir():
        raise TemplateRenderError(f"no template folder {src!r}")
    for path in sorted(root.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".j2":
            name = f"{src}/{rel}"
            try:
                text = env.get_template(name).render(context)
            except jinja2.UndefinedError as exc:
                raise TemplateRenderError(f"{name}: {exc.message}") from exc
            target.with_suffix("").write_text(text)
        else:
            shutil.copy2(path, target)
    (dst / "1").mkdir(parents=True, exist_ok=True)  # Triton needs a version dir, even for ensembles
    for rel_name, source in (extra_files or {}).items():
        if source is None:
            (dst / rel_name).unlink(missing_ok=True)
            continue
        (dst / rel_name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dst / rel_name)


def render_repository(spec: RepoSpec, out_dir: Path, *, force: bool = False) -> Path:
    """Render the repository that ``spec`` describes into ``out_dir`` (atomically)."""

    kind = kind_for(spec)
    problems = errors(kind.spec_findings(spec))
    if problems:
        raise SpecError("; ".join(f"{f.message}; {f.fix}" for f in problems))
    env = jinja_env()
    with atomic_dir(out_dir, force=force) as tmp:
        for model, (template, extra) in kind.models(spec).items():
            render_model_dir(env, template, tmp / model, kind.context(spec, model), extra)
        configs = {p.parent.name: _parse_rendered(p.read_text(), str(p)) for p in config_files(tmp)}
        findings = errors(kind.check(configs))
        if findings:
            raise TemplateRenderError(
                "rendered repository is inconsistent:\n  " + "\n  ".join(map(str, findings))
            )
        write_repo_spec(tmp, spec, kind.KIND)
    return out_dir


def preflight(repo: Path, *, force: bool = False, runtime: Any = None) -> list[str]:
    """Before serving: every config parses, and the engine the repository serves suits this
    machine's GPU and TensorRT-LLM (``runtime``: a ``builder.manifest.ServingHost``, detected when
    None). A mismatch raises ``IncompatibleArtifact`` unless ``force``; then it is returned."""

    repo = Path(repo)
    configs = load_configs(repo)
    if not configs:
        raise SpecError(
            f"{repo} holds no model (no */config.pbtxt); render one with `trtbuild repo`"
        )
    engine = served_engine_dir(repo, configs)
    if engine is None or not (engine / MANIFEST).is_file():
        return []  # not built by trtbuild: nothing recorded to check against
    return check_engine_dir(engine, runtime=runtime, force=force)[1]


def served_engine_dir(repo: Path, configs: dict[str, Any]) -> Path | None:
    """The engine directory a repository serves: from its trtbuild spec, else from the core
    model's ``gpt_model_path`` (TensorRT-LLM) or ``model_dir`` (portable runtime) parameter."""
    if (repo / SPEC_FILE).is_file():
        return Path(read_repo_spec(repo).engine_dir)
    core = configs.get("tensorrt_llm")
    for key in ("gpt_model_path", "model_dir"):
        if core is not None and key in core.parameters:
            return Path(core.parameters[key].string_value)
    return None
