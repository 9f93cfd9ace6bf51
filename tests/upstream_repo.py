"""Upstream's inflight_batcher_llm repository, rebuilt from the facts files and filled the way
upstream's README fills it (``fill_template.py``: ``string.Template.safe_substitute``, so every
key it is not given stays ``${key}``).

Nothing here is upstream's text: the config.pbtxt files are generated from the recorded facts
(every tensor, parameter and field, placeholders kept), so tests can check trtbuild against a
repository shaped exactly like the one a user makes by following upstream's docs.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from trtbuild.ensembles.upstream import Facts, UpstreamModel, UpstreamTensor


def _q(value: str) -> str:
    return json.dumps(value)


def _tensor(t: UpstreamTensor, *, is_input: bool) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    lines = [f"    name: {_q(t.name)}", f"    data_type: {t.data_type}", f"    dims: [ {dims} ]"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: [ {', '.join(map(str, t.reshape))} ] }}")
    if is_input and t.optional:
        lines.append("    optional: true")
    if is_input and t.allow_ragged_batch:
        lines.append("    allow_ragged_batch: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_text(model: UpstreamModel) -> str:
    """A config.pbtxt for ``model`` with upstream's placeholders in place."""
    f: dict[str, Any] = model.fields
    out = [f"name: {_q(f['name'])}"]
    if f.get("backend"):
        out.append(f"backend: {_q(f['backend'])}")
    if f.get("platform"):
        out.append(f"platform: {_q(f['platform'])}")
    out.append(f"max_batch_size: {f['max_batch_size']}")
    if "model_transaction_policy.decoupled" in f:
        out.append(
            f"model_transaction_policy {{ decoupled: {f['model_transaction_policy.decoupled']} }}"
        )
    batching = {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith("dynamic_batching.")}
    if batching or "dynamic_batching" in f:
        body = []
        if "preferred_batch_size" in batching:
            body.append(
                f"  preferred_batch_size: [ {', '.join(batching['preferred_batch_size'])} ]"
            )
        if "max_queue_delay_microseconds" in batching:
            body.append(
                f"  max_queue_delay_microseconds: {batching['max_queue_delay_microseconds']}"
            )
        if "default_queue_policy.max_queue_size" in batching:
            size = batching["default_queue_policy.max_queue_size"]
            body.append(f"  default_queue_policy {{ max_queue_size: {size} }}")
        out.append("dynamic_batching {\n" + "\n".join(body) + "\n}")
    out.append("input [\n" + ",\n".join(_tensor(t, is_input=True) for t in model.inputs) + "\n]")
    out.append("output [\n" + ",\n".join(_tensor(t, is_input=False) for t in model.outputs) + "\n]")
    if model.instance_group:
        groups = ",\n".join(
            f"  {{ count: {g.count} kind: {g.kind} }}" for g in model.instance_group
        )
        out.append(f"instance_group [\n{groups}\n]")
    for p in model.parameters:
        out.append(f"parameters: {{ key: {_q(p.key)} value: {{ string_value: {_q(p.value)} }} }}")
    if model.ensemble_steps:
        steps = []
        for s in model.ensemble_steps:
            maps = [
                f"      input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in s.input_map.items()
            ]
            maps += [
                f"      output_map {{ key: {_q(k)} value: {_q(v)} }}"
                for k, v in s.output_map.items()
            ]
            steps.append(
                f"    {{\n      model_name: {_q(s.model_name)}\n      model_version: {s.model_version}\n"
                + "\n".join(maps)
                + "\n    }"
            )
        out.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    return "\n".join(out) + "\n"


def fill(text: str, values: dict[str, str]) -> str:
    """What ``fill_template.py`` does with ``key:value`` pairs: substitute them, keep the rest."""
    return string.Template(text).safe_substitute(values)


def write_upstream_repository(
    facts: Facts,
    dest: Path,
    *,
    paths: dict[str, str],
    leave_unfilled: dict[str, set[str]] | None = None,
) -> Path:
    """Upstream's five models in ``dest``, filled with the README's commands.

    ``paths`` replaces the README's machine paths (``<ENGINE_DIR>``, ``<HF_MODEL>``);
    ``leave_unfilled`` drops keys from a model's fill command (a user who forgot one)."""
    commands = {c.model: dict(c.values) for c in facts.readme_fill.commands}
    for name, model in facts.models.items():
        given = {k: paths.get(v, v) for k, v in commands.get(name, {}).items()}
        values = {**facts.readme_fill.defaults, **given}
        for key in (leave_unfilled or {}).get(name, set()):
            values.pop(key, None)
        text = fill(config_text(model), values)
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        (dest / name / "config.pbtxt").write_text(text)
    return dest
