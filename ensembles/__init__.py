"""Ensemble kinds: which models a repository holds, how they are wired, and their checks.

Each kind is a module that satisfies ``EnsembleKind``; ``KINDS`` registers them and ``kind_for``
picks the one a spec renders with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from trtbuild.findings import Finding
from trtbuild.specs import RepoSpec


class EnsembleKind(Protocol):
    """What the renderer and ``trtbuild check`` need from an ensemble kind."""

    KIND: str  # the template folder under model_repository_templates/
    MODELS: tuple[str, ...]  # the models a repository of this kind holds

    def models(self, spec: RepoSpec) -> dict[str, tuple[str, dict[str, Path | None]]]:
        """Model -> (template folder, extra files copied in; ``None`` leaves a template file out)."""
        ...

    def context(self, spec: RepoSpec, model: str) -> dict[str, Any]:
        """The template variables of one model."""
        ...

    def spec_findings(self, spec: RepoSpec) -> list[Finding]:
        """The rules a spec must pass before anything is rendered."""
        ...

    def check(self, configs: dict[str, Any]) -> list[Finding]:
        """The rules the rendered (parsed) configs must pass before they are written."""
        ...


# the kinds import this package's other modules, not this one: importing them here is not a cycle
from trtbuild.ensembles import inflight_batcher_llm, llmapi  # noqa: E402

KINDS: dict[str, EnsembleKind] = {
    inflight_batcher_llm.KIND: inflight_batcher_llm,
    llmapi.KIND: llmapi,
}


def kind_for(spec: RepoSpec) -> EnsembleKind:
    """``llmapi``: TensorRT-LLM's llmapi model behind a small front; otherwise the inflight-batching
    ensemble, whose core is TensorRT-LLM's C++ backend or trtbuild's portable runtime."""
    return KINDS[llmapi.KIND if spec.runtime == "llmapi" else inflight_batcher_llm.KIND]


__all__ = ["KINDS", "EnsembleKind", "kind_for"]
