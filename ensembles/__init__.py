"""Ensemble kinds: which models a repository holds, how they are wired, and their checks."""

from __future__ import annotations

from types import ModuleType

from trtbuild.specs import RepoSpec


def kind_for(spec: RepoSpec) -> ModuleType:
    from trtbuild.ensembles import inflight_batcher_llm

    return inflight_batcher_llm
