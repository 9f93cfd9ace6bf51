"""``trtbuild-repo.json``: the ``RepoSpec`` a repository was rendered from, saved beside it, so it can
be re-rendered (``trtbuild repo --spec``), re-checked and served without the engine."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from trtbuild.errors import SpecError, first_error
from trtbuild.files._json import load_json_object
from trtbuild.specs import RepoSpec

SPEC_FILE = "trtbuild-repo.json"


def spec_path(repo_or_file: Path) -> Path:
    """The spec file of a repository directory, or the file itself."""
    path = Path(repo_or_file)
    return path / SPEC_FILE if path.is_dir() else path


def read_repo_spec(repo_or_file: Path) -> RepoSpec:
    """The spec of a repository (or a spec file); a missing or invalid one names the fix."""
    path = spec_path(repo_or_file)
    if not path.is_file():
        raise SpecError(f"{path} not found; the repository was not rendered by trtbuild")
    data = load_json_object(path, fix="re-render with 'trtbuild repo'")
    if "spec" not in data:
        raise SpecError(f"{path} holds no trtbuild spec; re-render with 'trtbuild repo'")
    try:
        return RepoSpec.model_validate(data["spec"])
    except ValidationError as exc:
        raise SpecError(
            f"{path}: invalid {first_error(exc)}; re-render the repository with this trtbuild "
            "('trtbuild repo')"
        ) from exc


def repo_spec_text(spec: RepoSpec, kind: str) -> str:
    """The file's text (also shipped whole, e.g. in a Kubernetes ConfigMap)."""
    return json.dumps({"kind": kind, "spec": spec.model_dump(mode="json")}, indent=2) + "\n"


def write_repo_spec(directory: Path, spec: RepoSpec, kind: str) -> Path:
    path = Path(directory) / SPEC_FILE
    path.write_text(repo_spec_text(spec, kind))
    return path


__all__ = ["SPEC_FILE", "read_repo_spec", "repo_spec_text", "spec_path", "write_repo_spec"]
