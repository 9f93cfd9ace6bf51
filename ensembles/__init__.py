"""Ensemble kinds: which models a repository holds, how they are wired, and their checks."""

from __future__ import annotations

from types import ModuleType

from trtbuild.specs import RepoSpec


def kind_for(spec: RepoSpec) -> ModuleType:
    """``llmapi``: TensorRT-LLM's llmapi model behind a small front; otherwise the inflight-batching
    ensemble, whose core is TensorRT-LLM's C++ backend or trtbuild's portable runtime."""
    if spec.runtime == "llmapi":
        from trtbuild.ensembles import llmapi

        return llmapi
    from trtbuild.ensembles import inflight_batcher_llm

    return inflight_batcher_llm
