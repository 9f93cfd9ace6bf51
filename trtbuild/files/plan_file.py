"""A ``trtbuild plan --json`` file: the one reader, for ``trtbuild engine --plan`` and
``trtbuild repo --plan`` alike (the ``Plan`` model is strict: a file that validates for one
validates for both)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from trtbuild.errors import SpecError, first_error
from trtbuild.plan import Plan


def read_plan(path: Path) -> Plan:
    try:
        return Plan.model_validate_json(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SpecError(
            f"{path} not found; write one with 'trtbuild plan ... --json > {path}'."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read plan {path}: {exc}; regenerate it with trtbuild plan"
        ) from exc
    except ValidationError as exc:
        raise SpecError(
            f"{path} is not a trtbuild plan ({first_error(exc)}); regenerate it with "
            "'trtbuild plan ... --json'"
        ) from exc


def write_plan(path: Path, plan: Plan) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(plan.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
    return path


__all__ = ["read_plan", "write_plan"]
