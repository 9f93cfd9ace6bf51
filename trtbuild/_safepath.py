"""Which paths may reach a Triton model repository: the one rule, written once.

Triton 2.51's Python backend starts every stub through ``bash -c "exec <stub> <model path> ..."``
with the paths unquoted. A repository at a path containing ``$(touch MARKER)`` runs the command;
a space or a quote splits or breaks the line, and the stub never connects (tritonserver waits
until the startup timeout); non-ASCII paths fail in the stub with ``UnicodeEncodeError``. So
repository, model, engine and tokenizer paths are refused unless every character is an ASCII
letter or digit or one of ``/ . _ - + = @ , : %``, before anything is written or started.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError, TrtbuildError
from trtbuild.files.model_config import parse_config
from trtbuild.findings import REPOSITORY, Finding

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "/._-+=@,:%")
ALLOWED = "ASCII letters, digits and / . _ - + = @ , : %"
# config.pbtxt parameters that name a directory the core model reads (TensorRT-LLM, llmapi,
# the portable runtime), and the one the Python backend hands to bash (`source <path>`)
PATH_PARAMETERS = ("gpt_model_path", "model_dir", "tokenizer_dir", "EXECUTION_ENV_PATH")


def first_unsafe_character(path: str | Path) -> str | None:
    """The first character of ``path`` that is not allowed (see the module doc), else None."""
    return next((ch for ch in str(path) if ch not in SAFE_CHARACTERS), None)


FIX = f"move or rename it to a path of only {ALLOWED}"


def unsafe_path_message(path: str | Path, what: str) -> str | None:
    """What is wrong with ``path`` (naming the character), or None when it is safe."""
    bad = first_unsafe_character(path)
    if bad is None:
        return None
    return (
        f"{what} {str(path)!r} contains {bad!r}, which Triton's Python backend cannot pass "
        "through its unquoted shell command"
    )


def check_safe_path(path: str | Path, what: str) -> None:
    """Raise ``SpecError`` (exit 2) naming the first unsafe character of ``path`` and the fix."""
    message = unsafe_path_message(path, what)
    if message is not None:
        raise SpecError(f"{message}; {FIX}")


def unsafe_path_findings(repo: Path) -> list[Finding]:
    """Every unsafe path a repository would hand to Triton, one error each (``trtbuild check``).

    Checks the repository directory (resolved, as tritonserver is given it), every model directory
    name, a config's ``default_model_filename`` and instance-group names (all part of the stub's
    command line), and the paths in the parameters ``gpt_model_path``, ``model_dir``,
    ``tokenizer_dir`` and ``EXECUTION_ENV_PATH``. A config that does not parse is skipped (the
    parser reports it).
    """

    repo = Path(repo)
    findings: list[Finding] = []
    message = unsafe_path_message(repo.resolve(), "the repository path")
    if message is not None:
        findings.append(Finding(REPOSITORY, message, FIX))
    for config_file in sorted(repo.glob("*/config.pbtxt")):
        model = config_file.parent.name
        message = unsafe_path_message(model, "the model directory name")
        if message is not None:
            findings.append(Finding(REPOSITORY, message, FIX))
        try:
            config: Any = parse_config(config_file.read_text(errors="replace"), str(config_file))
        except (TrtbuildError, OSError):
            continue
        named = [(config.default_model_filename, "default_model_filename")]
        named += [(group.name, "instance_group name") for group in config.instance_group]
        for value, what in named:
            message = unsafe_path_message(value, what) if value else None
            if message is not None:
                findings.append(Finding(model, message, FIX))
        for key in PATH_PARAMETERS:
            if key not in config.parameters:
                continue
            value = config.parameters[key].string_value
            if not value or value.startswith("${"):  # an unfilled upstream placeholder
                continue
            message = unsafe_path_message(value, f"parameter {key}")
            if message is not None:
                findings.append(Finding(model, message, FIX))
    return findings


def check_repository_paths(repo: Path) -> None:
    """Raise ``SpecError`` for the first of ``unsafe_path_findings(repo)``."""
    findings = unsafe_path_findings(repo)
    if findings:
        first = findings[0]
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        prefix = "" if first.model == REPOSITORY else f"model {first.model}: "
        raise SpecError(f"{prefix}{first.message}{more}; {first.fix}")
