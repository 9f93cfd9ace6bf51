"""Checks on parsed Triton model configs: ensemble wiring and duplicate declarations.

Works on ``ModelConfig`` protos, so it serves both freshly rendered repositories and existing,
hand-written ones (``trtbuild check``). Every rule returns ``Finding`` objects.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from trtbuild.findings import REPOSITORY, Finding, Severity

WIRING_FIX = (
    "map every step input from an ensemble input or an earlier step's output, and every output "
    "to the next step or the ensemble's outputs"
)


def io_names(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {t.name: t for t in config.input}, {t.name: t for t in config.output}


def duplicate_findings(name: str, config: Any) -> list[Finding]:
    """Inputs or outputs declared more than once. Triton keeps both entries and loads the model
    (upstream's own ensemble declares ``kv_cache_alloc_total_blocks`` twice), so a warning."""
    findings = []
    for kind, items in (("input", config.input), ("output", config.output)):
        for tensor, count in Counter(t.name for t in items).items():
            if count > 1:
                findings.append(
                    Finding(
                        name,
                        f"{kind} {tensor!r} is declared {count} times",
                        "keep one declaration",
                        "warning",
                    )
                )
    return findings


def ensemble_findings(name: str, config: Any, models: dict[str, Any]) -> list[Finding]:
    """Wiring problems of ensemble ``config`` against the other ``models`` of the repository."""
    findings: list[Finding] = []

    def add(message: str, severity: Severity = "error") -> None:
        findings.append(Finding(name, message, WIRING_FIX, severity))

    ens_in, ens_out = io_names(config)
    # dtype of every ensemble tensor known so far: the ensemble inputs, then each step's outputs
    available: dict[str, int] = {n: t.data_type for n, t in ens_in.items()}
    consumed: set[str] = set()
    for step in config.ensemble_scheduling.step:
        model = models.get(step.model_name)
        if model is None:
            add(f"step model {step.model_name!r} is not in the repository")
            continue
        m_in, m_out = io_names(model)
        for key, value in step.input_map.items():
            if key not in m_in:
                add(f"{step.model_name} has no input {key!r} (mapped from {value!r})")
                continue
            if value not in available:
                add(
                    f"{step.model_name} input {key!r} reads {value!r}, which no earlier step or "
                    "ensemble input provides"
                )
                continue
            consumed.add(value)
            if available[value] != m_in[key].data_type:
                add(f"{step.model_name} input {key!r} has another data type than {value!r}")
        for required in (n for n, t in m_in.items() if not t.optional):
            if required not in step.input_map:
                add(f"required input {required!r} of {step.model_name} is not mapped")
        for key, value in step.output_map.items():
            if key not in m_out:
                add(f"{step.model_name} has no output {key!r} (mapped to {value!r})")
                continue
            available[value] = m_out[key].data_type
    for out in ens_out:
        if out not in available:
            add(f"ensemble output {out!r} is produced by no step")
    for internal in (v for v in available if v not in ens_in and v not in ens_out):
        if internal not in consumed:
            add(f"ensemble tensor {internal!r} is produced but never used", "warning")
    return findings


def repository_findings(configs: dict[str, Any], expected: tuple[str, ...]) -> list[Finding]:
    """Missing models, misnamed configs, duplicate declarations and the ensemble's wiring."""
    findings = [
        Finding(REPOSITORY, f"model {m!r} is missing", "re-render with 'trtbuild repo'")
        for m in expected
        if m not in configs
    ]
    for name, config in configs.items():
        if config.name != name:
            findings.append(
                Finding(name, f"{name}/config.pbtxt names the model {config.name!r}", "rename one")
            )
        findings += duplicate_findings(name, config)
    if "ensemble" in configs:
        findings += ensemble_findings("ensemble", configs["ensemble"], configs)
    return findings
