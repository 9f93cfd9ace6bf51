"""The LLM-API flavor: TensorRT-LLM's ``llmapi`` Triton model (PyTorch backend, no engine build)
behind the same client-facing names as the inflight-batching ensemble.

Models (``model_repository_templates/llmapi/``):

- ``tensorrt_llm``: TensorRT-LLM's own llmapi model. trtbuild does not ship its code: ``1/model.py``
  is a shim that loads the serving container's file (the ``llmapi_model_py`` parameter,
  ``/app/all_models/llmapi/tensorrt_llm/1/model.py`` in the NGC ``-trtllm-python-py3`` 1.x images)
  and ``1/model.yaml`` holds the ``LLM()`` arguments (TP/PP, KV cache, limits) and its
  ``triton_config``. Its names are TensorRT-LLM's (``text_input``, ``streaming``,
  ``sampling_param_*``), its tensor contract the newest ``triton_backend/all_models/llmapi``.
- ``preprocessing``: checks the prompt and ``max_tokens`` against the limits, asks the model not to
  echo the prompt (the llmapi model's own default, ``sampling_param_exclude_input_from_output``
  false, echoes it), and adds the model's other end tokens as stop strings.
- ``ensemble``: preprocessing -> tensorrt_llm, for clients that send ``text_input``/``max_tokens``/
  ``stream`` (genai-perf, ``trtbuild infer``); decoupled when the model streams.
- ``tensorrt_llm_bls``: whole responses for plain HTTP/gRPC ``/infer`` clients; calls the ensemble.

Triton's ``max_batch_size`` is 0 everywhere: the llmapi model takes one prompt per request and
``LLM()`` batches in flight (up to ``max_batch_size`` in ``model.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtbuild.ensembles._rules import common_findings
from trtbuild.ensembles._shipped import shipped
from trtbuild.ensembles._tensors import Tensor, opt, out, req
from trtbuild.ensembles._wiring import repository_findings
from trtbuild.ensembles.inflight_batcher_llm import Step
from trtbuild.ensembles.upstream import version_tuple
from trtbuild.findings import REPOSITORY, Finding
from trtbuild.specs import RepoSpec

KIND = "llmapi"
MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls")

# -- tensorrt_llm: TensorRT-LLM's llmapi model (triton_backend/all_models/llmapi, newest) ----------
CORE_INPUTS = [
    Tensor("text_input", "STRING", (-1,), optional=False),
    opt("image_url", "STRING", -1),
    opt("streaming", "BOOL"),
    opt("sampling_param_best_of", "INT32"),
    opt("sampling_param_temperature", "FP32"),
    opt("sampling_param_top_k", "INT32"),
    opt("sampling_param_top_p", "FP32"),
    opt("sampling_param_frequency_penalty", "FP32"),
    opt("sampling_param_presence_penalty", "FP32"),
    opt("sampling_param_max_tokens", "INT32"),
    opt("sampling_param_stop", "STRING", -1),
    opt("sampling_param_seed", "UINT64"),
    opt("sampling_param_exclude_input_from_output", "BOOL"),
    opt("sampling_param_return_perf_metrics", "BOOL"),
    opt("return_finish_reason", "BOOL"),
    opt("return_stop_reason", "BOOL"),
    opt("return_cumulative_logprob", "BOOL"),
    opt("stop", "BOOL"),
    opt("lora_id", "UINT64"),
    opt("lora_name", "STRING"),
    opt("lora_path", "STRING"),
    opt("lora_ckpt_source", "STRING"),
]
CORE_OUTPUTS = [
    out("text_output", "STRING", -1),
    out("finish_reason", "STRING", -1),
    out("stop_reason", "STRING", -1),
    out("cumulative_logprob", "FP32", -1),
    out("kv_cache_reused_block", "INT32", -1),
    out("kv_cache_missed_block", "INT32", -1),
    out("kv_cache_alloc_new_blocks", "INT32", -1),
    out("kv_cache_alloc_total_blocks", "INT32", -1),
    out("kv_cache_hit_rate", "FP32", -1),
    out("arrival_time_ns", "INT64", 1),
    out("first_scheduled_time_ns", "INT64", 1),
    out("first_token_time_ns", "INT64", 1),
    out("last_token_time_ns", "INT64", 1),
    out("acceptance_rate", "FP32", 1),
    out("total_accepted_draft_tokens", "INT32", 1),
    out("total_draft_tokens", "INT32", 1),
]

# -- what clients send (ensemble, BLS): the inflight-batching names, one prompt per request --------
CLIENT_INPUTS = [
    req("text_input", "STRING"),
    req("max_tokens", "INT32"),
    opt("stream", "BOOL"),
    opt("exclude_input_in_output", "BOOL"),
    opt("stop_words", "STRING", -1),
    opt("temperature", "FP32"),
    opt("top_k", "INT32"),
    opt("top_p", "FP32"),
    opt("frequency_penalty", "FP32"),
    opt("presence_penalty", "FP32"),
    opt("seed", "UINT64"),
    opt("return_perf_metrics", "BOOL"),
    opt("return_finish_reason", "BOOL"),
    opt("return_stop_reason", "BOOL"),
    opt("return_cumulative_logprob", "BOOL"),
]
# client inputs the ensemble hands to the core model unchanged (only renamed): core <- client
DIRECT = {
    "sampling_param_temperature": "temperature",
    "sampling_param_top_k": "top_k",
    "sampling_param_top_p": "top_p",
    "sampling_param_frequency_penalty": "frequency_penalty",
    "sampling_param_presence_penalty": "presence_penalty",
    "sampling_param_seed": "seed",
    "sampling_param_return_perf_metrics": "return_perf_metrics",
    "return_finish_reason": "return_finish_reason",
    "return_stop_reason": "return_stop_reason",
    "return_cumulative_logprob": "return_cumulative_logprob",
}

# -- preprocessing: the inputs that need checks or defaults ---------------------------------------
PRE_INPUTS = [t for t in CLIENT_INPUTS if t.name not in DIRECT.values()]
PRE_OUTPUTS = [
    out("prompt", "STRING", -1),
    out("sampling_param_max_tokens", "INT32", 1),
    out("streaming", "BOOL", 1),
    out("sampling_param_exclude_input_from_output", "BOOL", 1),
    out("sampling_param_stop", "STRING", -1),
]
PRE_TO_CORE = {"prompt": "text_input"}  # the other outputs already carry the core's names


def ensemble_steps() -> list[Step]:
    pre = Step(
        "preprocessing",
        {t.name: t.name for t in PRE_INPUTS},
        {t.name: f"_{t.name}" for t in PRE_OUTPUTS},
    )
    core_in = {PRE_TO_CORE.get(t.name, t.name): f"_{t.name}" for t in PRE_OUTPUTS}
    core_in.update(DIRECT)
    core = Step("tensorrt_llm", core_in, {t.name: t.name for t in CORE_OUTPUTS})
    return [pre, core]


# -- rendering hooks (used by trtbuild.render) -------------------------------------------------
def models(spec: RepoSpec) -> dict[str, tuple[str, dict[str, Path | None]]]:
    # the error answers shared with the portable runtime's request checks
    requests = shipped("requests")
    return {
        # the same data-driven ensemble template as the inflight-batching kind
        "ensemble": ("inflight_batcher_llm/ensemble", {}),
        "preprocessing": (f"{KIND}/preprocessing", {**shipped("detok"), **requests}),
        "tensorrt_llm": (f"{KIND}/tensorrt_llm", {}),
        "tensorrt_llm_bls": (f"{KIND}/tensorrt_llm_bls", requests),
    }


def llm_args(spec: RepoSpec) -> dict[str, Any]:
    """``model.yaml``: TensorRT-LLM ``LLM()`` keyword arguments plus the llmapi model's
    ``triton_config`` (kept equal to config.pbtxt, which is what Triton uses)."""
    engine_dir = str(Path(spec.engine_dir).resolve())
    tokenizer_dir = str(Path(spec.tokenizer_dir).resolve())
    args: dict[str, Any] = {"model": engine_dir, "backend": "pytorch"}
    if tokenizer_dir != engine_dir:
        args["tokenizer"] = tokenizer_dir
    args.update(
        tensor_parallel_size=spec.tp,
        pipeline_parallel_size=spec.pp,
        dtype=spec.dtype,
        max_batch_size=spec.limits.max_batch_size,
        max_num_tokens=spec.limits.max_num_tokens,
        max_seq_len=spec.limits.max_seq_len,
        max_beam_width=spec.max_beam_width,
        enable_chunked_prefill=spec.enable_chunked_context,
        kv_cache_config={
            "dtype": spec.kv_cache_dtype,
            "free_gpu_memory_fraction": spec.kv_cache_free_gpu_mem_fraction,
            "enable_block_reuse": spec.enable_kv_cache_reuse,
            **(
                {"max_tokens": spec.max_tokens_in_paged_kv_cache}
                if spec.max_tokens_in_paged_kv_cache is not None
                else {}
            ),
        },
        triton_config={"max_batch_size": 0, "decoupled": spec.streaming},
    )
    return args


def context(spec: RepoSpec, model: str) -> dict[str, Any]:
    ctx: dict[str, Any] = spec.model_dump(mode="python")
    ctx.update(
        engine_dir=str(Path(spec.engine_dir).resolve()),
        tokenizer_dir=str(Path(spec.tokenizer_dir).resolve()),
        triton_max_batch_size=0,
        model=model,
        client_inputs=CLIENT_INPUTS,
        ensemble_outputs=CORE_OUTPUTS,
        steps=ensemble_steps(),
        pre_inputs=PRE_INPUTS,
        pre_outputs=PRE_OUTPUTS,
        core_inputs=CORE_INPUTS,
        core_outputs=CORE_OUTPUTS,
        core_instance_count=max(1, len(spec.gpu_device_ids)),
        gpu_device_ids_param=";".join(",".join(map(str, g)) for g in spec.gpu_device_ids),
        llm_args=llm_args(spec),
    )
    return ctx


def spec_findings(spec: RepoSpec) -> list[Finding]:
    findings = common_findings(spec)
    if version_tuple(spec.trtllm_version) < (1, 0):
        findings.append(
            Finding(
                REPOSITORY,
                "the llmapi flavor needs TensorRT-LLM >= 1.0 (Triton 25.09 or newer), not "
                f"{spec.trtllm_version}",
                "use --runtime tensorrtllm for older containers",
            )
        )
    if spec.bls_decoupled:
        findings.append(
            Finding(
                REPOSITORY,
                "the llmapi flavor's tensorrt_llm_bls answers whole responses only",
                "stream through the ensemble; drop --bls-decoupled",
            )
        )
    if spec.kv_cache_dtype == "int8":
        findings.append(
            Finding(
                REPOSITORY, "TensorRT-LLM's PyTorch backend has no INT8 KV cache", "use auto or fp8"
            )
        )
    return findings


def check(configs: dict[str, Any]) -> list[Finding]:
    return repository_findings(configs, MODELS)
