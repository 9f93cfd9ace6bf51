"""Consistency rules on a ``RepoSpec``, run before anything is rendered.

Each rule returns ``Finding`` objects (what is wrong, the fix). The engine's own facts travel
in ``spec.engine`` (``trtbuild repo`` reads them from the engine directory), so these rules are
pure: the same spec gives the same findings anywhere.
"""

from __future__ import annotations

from trtbuild.findings import REPOSITORY, Finding
from trtbuild.specs import RepoSpec

KV_NAMES = {"FP8": "fp8", "INT8": "int8"}


def engine_kv_dtype(kv_cache_quant_algo: str | None) -> str:
    """TensorRT-LLM/ModelOpt ``kv_cache_quant_algo`` -> ``fp8``/``int8``/``auto``."""
    return KV_NAMES.get((kv_cache_quant_algo or "").upper(), "auto")


def _spec(message: str, fix: str) -> Finding:
    return Finding(REPOSITORY, message, fix)


def common_findings(spec: RepoSpec) -> list[Finding]:
    findings: list[Finding] = []
    add = findings.append
    world = spec.tp * spec.pp
    if spec.end_id < 0:
        add(
            _spec(
                f"end_id {spec.end_id} never matches a token, so generation never stops",
                "set it to the tokenizer's end token (trtbuild repo reads it from "
                "generation_config.json)",
            )
        )
    if spec.pad_id < 0:
        add(_spec(f"pad_id {spec.pad_id} is not a token id", "use the pad (or end) token"))
    if spec.bls_decoupled and not spec.streaming:
        add(
            _spec(
                "a decoupled tensorrt_llm_bls streams through tensorrt_llm, which is not decoupled",
                "render with --streaming, or drop --bls-decoupled",
            )
        )
    if spec.runtime == "torch" and world > 1:
        add(_spec("the portable runtime runs on one device", "set tp and pp to 1"))
    seen: set[int] = set()
    for index, group in enumerate(spec.gpu_device_ids):
        if len(group) != world:
            add(
                _spec(
                    f"gpu_device_ids[{index}] lists {len(group)} GPU(s) but each tensorrt_llm "
                    f"instance needs TP x PP = {world}",
                    f"list {world} GPU(s) per instance",
                )
            )
        if seen & set(group):
            add(
                _spec(
                    f"gpu_device_ids[{index}] reuses GPU(s) {sorted(seen & set(group))}",
                    "give each instance its own GPUs",
                )
            )
        seen |= set(group)
    e = spec.engine
    if e is None:
        return findings
    if e.runtime != spec.runtime:
        add(
            _spec(
                f"the engine directory is for --runtime {e.runtime}",
                f"render it with --runtime {e.runtime} or rebuild it with "
                f"'trtbuild engine --runtime {spec.runtime}'",
            )
        )
        return findings
    if e.world_size is not None and world != e.world_size:
        add(
            _spec(
                f"TP x PP = {spec.tp} x {spec.pp} = {world} but the engine was built for "
                f"TP {e.tp} x PP {e.pp} = {e.world_size} GPU(s)",
                f"set tp={e.tp} pp={e.pp}, or rebuild with "
                f"'trtbuild engine --tp {spec.tp} --pp {spec.pp}'",
            )
        )
    if spec.runtime == "tensorrtllm":
        findings += _compiled_engine_findings(spec)
    engine_kv = engine_kv_dtype(e.kv_cache_quant_algo)
    if spec.kv_cache_dtype != "auto" and spec.kv_cache_dtype != engine_kv:
        built = f"an {engine_kv.upper()}" if engine_kv != "auto" else "no quantized"
        add(
            _spec(
                f"kv_cache_dtype {spec.kv_cache_dtype} but the engine was built with {built} "
                "KV cache",
                f"use kv_cache_dtype {engine_kv}, or rebuild with "
                f"'trtbuild engine --kv-cache-dtype {spec.kv_cache_dtype}'",
            )
        )
    if e.max_position_embeddings and spec.limits.max_seq_len > e.max_position_embeddings:
        add(
            _spec(
                f"max_seq_len {spec.limits.max_seq_len} exceeds the model's "
                f"max_position_embeddings {e.max_position_embeddings}",
                "lower max_seq_len",
            )
        )
    return findings


def _compiled_engine_findings(spec: RepoSpec) -> list[Finding]:
    """Limits and features compiled into a TensorRT-LLM engine are ceilings."""
    from trtbuild.ensembles.upstream import version_tuple

    e = spec.engine
    assert e is not None
    findings: list[Finding] = []
    add = findings.append
    if e.rank_files is not None and e.rank_files != e.world_size:
        add(
            _spec(
                f"the engine directory holds {e.rank_files} rank engine file(s) for world size "
                f"{e.world_size} (TP {e.tp} x PP {e.pp}): it is incomplete",
                "rebuild it with 'trtbuild engine'",
            )
        )
    flags = {
        "max_batch_size": "--max-batch-size",
        "max_input_len": "--max-input-len",
        "max_seq_len": "--max-seq-len",
    }
    for key, flag in flags.items():
        ceiling = getattr(e, key)
        asked = getattr(spec.limits, key)
        if ceiling is not None and asked > ceiling:
            add(
                _spec(
                    f"{key} {asked} exceeds the engine's {ceiling} (build_config.{key})",
                    f"lower it (plan or spec) to <= {ceiling}, or rebuild with "
                    f"'trtbuild engine {flag} {asked}'",
                )
            )
    if spec.max_beam_width > e.max_beam_width:
        add(
            _spec(
                f"max_beam_width {spec.max_beam_width} exceeds the engine's {e.max_beam_width}",
                f"lower it or rebuild the engine with max_beam_width {spec.max_beam_width}",
            )
        )
    if e.trtllm_version and version_tuple(e.trtllm_version) != version_tuple(spec.trtllm_version):
        add(
            _spec(
                f"the engine was built with TensorRT-LLM {e.trtllm_version} but the repository "
                f"targets {spec.trtllm_version}",
                f"set trtllm_version {e.trtllm_version} and serve in the container with that "
                "TensorRT-LLM",
            )
        )
    if e.paged_context_fmha is False:
        for key in ("enable_kv_cache_reuse", "enable_chunked_context"):
            if getattr(spec, key):
                add(
                    _spec(
                        f"{key} needs an engine built with paged context FMHA "
                        "(use_paged_context_fmha)",
                        "set it false, or rebuild with paged context FMHA (TensorRT-LLM drops "
                        "it for an INT8 KV cache and for an FP8 KV cache without --quant fp8)",
                    )
                )
    return findings
