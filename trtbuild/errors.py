"""One error hierarchy for trtbuild.

Every error a user can act on is a ``TrtbuildError``; ``cli.main`` is the one place that turns
them into a one-line message and an exit code. ``UserError`` (bad input: exit 2) says what to
fix; ``RuntimeFailure`` (something we ran failed: exit 1) says what happened and where to look.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# scheme://user:password@host -> scheme://***@host (HF_ENDPOINT, proxies, registries)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def first_error(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as one line, ``field.path: message`` (else ``str(exc)``)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {message}" if where else message
    return str(exc)


class TrtbuildError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, details: str | None = None) -> None:
        message = redact(message)  # a URL's user:token@ never reaches a message
        super().__init__(message)
        self.message = message
        # multi-line context (a log tail), printed after the message
        self.details = redact(details) if details else details


class UserError(TrtbuildError):
    """The input is wrong; the message names the fix. Exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A spec, option or file the user gave does not validate."""


class ToolNotFound(UserError):
    """An external program (tritonserver, trtllm-build, perf_analyzer) is missing."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool} not found. {hint}")
        self.tool = tool


class OutputExists(UserError):
    """Refusing to overwrite a user's files."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path} exists and is not empty; pass --force to replace it.")


class IncompatibleArtifact(UserError):
    """An engine or repository was built for another GPU or software version."""


class RuntimeFailure(TrtbuildError):
    """Something trtbuild ran or talked to failed. Exit code 1."""


class ProcessFailed(RuntimeFailure):
    """A child process exited non-zero."""

    def __init__(
        self, argv: Sequence[str], returncode: int, output_tail: str, *, what: str | None = None
    ) -> None:
        import shlex

        label = what or shlex.join(argv[:3])
        super().__init__(
            f"{label} failed with exit code {returncode}: {shlex.join(argv)}",
            details=output_tail or None,
        )
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail


class ServerNotReady(RuntimeFailure):
    """tritonserver exited or did not become ready in time."""


class ModelDied(RuntimeFailure):
    """A model of a running tritonserver died (its Python-backend stub exited, or it went unready)."""


class InferenceError(RuntimeFailure):
    """The server answered a request with an error."""


class InvalidRequest(UserError):
    """The server refused the request as invalid (INVALID_ARGUMENT / HTTP 400)."""
