"""The inflight-batching LLM ensemble: preprocessing -> tensorrt_llm -> postprocessing (+ BLS).

The tensor contract is upstream's, read from the facts files (``ensembles/upstream``, one per
TensorRT-LLM line): every tensor of upstream's ``ensemble``, ``tensorrt_llm`` and
``postprocessing`` models, the preprocessing tensors upstream's ensemble wires, and the ensemble's
steps, so genai-perf, perf_analyzer and TensorRT-LLM's own clients work unchanged. The
``tensorrt_llm`` slot is served either by TensorRT-LLM's C++ backend or by trtbuild's portable
runtime, which speaks the same contract plus one output, ``output_text`` (the incrementally
detokenized text that the portable ensemble hands the client as ``text_output``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trtbuild.ensembles._rules import common_findings
from trtbuild.ensembles._shipped import shipped
from trtbuild.ensembles._tensors import Tensor, out
from trtbuild.ensembles._wiring import repository_findings
from trtbuild.ensembles.upstream import UpstreamTensor, facts, line_for
from trtbuild.findings import REPOSITORY, Finding
from trtbuild.specs import RepoSpec

KIND = "inflight_batcher_llm"
MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
NEWEST = "1.2"  # the TensorRT-LLM line the portable runtime speaks
# What trtbuild fills upstream's data-type placeholders with: the values of upstream's README.
DTYPE_FILL = {
    "${logits_datatype}": "TYPE_FP32",
    "${encoder_input_features_data_type}": "TYPE_FP16",
    "${prompt_embedding_table_data_type}": "TYPE_FP16",
}
# Only the portable runtime produces this: the incrementally detokenized text of each response.
PORTABLE_TEXT_OUTPUT = out("output_text", "STRING", -1)

__all__ = ["KIND", "MODELS", "Step"]

# Required inputs trtbuild declares optional (its one change to upstream's tensors): Triton 2.51
# checks a request's required inputs by count only, and an ensemble step whose input is missing
# never runs, so a decoupled ensemble answered a request without text_input or max_tokens (with
# `stream` making up the count) with an empty success. Declared optional, preprocessing always
# runs and refuses such a request by name, over every protocol.
CHECKED_BY_NAME = {
    "ensemble": frozenset({"text_input", "max_tokens"}),
    "preprocessing": frozenset({"QUERY", "REQUEST_OUTPUT_LEN"}),
}


def _tensor(t: UpstreamTensor, *, is_input: bool) -> Tensor:
    dtype = DTYPE_FILL.get(t.data_type, t.data_type)
    dims = tuple(int(d) for d in t.dims)
    return Tensor(
        t.name,
        dtype.removeprefix("TYPE_"),
        dims,
        optional=t.optional if is_input else False,
        scalar=t.reshape == [],
        ragged=t.allow_ragged_batch if is_input else False,
    )


def tensors(line: str, model: str, direction: str, only: set[str] | None = None) -> list[Tensor]:
    """Upstream ``model``'s inputs or outputs (``direction``), each once (upstream's ensemble
    declares ``kv_cache_alloc_total_blocks`` twice), optionally only the names in ``only``."""
    m = facts(line).models[model]
    seen: set[str] = set()
    found = []
    for t in m.inputs if direction == "input" else m.outputs:
        if t.name in seen or (only is not None and t.name not in only):
            continue
        seen.add(t.name)
        tensor = _tensor(t, is_input=direction == "input")
        if direction == "input" and t.name in CHECKED_BY_NAME.get(model, ()):
            tensor = replace(tensor, optional=True)
        found.append(tensor)
    return found


# -- ensemble steps ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    model: str
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor


def ensemble_steps(line: str, *, portable: bool) -> list[Step]:
    """Upstream's ensemble steps. The portable runtime sends text itself: its ensemble takes
    ``output_text`` from tensorrt_llm as ``text_output`` and has no postprocessing step."""
    steps = [
        Step(s.model_name, dict(s.input_map), dict(s.output_map))
        for s in facts(line).models["ensemble"].ensemble_steps or []
    ]
    if not portable:
        return steps
    # Each Python-backend hop costs about 0.5 ms of CPU per streamed token (tritonserver plus the
    # stub: measured on 2 cores with `make bench`), more than the runtime itself; a postprocessing
    # step would only pass the runtime's text on.
    pre, core = (s for s in steps if s.model in ("preprocessing", "tensorrt_llm"))
    post = next(s for s in steps if s.model == "postprocessing")
    internal = set(post.inputs.values())  # the raw tokens postprocessing decodes
    core_out = {k: v for k, v in core.outputs.items() if v not in internal}
    core_out["output_text"] = next(iter(post.outputs.values()))
    return [pre, Step(core.model, core.inputs, core_out)]


def step(line: str, model: str, *, portable: bool = False) -> Step:
    return next(s for s in ensemble_steps(line, portable=portable) if s.model == model)


def core_inputs(line: str) -> list[Tensor]:
    return tensors(line, "tensorrt_llm", "input")


def core_outputs(line: str, *, portable: bool = False) -> list[Tensor]:
    found = tensors(line, "tensorrt_llm", "output")
    return [*found, PORTABLE_TEXT_OUTPUT] if portable else found


def client_inputs(line: str) -> list[Tensor]:
    return tensors(line, "ensemble", "input")


def ensemble_outputs(line: str) -> list[Tensor]:
    return tensors(line, "ensemble", "output")


def preprocessing_tensors(line: str) -> tuple[list[Tensor], list[Tensor]]:
    """The preprocessing inputs and outputs upstream's ensemble wires (its multimodal ones are not:
    trtbuild's preprocessing is text only)."""
    pre = step(line, "preprocessing")
    return (
        tensors(line, "preprocessing", "input", set(pre.inputs)),
        tensors(line, "preprocessing", "output", set(pre.outputs)),
    )


def bls_tensors(line: str) -> tuple[list[Tensor], list[Tensor]]:
    """The BLS takes what the ensemble takes and returns what it returns, each tensor declared as
    upstream's BLS declares it (its scalars are reshaped to [], unlike the ensemble's)."""
    return (
        tensors(line, "tensorrt_llm_bls", "input", {t.name for t in client_inputs(line)}),
        tensors(line, "tensorrt_llm_bls", "output", {t.name for t in ensemble_outputs(line)}),
    )


def postprocessing_tensors(line: str) -> tuple[list[Tensor], list[Tensor]]:
    return tensors(line, "postprocessing", "input"), tensors(line, "postprocessing", "output")


def steps_json(steps: list[Step]) -> str:
    """The ensemble's wiring as the BLS reads it (its ``ensemble_steps`` parameter)."""
    return json.dumps(
        [{"model": s.model, "inputs": s.inputs, "outputs": s.outputs} for s in steps],
        separators=(",", ":"),
    )


# -- rendering hooks (used by trtbuild.render) --------------------------------------------------
def models(spec: RepoSpec) -> dict[str, tuple[str, dict[str, Path | None]]]:
    """Model name -> (template folder, extra files copied into the model dir; ``None`` leaves a
    template file out)."""
    detok = shipped("detok")
    # request validation and the error answers, shared by the portable runtime, every flavor's
    # preprocessing and the BLS
    requests = shipped("requests")
    checked = {**detok, **requests}
    core_extra: dict[str, Path | None] = (
        {**checked, **shipped("engine", "parallel", "fused")}
        if spec.runtime == "torch"
        else {"1/model.py": None}  # TensorRT-LLM's C++ backend: no Python in the core model
    )
    return {
        "ensemble": (f"{KIND}/ensemble", {}),
        "preprocessing": (f"{KIND}/preprocessing", checked),
        "tensorrt_llm": (f"{KIND}/tensorrt_llm", core_extra),
        "postprocessing": (f"{KIND}/postprocessing", detok),
        "tensorrt_llm_bls": (f"{KIND}/tensorrt_llm_bls", requests),
    }


def line(spec: RepoSpec) -> str:
    """The portable runtime speaks the newest line; TensorRT-LLM's C++ backend its version's."""
    return line_for(spec.trtllm_version) if spec.runtime == "tensorrtllm" else NEWEST


def decoding_mode(spec: RepoSpec) -> str:
    if spec.decoding_mode != "auto":
        return spec.decoding_mode
    return "beam_search" if spec.max_beam_width > 1 else "top_k_top_p"


EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"


def core_parameters(spec: RepoSpec) -> list[tuple[str, str]]:
    """The ``tensorrt_llm`` parameters for TensorRT-LLM's C++ backend, in order: trtbuild's values,
    then every parameter upstream's backend reads with no fallback that trtbuild has no value for,
    empty (for those, upstream's backend reads an empty value as off: the facts files say so)."""
    params: list[tuple[str, object]] = [
        ("gpt_model_type", spec.gpt_model_type),
        ("gpt_model_path", Path(spec.engine_dir).resolve()),
        ("max_beam_width", spec.max_beam_width),
        ("FORCE_CPU_ONLY_INPUT_TENSORS", "no"),
        ("batch_scheduler_policy", spec.batch_scheduler_policy),
        ("kv_cache_free_gpu_mem_fraction", spec.kv_cache_free_gpu_mem_fraction),
    ]
    if spec.max_tokens_in_paged_kv_cache is not None:
        params.append(("max_tokens_in_paged_kv_cache", spec.max_tokens_in_paged_kv_cache))
    params += [
        ("kv_cache_onboard_blocks", True),
        ("enable_kv_cache_reuse", spec.enable_kv_cache_reuse),
        ("enable_chunked_context", spec.enable_chunked_context),
        ("exclude_input_in_output", spec.exclude_input_in_output),
        ("decoding_mode", decoding_mode(spec)),
        ("normalize_log_probs", True),
        ("cancellation_check_period_ms", 100),
        ("stats_check_period_ms", 100),
        ("iter_stats_max_iterations", 1000),
        ("request_stats_max_iterations", 0),
        ("gpu_weights_percent", 1.0),
        ("enable_context_fmha_fp32_acc", False),
        ("multi_block_mode", True),
        ("cuda_graph_mode", False),
    ]
    if spec.gpu_device_ids:
        params.append(
            ("gpu_device_ids", ";".join(",".join(map(str, g)) for g in spec.gpu_device_ids))
        )
    params += [
        ("executor_worker_path", EXECUTOR_WORKER),
        ("tokenizer_dir", Path(spec.tokenizer_dir).resolve()),
    ]
    given = {key for key, _ in params}
    upstream = facts(line(spec))
    for required in upstream.required_parameters():
        if required.name in given:
            continue
        unset = upstream.placeholder("tensorrt_llm", required.name)
        if unset is None or unset.unfilled != "off":
            raise ValueError(
                f"TensorRT-LLM {spec.trtllm_version}'s backend requires parameter "
                f"{required.name!r} and trtbuild has no value for it"
            )
        params.append((required.name, ""))
    return [(key, _param_text(value)) for key, value in params]


def _param_text(value: object) -> str:
    """Parameters are strings in Triton configs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def context(spec: RepoSpec, model: str) -> dict[str, Any]:
    portable = spec.runtime == "torch"
    n = line(spec)
    steps = ensemble_steps(n, portable=portable)
    pre_inputs, pre_outputs = preprocessing_tensors(n)
    post_inputs, post_outputs = postprocessing_tensors(n)
    bls_inputs, bls_outputs = bls_tensors(n)
    ctx: dict[str, Any] = spec.model_dump(mode="python")
    ctx.update(
        engine_dir=str(Path(spec.engine_dir).resolve()),
        tokenizer_dir=str(Path(spec.tokenizer_dir).resolve()),
        triton_max_batch_size=spec.limits.max_batch_size,
        model=model,
        pre_inputs=pre_inputs,
        pre_outputs=pre_outputs,
        post_inputs=post_inputs,
        post_outputs=post_outputs,
        core_inputs=core_inputs(n),
        core_outputs=core_outputs(n, portable=portable),
        client_inputs=client_inputs(n),
        ensemble_outputs=ensemble_outputs(n),
        bls_inputs=bls_inputs,
        bls_outputs=bls_outputs,
        steps=steps,
        ensemble_steps_json=steps_json(steps),
        # TensorRT-LLM's C++ backend (runtime tensorrtllm)
        core_parameters=core_parameters(spec) if spec.runtime == "tensorrtllm" else [],
        core_instance_count=len(spec.gpu_device_ids) or spec.instances,
        core_instance_groups=core_instance_groups(spec),
    )
    return ctx


def core_instance_groups(spec: RepoSpec) -> list[dict[str, Any]]:
    """The ``tensorrt_llm`` instance groups: the portable runtime pinned to GPUs gets one
    ``KIND_GPU`` group per GPU (Triton gives each instance its device id), on CPU one group of
    ``instances``; TensorRT-LLM's C++ backend places its instances itself (``gpu_device_ids``)
    and is a ``KIND_CPU`` group, as upstream renders it."""
    if spec.runtime == "torch" and spec.gpu_device_ids:
        return [{"count": 1, "kind": "KIND_GPU", "gpus": list(g)} for g in spec.gpu_device_ids]
    count = len(spec.gpu_device_ids) or spec.instances
    return [{"count": count, "kind": "KIND_CPU", "gpus": []}]


def spec_findings(spec: RepoSpec) -> list[Finding]:
    """Consistency rules on the spec (engine facts included), before anything is rendered."""

    findings = common_findings(spec)
    if spec.decoding_mode == "beam_search" and spec.max_beam_width == 1:
        findings.append(
            Finding(
                REPOSITORY,
                "decoding_mode beam_search needs max_beam_width > 1",
                "use decoding_mode auto",
            )
        )
    return findings


def check(configs: dict[str, Any]) -> list[Finding]:
    return repository_findings(configs, MODELS)
