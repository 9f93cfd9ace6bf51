"""Reading JSON files a user gave or a tool wrote, with errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trtbuild.errors import IncompatibleArtifact, SpecError, TrtbuildError


def load_json(path: Path, *, fix: str, error: type[TrtbuildError] = SpecError) -> Any:
    """Parse ``path``; a missing, unreadable or malformed file raises ``error`` ending in ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path} is missing or not JSON: {exc.strerror or exc}; {fix}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}") from exc


def load_json_object(
    path: Path, *, fix: str, error: type[TrtbuildError] = SpecError
) -> dict[str, Any]:
    """``load_json`` for a file that must hold one JSON object."""
    data = load_json(path, fix=fix, error=error)
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object; {fix}")
    return data


def refuse_newer_format(path: Path, data: Any, newest: int) -> None:
    """A file whose integer ``format`` is newer than ``newest`` (what this trtbuild writes) is
    refused with the fix; anything else is left to the file's model to validate."""
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] > newest:
        raise IncompatibleArtifact(
            f"{path} has format {data['format']}, newer than this trtbuild reads ({newest}); "
            "upgrade trtbuild"
        )
