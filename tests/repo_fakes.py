"""Fake engine directories and tokenizers for the ``trtbuild repo``/``check`` tests.

``write_trtllm_engine`` writes what TensorRT-LLM 1.2's ``Engine.save`` writes (and what
tests/fakes/fake_trtllm-build writes): ``config.json`` with ``version``, ``pretrained_config``
(architecture, dtype, mapping, quantization) and ``build_config`` (limits, kv_cache_type,
plugin_config), plus ``rank{N}.engine`` placeholders. ``write_llama3_tokenizer`` writes the
files of a Llama-3-8B-Instruct tokenizer that matter for end/pad ids (not a usable vocabulary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

LLAMA3_BOS, LLAMA3_EOS, LLAMA3_EOT = 128000, 128001, 128009


def write_llama3_tokenizer(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    added = [
        {"id": LLAMA3_BOS, "content": "<|begin_of_text|>", "special": True},
        {"id": LLAMA3_EOS, "content": "<|end_of_text|>", "special": True},
        {"id": LLAMA3_EOT, "content": "<|eot_id|>", "special": True},
    ]
    tokenizer = {"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": {}}}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(a["id"]): {"content": a["content"]} for a in added},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    generation = {"bos_token_id": LLAMA3_BOS, "eos_token_id": [LLAMA3_EOS, LLAMA3_EOT]}
    (out / "generation_config.json").write_text(json.dumps(generation))
    return out


def copy_tokenizer(src: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return out


def write_trtllm_engine(
    out: Path,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "bfloat16",
    quant_algo: str | None = None,
    kv_cache_quant_algo: str | None = None,
    max_batch_size: int = 64,
    max_input_len: int = 4096,
    max_seq_len: int = 8192,
    max_num_tokens: int = 8192,
    version: str = "1.2.1",
    paged_context_fmha: bool = True,
    ranks: int | None = None,
    tokenizer: Path | None = None,
) -> Path:
    """A Llama-3-8B-shaped TensorRT-LLM engine directory (engines are placeholder bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    world = tp * pp
    pretrained: dict[str, Any] = {
        "architecture": "LlamaForCausalLM",
        "dtype": dtype,
        "vocab_size": 128256,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "mapping": {"world_size": world, "tp_size": tp, "pp_size": pp, "rank": 0},
        "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_cache_quant_algo},
    }
    build = {
        "max_input_len": max_input_len,
        "max_seq_len": max_seq_len,
        "max_batch_size": max_batch_size,
        "max_beam_width": 1,
        "max_num_tokens": max_num_tokens,
        "kv_cache_type": "PAGED",
        "plugin_config": {
            "use_paged_context_fmha": paged_context_fmha,
            "use_fp8_context_fmha": quant_algo == "FP8" and kv_cache_quant_algo == "FP8",
            "tokens_per_block": 32,
        },
    }
    config = {"version": version, "pretrained_config": pretrained, "build_config": build}
    (out / "config.json").write_text(json.dumps(config, indent=4))
    for rank in range(world if ranks is None else ranks):
        (out / f"rank{rank}.engine").write_bytes(b"FAKE-TRT-PLAN rank %d\n" % rank)
    if tokenizer is not None:
        copy_tokenizer(tokenizer, out / "tokenizer")
    return out


def write_hf_checkpoint(
    out: Path,
    tokenizer: Path,
    *,
    quant_algo: str | None = None,
    kv_cache_quant_algo: str | None = None,
    max_position_embeddings: int = 131072,
) -> Path:
    """A config-only Llama-3-8B-shaped Hugging Face checkpoint (pre-quantized if asked)."""
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "max_position_embeddings": max_position_embeddings,
    }
    (out / "config.json").write_text(json.dumps(config))
    if quant_algo:
        quant = {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_cache_quant_algo}
        (out / "hf_quant_config.json").write_text(
            json.dumps({"producer": {"name": "modelopt"}, "quantization": quant})
        )
    copy_tokenizer(tokenizer, out)
    return out


def write_manifest(
    engine_dir: Path,
    *,
    runtime: str,
    tp: int = 1,
    pp: int = 1,
    gpu: tuple[str, int] = ("h100-sxm", 90),
    trtllm: str = "1.2.1",
    dtype: str = "bfloat16",
    quant: str | None = None,
    kv_cache: str | None = None,
    limits: dict[str, int] | None = None,
    paged_context_fmha: bool = True,
    tokenizer_dir: str = ".",
) -> Path:
    """``trtbuild-engine.json`` as 'trtbuild engine' writes it (the fields repo reads)."""
    from trtbuild.builder.llmapi import llm_args
    from trtbuild.builder.manifest import (
        FeatureRecord,
        GpuRecord,
        Manifest,
        ParallelRecord,
        QuantRecord,
        SoftwareRecord,
        SourceRecord,
    )
    from trtbuild.builder.manifest import write_manifest as write
    from trtbuild.builder.settings import BuildSettings
    from trtbuild.specs import Limits

    lim = Limits(
        **(
            limits
            or {
                "max_batch_size": 64,
                "max_input_len": 4096,
                "max_seq_len": 8192,
                "max_num_tokens": 8192,
            }
        )
    )
    settings = BuildSettings(
        runtime=runtime,  # type: ignore[arg-type]
        tp=tp,
        pp=pp,
        dtype=dtype,  # type: ignore[arg-type]
        quant=quant,  # type: ignore[arg-type]
        kv_cache_dtype=kv_cache,  # type: ignore[arg-type]
        limits=lim,
    )
    algo = {"fp8": "FP8"}.get(quant or "")
    manifest = Manifest(
        runtime=runtime,  # type: ignore[arg-type]
        created="2026-01-01T00:00:00Z",
        gpu=GpuRecord(
            name=gpu[0],
            sm=gpu[1],
            compute_capability=f"{gpu[1] // 10}.{gpu[1] % 10}",
            source="detected",
        ),
        software=SoftwareRecord(trtbuild="0.1.0", tensorrt_llm=trtllm, tensorrt="10.14.1.48"),
        parallel=ParallelRecord(tp=tp, pp=pp, world_size=tp * pp),
        dtype=dtype,
        quantization=QuantRecord(
            weights=quant,
            kv_cache=kv_cache,
            quant_algo=algo,
            kv_cache_quant_algo={"fp8": "FP8", "int8": "INT8"}.get(kv_cache or ""),
        ),
        limits=lim,
        features=FeatureRecord(paged_context_fmha=paged_context_fmha),
        tokenizer_dir=tokenizer_dir,
        llm_args=llm_args(settings) if runtime == "llmapi" else None,
        source=SourceRecord(path="/models/llama-3.1-8b"),
        settings=settings,
    )
    return write(engine_dir, manifest)
