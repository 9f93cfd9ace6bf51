"""The inflight-batching LLM ensemble: preprocessing -> tensorrt_llm -> postprocessing (+ BLS).

This module is the tensor contract, written once as data. The templates under
``model_repository_templates/inflight_batcher_llm/`` render it; ``check_wiring`` verifies a
rendered repository against it; clients read the user-facing names from it.

Names, dtypes and shapes are TensorRT-LLM's (``triton_backend/all_models/inflight_batcher_llm``
in NVIDIA/TensorRT-LLM, 1.x; ``seed``/``min_tokens`` were ``random_seed``/``min_length`` up to 0.19),
so genai-perf, perf_analyzer and existing TensorRT-LLM clients work unchanged. The ``tensorrt_llm``
slot is served either by TensorRT-LLM's C++ backend or by trtbuild's portable runtime, which speaks
the same contract (plus one optional output, ``output_text``, that postprocessing passes through).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild.ensembles._tensors import Tensor, opt, out, req, scalars
from trtbuild.specs import RepoSpec

KIND = "inflight_batcher_llm"
MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
LOGITS = "FP32"


@dataclass(frozen=True)
class NameSet:
    """Client/core names that changed across TensorRT-LLM versions."""

    seed: str = "seed"
    min_tokens: str = "min_tokens"
    # return_num_input_tokens/return_num_output_tokens in, num_input_tokens/num_output_tokens out:
    # in the newer templates, not in tensorrtllm_backend v0.19.0's
    num_tokens: bool = True


NAMES_1X = NameSet()
NAMES_PRE_020 = NameSet(seed="random_seed", min_tokens="min_length", num_tokens=False)
NUM_TOKENS_INPUTS = ("return_num_input_tokens", "return_num_output_tokens")
NUM_TOKENS_OUTPUTS = ("num_input_tokens", "num_output_tokens")


def version_tuple(version: str) -> tuple[int, int]:
    """``"1.2.1"`` -> ``(1, 2)``; ``"0.19.0.dev2025"`` -> ``(0, 19)``."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def names_for(trtllm_version: str) -> NameSet:
    """``seed``/``min_tokens`` from TensorRT-LLM 0.20 on; the old names before."""
    return NAMES_PRE_020 if version_tuple(trtllm_version) < (0, 20) else NAMES_1X


def _version_filter(tensors: list[Tensor], n: NameSet) -> list[Tensor]:
    drop = () if n.num_tokens else (*NUM_TOKENS_INPUTS, *NUM_TOKENS_OUTPUTS)
    return [t for t in tensors if t.name not in drop]


# -- tensorrt_llm (core model) --------------------------------------------------------------------
def core_inputs(n: NameSet = NAMES_1X) -> list[Tensor]:
    return _version_filter(_core_inputs(n), n)


def _core_inputs(n: NameSet) -> list[Tensor]:
    return [
        opt("input_ids", "INT32", -1, ragged=True),
        opt("encoder_input_features", "FP16", -1, -1, ragged=True),
        opt("encoder_output_lengths", "INT32", scalar=True),
        req("input_lengths", "INT32", scalar=True),
        req("request_output_len", "INT32", scalar=True),
        opt("num_return_sequences", "INT32", scalar=True),
        opt("draft_input_ids", "INT32", -1, ragged=True),
        opt("decoder_input_ids", "INT32", -1, ragged=True),
        opt("decoder_input_lengths", "INT32", scalar=True),
        opt("draft_logits", LOGITS, -1, -1, ragged=True),
        opt("draft_acceptance_threshold", "FP32", scalar=True),
        *scalars("INT32", "end_id", "pad_id"),
        opt("stop_words_list", "INT32", 2, -1, ragged=True),
        opt("bad_words_list", "INT32", 2, -1, ragged=True),
        opt("embedding_bias", "FP32", -1, ragged=True),
        *scalars("INT32", "beam_width"),
        *scalars("FP32", "temperature"),
        *scalars("INT32", "runtime_top_k"),
        *scalars("FP32", "runtime_top_p", "runtime_top_p_min", "runtime_top_p_decay"),
        *scalars("INT32", "runtime_top_p_reset_ids"),
        *scalars("FP32", "len_penalty"),
        *scalars("BOOL", "early_stopping"),
        *scalars("FP32", "repetition_penalty"),
        *scalars("INT32", n.min_tokens),
        *scalars("FP32", "beam_search_diversity_rate", "presence_penalty", "frequency_penalty"),
        *scalars("UINT64", n.seed),
        *scalars(
            "BOOL",
            "return_log_probs",
            "return_context_logits",
            "return_generation_logits",
            "return_perf_metrics",
            "return_num_input_tokens",
            "return_num_output_tokens",
            "exclude_input_in_output",
            "stop",
            "streaming",
        ),
        opt("prompt_embedding_table", "FP16", -1, -1, ragged=True),
        opt("prompt_table_extra_ids", "UINT64", -1, ragged=True),
        *scalars("INT32", "prompt_vocab_size"),
        *scalars("UINT64", "lora_task_id"),
        opt("lora_weights", "FP16", -1, -1, ragged=True),
        opt("lora_config", "INT32", -1, 3, ragged=True),
        opt("guided_decoding_guide_type", "STRING", ragged=True),
        opt("guided_decoding_guide", "STRING", ragged=True),
    ]


_CORE_OUTPUTS = [
    out("output_ids", "INT32", -1, -1),
    out("sequence_length", "INT32", -1),
    out("cum_log_probs", "FP32", -1),
    out("output_log_probs", "FP32", -1, -1),
    out("context_logits", LOGITS, -1, -1),
    out("generation_logits", LOGITS, -1, -1, -1),
    out("batch_index", "INT32", 1),
    out("sequence_index", "INT32", 1),
    out("kv_cache_alloc_new_blocks", "INT32", 1),
    out("kv_cache_reused_blocks", "INT32", 1),
    out("kv_cache_alloc_total_blocks", "INT32", 1),
    out("arrival_time_ns", "INT64", 1),
    out("first_scheduled_time_ns", "INT64", 1),
    out("first_token_time_ns", "INT64", 1),
    out("last_token_time_ns", "INT64", 1),
    out("acceptance_rate", "FP32", 1),
    out("total_accepted_draft_tokens", "INT32", 1),
    out("total_draft_tokens", "INT32", 1),
    out("num_input_tokens", "INT32", 1),
    out("num_output_tokens", "INT32", 1),
]


def core_outputs(n: NameSet = NAMES_1X) -> list[Tensor]:
    return _version_filter(_CORE_OUTPUTS, n)


CORE_OUTPUTS = core_outputs()
# Only the portable runtime produces this: the incrementally detokenized text of each response.
PORTABLE_TEXT_OUTPUT = out("output_text", "STRING", -1)


# -- ensemble / BLS (what clients send) ------------------------------------------------------------
def client_inputs(n: NameSet = NAMES_1X) -> list[Tensor]:
    return _version_filter(_client_inputs(n), n)


def _client_inputs(n: NameSet) -> list[Tensor]:
    return [
        req("text_input", "STRING"),
        opt("decoder_text_input", "STRING"),
        req("max_tokens", "INT32"),
        opt("num_return_sequences", "INT32"),
        opt("bad_words", "STRING", -1),
        opt("stop_words", "STRING", -1),
        opt("exclude_input_in_output", "BOOL"),
        opt("end_id", "INT32"),
        opt("pad_id", "INT32"),
        opt("top_k", "INT32"),
        opt("top_p", "FP32"),
        opt("temperature", "FP32"),
        opt("length_penalty", "FP32"),
        opt("repetition_penalty", "FP32"),
        opt(n.min_tokens, "INT32"),
        opt("presence_penalty", "FP32"),
        opt("frequency_penalty", "FP32"),
        opt(n.seed, "UINT64"),
        opt("return_log_probs", "BOOL"),
        opt("return_context_logits", "BOOL"),
        opt("return_generation_logits", "BOOL"),
        opt("return_perf_metrics", "BOOL"),
        opt("return_num_input_tokens", "BOOL"),
        opt("return_num_output_tokens", "BOOL"),
        opt("beam_width", "INT32"),
        opt("stream", "BOOL"),
        opt("prompt_embedding_table", "FP16", -1, -1),
        opt("prompt_table_extra_id", "UINT64"),
        opt("prompt_vocab_size", "INT32"),
        opt("embedding_bias_words", "STRING", -1),
        opt("embedding_bias_weights", "FP32", -1),
        opt("lora_task_id", "UINT64"),
        opt("lora_weights", "FP16", -1, -1, ragged=True),
        opt("lora_config", "INT32", -1, 3, ragged=True),
        opt("guided_decoding_guide_type", "STRING", ragged=True),
        opt("guided_decoding_guide", "STRING", ragged=True),
    ]


TEXT_OUTPUT = out("text_output", "STRING", -1)


def ensemble_passthrough(n: NameSet = NAMES_1X) -> list[Tensor]:
    """Ensemble outputs besides text: every core output except the raw tokens, each declared once
    (upstream's ensemble declares kv_cache_alloc_total_blocks twice)."""
    return [t for t in core_outputs(n) if t.name not in ("output_ids", "sequence_length")]


ENSEMBLE_PASSTHROUGH = ensemble_passthrough()

# -- preprocessing / postprocessing ------------------------------------------------------------------
PRE_INPUTS = [
    req("QUERY", "STRING"),
    opt("DECODER_QUERY", "STRING"),
    req("REQUEST_OUTPUT_LEN", "INT32"),
    opt("BAD_WORDS_DICT", "STRING", -1),
    opt("STOP_WORDS_DICT", "STRING", -1),
    opt("EMBEDDING_BIAS_WORDS", "STRING", -1),
    opt("EMBEDDING_BIAS_WEIGHTS", "FP32", -1),
    opt("END_ID", "INT32"),
    opt("PAD_ID", "INT32"),
    opt("PROMPT_TABLE_EXTRA_ID", "UINT64"),
]
PRE_OUTPUTS = [
    out("INPUT_ID", "INT32", -1),
    out("REQUEST_INPUT_LEN", "INT32", 1),
    out("DECODER_INPUT_ID", "INT32", -1),
    out("REQUEST_DECODER_INPUT_LEN", "INT32", 1),
    out("BAD_WORDS_IDS", "INT32", 2, -1),
    out("STOP_WORDS_IDS", "INT32", 2, -1),
    out("EMBEDDING_BIAS", "FP32", -1),
    out("REQUEST_OUTPUT_LEN", "INT32", -1),
    out("OUT_END_ID", "INT32", 1),
    out("OUT_PAD_ID", "INT32", 1),
    out("OUT_PROMPT_TABLE_EXTRA_IDS", "UINT64", -1),
]
POST_INPUTS = [
    req("TOKENS_BATCH", "INT32", -1, -1),
    req("SEQUENCE_LENGTH", "INT32", -1),
]
POST_OUTPUTS = [out("OUTPUT", "STRING", -1)]


# -- ensemble steps ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    model: str
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor


def ensemble_steps(n: NameSet = NAMES_1X, *, portable: bool) -> list[Step]:
    pre = Step(
        "preprocessing",
        {
            "QUERY": "text_input",
            "DECODER_QUERY": "decoder_text_input",
            "REQUEST_OUTPUT_LEN": "max_tokens",
            "BAD_WORDS_DICT": "bad_words",
            "STOP_WORDS_DICT": "stop_words",
            "EMBEDDING_BIAS_WORDS": "embedding_bias_words",
            "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights",
            "END_ID": "end_id",
            "PAD_ID": "pad_id",
            "PROMPT_TABLE_EXTRA_ID": "prompt_table_extra_id",
        },
        {
            "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
            "INPUT_ID": "_INPUT_ID",
            "REQUEST_DECODER_INPUT_LEN": "_REQUEST_DECODER_INPUT_LEN",
            "DECODER_INPUT_ID": "_DECODER_INPUT_ID",
            "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
            "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
            "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
            "EMBEDDING_BIAS": "_EMBEDDING_BIAS",
            "OUT_END_ID": "_PREPROCESSOR_END_ID",
            "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
            "OUT_PROMPT_TABLE_EXTRA_IDS": "_OUT_PROMPT_TABLE_EXTRA_IDS",
        },
    )
    core_in = {
        "input_ids": "_INPUT_ID",
        "decoder_input_ids": "_DECODER_INPUT_ID",
        "input_lengths": "_REQUEST_INPUT_LEN",
        "decoder_input_lengths": "_REQUEST_DECODER_INPUT_LEN",
        "exclude_input_in_output": "exclude_input_in_output",
        "request_output_len": "_REQUEST_OUTPUT_LEN",
        "end_id": "_PREPROCESSOR_END_ID",
        "pad_id": "_PREPROCESSOR_PAD_ID",
        "embedding_bias": "_EMBEDDING_BIAS",
        "runtime_top_k": "top_k",
        "runtime_top_p": "top_p",
        "temperature": "temperature",
        "len_penalty": "length_penalty",
        "repetition_penalty": "repetition_penalty",
        n.min_tokens: n.min_tokens,
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
        n.seed: n.seed,
        "return_log_probs": "return_log_probs",
        "return_context_logits": "return_context_logits",
        "return_generation_logits": "return_generation_logits",
        "return_perf_metrics": "return_perf_metrics",
        **({name: name for name in NUM_TOKENS_INPUTS} if n.num_tokens else {}),
        "num_return_sequences": "num_return_sequences",
        "beam_width": "beam_width",
        "streaming": "stream",
        "prompt_embedding_table": "prompt_embedding_table",
        "prompt_vocab_size": "prompt_vocab_size",
        "stop_words_list": "_STOP_WORDS_IDS",
        "bad_words_list": "_BAD_WORDS_IDS",
        "prompt_table_extra_ids": "_OUT_PROMPT_TABLE_EXTRA_IDS",
        "lora_task_id": "lora_task_id",
        "lora_weights": "lora_weights",
        "lora_config": "lora_config",
        "guided_decoding_guide_type": "guided_decoding_guide_type",
        "guided_decoding_guide": "guided_decoding_guide",
    }
    core_out = {t.name: t.name for t in ensemble_passthrough(n)}
    if portable:
        # The portable runtime detokenizes incrementally where each request's state already lives
        # and sends the text with every streamed token. A postprocessing hop would only pass it on,
        # and each Python-backend hop costs about 0.5 ms of CPU per streamed token (tritonserver
        # plus the stub: measured by scripts/bench.py on 2 cores), more than the runtime itself.
        core_out["output_text"] = "text_output"
        return [pre, Step("tensorrt_llm", core_in, core_out)]
    core_out.update({"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"})
    post_in = {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"}
    return [
        pre,
        Step("tensorrt_llm", core_in, core_out),
        Step("postprocessing", post_in, {"OUTPUT": "text_output"}),
    ]


# -- rendering hooks (used by trtbuild.repository) --------------------------------------------------
def _runtime_file(name: str) -> Path:
    import trtbuild.runtime

    return Path(trtbuild.runtime.__file__).parent / name


def models(spec: RepoSpec) -> dict[str, tuple[str, dict[str, Path | None]]]:
    """Model name -> (template folder, extra files copied into the model dir; ``None`` leaves a
    template file out)."""
    detok: dict[str, Path | None] = {"1/_trtbuild_detok.py": _runtime_file("detok.py")}
    core_extra: dict[str, Path | None] = (
        {**detok, "1/_trtbuild_engine.py": _runtime_file("engine.py")}
        if spec.runtime == "torch"
        else {"1/model.py": None}  # TensorRT-LLM's C++ backend: no Python in the core model
    )
    return {
        "ensemble": (f"{KIND}/ensemble", {}),
        "preprocessing": (f"{KIND}/preprocessing", detok),
        "tensorrt_llm": (f"{KIND}/tensorrt_llm", core_extra),
        "postprocessing": (f"{KIND}/postprocessing", detok),
        "tensorrt_llm_bls": (f"{KIND}/tensorrt_llm_bls", {}),
    }


def names(spec: RepoSpec) -> NameSet:
    """The portable runtime speaks the newest names; TensorRT-LLM's C++ backend its version's."""
    return names_for(spec.trtllm_version) if spec.runtime == "tensorrtllm" else NAMES_1X


def decoding_mode(spec: RepoSpec) -> str:
    if spec.decoding_mode != "auto":
        return spec.decoding_mode
    return "beam_search" if spec.max_beam_width > 1 else "top_k_top_p"


def context(spec: RepoSpec, model: str) -> dict[str, Any]:
    portable = spec.runtime == "torch"
    n = names(spec)
    outputs = [*core_outputs(n), PORTABLE_TEXT_OUTPUT] if portable else core_outputs(n)
    ctx: dict[str, Any] = spec.model_dump(mode="python")
    ctx.update(
        engine_dir=str(Path(spec.engine_dir).resolve()),
        tokenizer_dir=str(Path(spec.tokenizer_dir).resolve()),
        triton_max_batch_size=spec.limits.max_batch_size,
        model=model,
        pre_inputs=PRE_INPUTS,
        pre_outputs=PRE_OUTPUTS,
        post_inputs=POST_INPUTS,
        post_outputs=POST_OUTPUTS,
        core_inputs=core_inputs(n),
        core_outputs=outputs,
        client_inputs=client_inputs(n),
        ensemble_outputs=[TEXT_OUTPUT, *ensemble_passthrough(n)],
        steps=ensemble_steps(n, portable=portable),
        # TensorRT-LLM's C++ backend (runtime tensorrtllm)
        core_instance_count=max(1, len(spec.gpu_device_ids)),
        resolved_decoding_mode=decoding_mode(spec),
        gpu_device_ids_param=";".join(",".join(map(str, g)) for g in spec.gpu_device_ids),
    )
    return ctx


def spec_findings(spec: RepoSpec) -> list[str]:
    """Consistency rules on the spec (engine facts included), before anything is rendered."""
    from trtbuild.ensembles._rules import common_findings

    findings = common_findings(spec)
    if spec.runtime == "tensorrtllm" and version_tuple(spec.trtllm_version) >= (1, 3):
        findings.append(
            f"TensorRT-LLM {spec.trtllm_version} has no engine (C++) backend; serve with "
            "--runtime llmapi, or target TensorRT-LLM 1.2.x (Triton 26.07-trtllm-python-py3)"
        )
    if spec.decoding_mode == "beam_search" and spec.max_beam_width == 1:
        findings.append(
            "decoding_mode beam_search needs max_beam_width > 1; use decoding_mode auto"
        )
    return findings


def check(configs: dict[str, Any]) -> list[str]:
    from trtbuild.ensembles._wiring import repository_findings

    return repository_findings(configs, MODELS)
