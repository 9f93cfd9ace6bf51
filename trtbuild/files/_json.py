"""Reading JSON files a user gave or a tool wrote, with errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError, TrtbuildError


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
