"""The LLM-API flavor: no compile; the checkpoint is validated, linked and described."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from trtbuild.builder.engine import BuildEnv, build_engine
from trtbuild.builder.manifest import read_manifest
from trtbuild.specs import EngineSpec

FP8_QUANT = {
    "producer": {"name": "modelopt", "version": "0.31.0"},
    "quantization": {
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8",
        "exclude_modules": ["lm_head"],
    },
}


def test_prequantized_fp8_checkpoint(
    write_checkpoint: Callable[..., Path], tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    ckpt = write_checkpoint("fp8", files={"hf_quant_config.json": FP8_QUANT})
    (ckpt / "model-00001-of-00001.safetensors").write_bytes(os.urandom(2 << 20))
    out = tmp_path / "engine"
    result = build_engine(
        EngineSpec(
            checkpoint=ckpt,
            out=out,
            runtime="llmapi",
            tp=2,
            max_seq_len=8192,
            max_input_len=4096,
            max_num_tokens=8192,
        ),
        env=fake_env("h100-sxm", 2),
    )
    assert not result.cache_hit and result.commands == []
    m = read_manifest(out)
    assert m.runtime == "llmapi" and m.gpu is not None and m.gpu.sm == 90
    assert m.quantization.model_dump() == {
        "weights": "FP8",
        "kv_cache": "fp8",
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8",
        "prequantized": True,
    }
    assert m.llm_args == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "dtype": "bfloat16",
        "max_batch_size": 16,
        "max_num_tokens": 8192,
        "max_seq_len": 8192,
        "enable_chunked_prefill": False,
        "kv_cache_config": {"dtype": "auto"},
    }
    weights = out / "model-00001-of-00001.safetensors"
    assert os.path.samefile(weights, ckpt / weights.name)  # linked, not copied
    assert m.files[weights.name] == m.source.files[weights.name]
    assert json.loads((out / "hf_quant_config.json").read_text()) == FP8_QUANT
    assert (out / "tokenizer.json").is_file() and m.tokenizer_dir == "."


def test_config_json_quantization_config_is_recognised(
    write_checkpoint: Callable[..., Path], tmp_path: Path, no_gpu_env: BuildEnv
) -> None:
    ckpt = write_checkpoint(
        quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"}
    )
    build_engine(
        EngineSpec(checkpoint=ckpt, out=tmp_path / "e", runtime="llmapi", kv_cache_dtype="fp8"),
        env=no_gpu_env,
    )
    m = read_manifest(tmp_path / "e")
    assert (m.quantization.quant_algo, m.quantization.kv_cache, m.gpu) == ("FP8", "fp8", None)
    assert m.llm_args is not None and m.llm_args["kv_cache_config"] == {"dtype": "fp8"}


def test_dry_run_writes_nothing(llama_8b: Path, tmp_path: Path, no_gpu_env: BuildEnv) -> None:
    result = build_engine(
        EngineSpec(checkpoint=llama_8b, out=tmp_path / "e", runtime="llmapi", dry_run=True),
        env=no_gpu_env,
    )
    assert result.summary().splitlines()[1] == "# no commands: this runtime has no compile step"
    assert not (tmp_path / "e").exists()
