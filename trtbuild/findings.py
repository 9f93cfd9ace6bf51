"""What a rule reports: a structured finding with a severity and a fix.

Rules (render-time spec checks, wiring checks, ``trtbuild check``) return ``Finding`` objects; only
the callers turn them into text. ``error``: the repository will not load or will serve wrongly;
``warning``: it loads and serves, but something is likely a mistake (``trtbuild check --strict``
fails on warnings too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
REPOSITORY = "repository"  # the model name of findings about the repository as a whole


@dataclass(frozen=True)
class Finding:
    model: str
    message: str
    fix: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.model}: {self.message} (fix: {self.fix})"

    @property
    def line(self) -> str:
        """``model: message; fix`` without the severity, for one-line error messages."""
        return f"{self.model}: {self.message}; {self.fix}"


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "warning"]


def summary(findings: list[Finding]) -> str:
    n_err, n_warn = len(errors(findings)), len(warnings(findings))
    return f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"


__all__ = ["REPOSITORY", "Finding", "Severity", "errors", "summary", "warnings"]
