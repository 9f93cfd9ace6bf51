"""Upstream facts: what TensorRT-LLM's own Triton backend and models declare, read and send.

``ensembles/upstream/trtllm-<line>.json`` hold, per TensorRT-LLM line trtbuild supports, facts read
from upstream's source (every one with its path, commit and line): each parameter the C++
``tensorrtllm`` backend reads and whether a missing one fails the load; the inputs, outputs and
parameters of upstream's five ``inflight_batcher_llm`` models; which ``${...}`` placeholders left
unfilled by ``fill_template.py`` are harmless and which are fatal; the fill commands upstream's
docs give; the shapes upstream's models return and what upstream's clients index into.

Rendering and ``trtbuild check`` are driven by these files, and tests check rendered repositories
against them. This module is the one reader of those files.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Unfilled = Literal["off", "default", "fatal", "broken", "unknown"]


class _Fact(BaseModel):
    # upstream-derived data: unknown keys are tolerated (a fact may carry a note or two)
    model_config = ConfigDict(extra="allow", frozen=True)


class BackendParameter(_Fact):
    name: str
    type: str
    required: bool
    missing: str = ""
    empty: str = ""
    placeholder: str = ""
    default: str | None = None
    source: str
    guard_source: str | None = None


class UpstreamTensor(_Fact):
    name: str
    data_type: str
    dims: list[int | str]
    reshape: list[int] | None = None
    optional: bool = False
    allow_ragged_batch: bool = False


class Parameter(_Fact):
    key: str
    value: str


class Step(_Fact):
    model_name: str
    model_version: int = -1
    input_map: dict[str, str] = Field(default_factory=dict)
    output_map: dict[str, str] = Field(default_factory=dict)


class InstanceGroup(_Fact):
    count: str | int = 1
    kind: str = "KIND_CPU"


class UpstreamModel(_Fact):
    source: str
    fields: dict[str, Any] = Field(default_factory=dict)
    instance_group: list[InstanceGroup] | None = None
    inputs: list[UpstreamTensor] = Field(default_factory=list)
    outputs: list[UpstreamTensor] = Field(default_factory=list)
    parameters: list[Parameter] = Field(default_factory=list)
    ensemble_steps: list[Step] | None = None

    def input(self, name: str) -> UpstreamTensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> UpstreamTensor | None:
        return next((t for t in self.outputs if t.name == name), None)


class Placeholder(_Fact):
    name: str
    model: str
    where: str
    in_string: bool
    unfilled: Unfilled
    effect: str
    source: str


class FillCommand(_Fact):
    model: str
    values: dict[str, str]


class ReadmeFill(_Fact):
    source: str
    commands: list[FillCommand]
    # substitutions fill_template.py makes on every file, given or not (tools/fill_template.py)
    defaults: dict[str, str] = Field(default_factory=dict)
    defaults_source: str | None = None


class Facts(_Fact):
    schema_version: int
    trtllm_version: str
    extracted: str
    repos: dict[str, Any]
    backend_parameters: list[BackendParameter]
    backend_config_fields: list[dict[str, Any]] = Field(default_factory=list)
    models: dict[str, UpstreamModel]
    placeholders: list[Placeholder]
    readme_fill: ReadmeFill
    responses: dict[str, Any] = Field(default_factory=dict)
    preprocessing_emits: dict[str, Any] = Field(default_factory=dict)
    batching: dict[str, Any] = Field(default_factory=dict)
    clients: list[dict[str, Any]] = Field(default_factory=list)

    def required_parameters(self) -> list[BackendParameter]:
        return [p for p in self.backend_parameters if p.required]

    def placeholder(self, model: str, name: str) -> Placeholder | None:
        """What leaving ``${name}`` unfilled in ``model`` does (None: upstream has no such one)."""
        return next((p for p in self.placeholders if p.model == model and p.name == name), None)


LINES = ("0.19", "1.2")  # the TensorRT-LLM lines with facts; 0.20 and newer use 1.2's


def version_tuple(version: str) -> tuple[int, int]:
    """``"1.2.1"`` -> ``(1, 2)``; ``"0.19.0.dev2025"`` -> ``(0, 19)``."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def line_for(trtllm_version: str) -> str:
    """The facts line that describes ``trtllm_version``: ``0.19`` before 0.20, else ``1.2``."""
    return "0.19" if version_tuple(trtllm_version) < (0, 20) else "1.2"


def facts_path(line: str) -> Path:
    root = importlib.resources.files("trtbuild.ensembles") / "upstream"
    return Path(str(root / f"trtllm-{line}.json"))


@functools.cache
def facts(trtllm_version: str = "1.2") -> Facts:
    """The upstream facts for the TensorRT-LLM line of ``trtllm_version``."""
    line = line_for(trtllm_version)
    return Facts.model_validate(json.loads(facts_path(line).read_text(encoding="utf-8")))


__all__ = [
    "LINES",
    "BackendParameter",
    "Facts",
    "Placeholder",
    "UpstreamModel",
    "UpstreamTensor",
    "facts",
    "facts_path",
    "line_for",
    "version_tuple",
]
