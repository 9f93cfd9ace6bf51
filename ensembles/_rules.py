"""Consistency rules on a ``RepoSpec``, run before anything is rendered.

Each finding is one line that says what is wrong and how to fix it. The engine's own facts travel
in ``spec.engine`` (``trtbuild repo`` reads them from the engine directory), so these rules are
pure: the same spec gives the same findings anywhere.
"""

from __future__ import annotations

from trtbuild.specs import RepoSpec

KV_NAMES = {"FP8": "fp8", "INT8": "int8"}


def engine_kv_dtype(kv_cache_quant_algo: str | None) -> str:
    """TensorRT-LLM/ModelOpt ``kv_cache_quant_algo`` -> ``fp8``/``int8``/``auto``."""
    return KV_NAMES.get((kv_cache_quant_algo or "").upper(), "auto")


def common_findings(spec: RepoSpec) -> list[str]:
    findings: list[str] = []
    world = spec.tp * spec.pp
    if spec.end_id < 0:
        findings.append(
            f"end_id {spec.end_id} never matches a token, so generation never stops; set it to "
            "the tokenizer's end token (trtbuild repo reads it from generation_config.json)"
        )
    if spec.pad_id < 0:
        findings.append(f"pad_id {spec.pad_id} is not a token id; use the pad (or end) token")
    if spec.runtime == "torch" and world > 1:
        findings.append("the portable runtime runs on one device; set tp and pp to 1")
    seen: set[int] = set()
    for index, group in enumerate(spec.gpu_device_ids):
        if len(group) != world:
            findings.append(
                f"gpu_device_ids[{index}] lists {len(group)} GPU(s) but each tensorrt_llm instance "
                f"needs TP x PP = {world}; list {world} GPU(s) per instance"
            )
        if seen & set(group):
            findings.append(
                f"gpu_device_ids[{index}] reuses GPU(s) {sorted(seen & set(group))}; give each "
                "instance its own GPUs"
            )
        seen |= set(group)
    e = spec.engine
    if e is None:
        return findings
    if e.runtime != spec.runtime:
        findings.append(
            f"the engine directory is for --runtime {e.runtime}; render it with --runtime "
            f"{e.runtime} or rebuild it with 'trtbuild engine --runtime {spec.runtime}'"
        )
        return findings
    if e.world_size is not None and world != e.world_size:
        findings.append(
            f"TP x PP = {spec.tp} x {spec.pp} = {world} but the engine was built for TP {e.tp} x "
            f"PP {e.pp} = {e.world_size} GPU(s); set tp={e.tp} pp={e.pp}, or rebuild with "
            f"'trtbuild engine --tp {spec.tp} --pp {spec.pp}'"
        )
    if spec.runtime == "tensorrtllm":
        findings += _compiled_engine_findings(spec)
    engine_kv = engine_kv_dtype(e.kv_cache_quant_algo)
    if spec.kv_cache_dtype != "auto" and spec.kv_cache_dtype != engine_kv:
        built = f"an {engine_kv.upper()}" if engine_kv != "auto" else "no quantized"
        findings.append(
            f"kv_cache_dtype {spec.kv_cache_dtype} but the engine was built with {built} KV "
            f"cache; use kv_cache_dtype {engine_kv}, or rebuild with 'trtbuild engine "
            f"--kv-cache-dtype {spec.kv_cache_dtype}'"
        )
    if e.max_position_embeddings and spec.limits.max_seq_len > e.max_position_embeddings:
        findings.append(
            f"max_seq_len {spec.limits.max_seq_len} exceeds the model's max_position_embeddings "
            f"{e.max_position_embeddings}; lower max_seq_len"
        )
    return findings


def _compiled_engine_findings(spec: RepoSpec) -> list[str]:
    """Limits and features compiled into a TensorRT-LLM engine are ceilings."""
    from trtbuild.ensembles.inflight_batcher_llm import version_tuple

    e = spec.engine
    assert e is not None
    findings: list[str] = []
    if e.rank_files is not None and e.rank_files != e.world_size:
        findings.append(
            f"the engine directory holds {e.rank_files} rank engine file(s) for world size "
            f"{e.world_size} (TP {e.tp} x PP {e.pp}): it is incomplete; rebuild it with "
            "'trtbuild engine'"
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
            findings.append(
                f"{key} {asked} exceeds the engine's {ceiling} (build_config.{key}); lower it "
                f"(plan or spec) to <= {ceiling}, or rebuild with 'trtbuild engine {flag} {asked}'"
            )
    if spec.max_beam_width > e.max_beam_width:
        findings.append(
            f"max_beam_width {spec.max_beam_width} exceeds the engine's {e.max_beam_width}; "
            f"lower it or rebuild the engine with max_beam_width {spec.max_beam_width}"
        )
    if e.trtllm_version and version_tuple(e.trtllm_version) != version_tuple(spec.trtllm_version):
        findings.append(
            f"the engine was built with TensorRT-LLM {e.trtllm_version} but the repository "
            f"targets {spec.trtllm_version}; set trtllm_version {e.trtllm_version} and serve in "
            "the container with that TensorRT-LLM"
        )
    if e.paged_context_fmha is False:
        for key in ("enable_kv_cache_reuse", "enable_chunked_context"):
            if getattr(spec, key):
                findings.append(
                    f"{key} needs an engine built with paged context FMHA "
                    "(use_paged_context_fmha); set it false, or rebuild with paged context FMHA "
                    "(TensorRT-LLM drops it for an INT8 KV cache and for an FP8 KV cache without "
                    "--quant fp8)"
                )
    return findings
