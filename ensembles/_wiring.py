"""Checks on parsed Triton model configs: ensemble wiring and duplicate declarations.

Works on ``ModelConfig`` protos, so it serves both freshly rendered repositories and existing,
hand-written ones (``trtbuild check``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def io_names(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {t.name: t for t in config.input}, {t.name: t for t in config.output}


def duplicate_findings(name: str, config: Any) -> list[str]:
    findings = []
    for kind, items in (("input", config.input), ("output", config.output)):
        for tensor, count in Counter(t.name for t in items).items():
            if count > 1:
                findings.append(f"{name}: {kind} {tensor!r} is declared {count} times; keep one")
    return findings


def ensemble_findings(name: str, config: Any, models: dict[str, Any]) -> list[str]:
    """Wiring problems of ensemble ``config`` against the other ``models`` of the repository."""
    findings: list[str] = []
    ens_in, ens_out = io_names(config)
    # dtype of every ensemble tensor known so far: the ensemble inputs, then each step's outputs
    available: dict[str, int] = {n: t.data_type for n, t in ens_in.items()}
    consumed: set[str] = set()
    for step in config.ensemble_scheduling.step:
        model = models.get(step.model_name)
        if model is None:
            findings.append(f"{name}: step model {step.model_name!r} is not in the repository")
            continue
        m_in, m_out = io_names(model)
        for key, value in step.input_map.items():
            if key not in m_in:
                findings.append(
                    f"{name}: {step.model_name} has no input {key!r} (mapped from {value!r})"
                )
                continue
            if value not in available:
                findings.append(
                    f"{name}: {step.model_name} input {key!r} reads {value!r}, which no earlier step "
                    "or ensemble input provides"
                )
                continue
            consumed.add(value)
            if available[value] != m_in[key].data_type:
                findings.append(
                    f"{name}: {step.model_name} input {key!r} has another data type than {value!r}"
                )
        for required in (n for n, t in m_in.items() if not t.optional):
            if required not in step.input_map:
                findings.append(
                    f"{name}: required input {required!r} of {step.model_name} is not mapped"
                )
        for key, value in step.output_map.items():
            if key not in m_out:
                findings.append(
                    f"{name}: {step.model_name} has no output {key!r} (mapped to {value!r})"
                )
                continue
            available[value] = m_out[key].data_type
    for out in ens_out:
        if out not in available:
            findings.append(f"{name}: ensemble output {out!r} is produced by no step")
    for internal in (v for v in available if v not in ens_in and v not in ens_out):
        if internal not in consumed:
            findings.append(f"{name}: ensemble tensor {internal!r} is produced but never used")
    return findings


def repository_findings(configs: dict[str, Any], expected: tuple[str, ...]) -> list[str]:
    """Missing models, misnamed configs, duplicate declarations and the ensemble's wiring."""
    findings = [f"model {m!r} is missing" for m in expected if m not in configs]
    for name, config in configs.items():
        if config.name != name:
            findings.append(f"{name}/config.pbtxt names the model {config.name!r}; rename one")
        findings += duplicate_findings(name, config)
    if "ensemble" in configs:
        findings += ensemble_findings("ensemble", configs["ensemble"], configs)
    return findings
