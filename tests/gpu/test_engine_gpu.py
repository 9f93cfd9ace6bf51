"""Real TensorRT-LLM engine builds: run with ``make test-gpu`` inside the NGC container.

NOT RUN IN CI (no GPU there). Needs an NVIDIA GPU and TensorRT-LLM 1.2.x, e.g.
``nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3``; see docs/engine.md for the exact
``docker run`` line. The FP8 test also needs the Hub (calibration data: cnn_dailymail).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtbuild.builder import _trtllm
from trtbuild.builder.engine import build_engine, detect_env
from trtbuild.builder.manifest import check_compatible, detect_host, read_manifest
from trtbuild.specs import EngineSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        _trtllm.installed_version("tensorrt_llm") is None,
        reason="TensorRT-LLM is not installed (run make test-gpu inside the NGC container)",
    ),
]

LIMITS = {"max_batch_size": 4, "max_input_len": 128, "max_seq_len": 256, "max_num_tokens": 256}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTBUILD_HOME", str(tmp_path / "home"))


def _generate(engine_dir: Path, prompt: list[int], steps: int) -> list[int]:
    import torch
    from tensorrt_llm.runtime import ModelRunner

    runner = ModelRunner.from_dir(engine_dir=str(engine_dir), rank=0)
    out = runner.generate(
        batch_input_ids=[torch.tensor(prompt, dtype=torch.int32)],
        max_new_tokens=steps,
        end_id=2,
        pad_id=3,
        temperature=1.0,
        top_k=1,
    )
    return [int(t) for t in out[0][0][len(prompt) : len(prompt) + steps]]


def test_tiny_engine_builds_runs_and_is_cached(tiny_model: Path, tmp_path: Path) -> None:
    env = detect_env("tensorrtllm")
    assert env.gpus, "no GPU visible"
    out = tmp_path / "engine"
    first = build_engine(
        EngineSpec(checkpoint=tiny_model, out=out, dtype="float16", **LIMITS), env=env
    )
    m = read_manifest(out)
    assert m.gpu is not None and m.gpu.sm == env.gpus[0].sm
    assert m.software.tensorrt_llm == _trtllm.installed_version("tensorrt_llm")
    assert (out / "rank0.engine").stat().st_size > 0 and (
        out / "tokenizer" / "tokenizer.json"
    ).is_file()
    assert check_compatible(m, detect_host()) == []
    tokens = _generate(out, [1, 50, 60, 70], 8)
    assert len(tokens) == 8 and all(0 <= t < 2048 for t in tokens)

    again = build_engine(
        EngineSpec(checkpoint=tiny_model, out=tmp_path / "again", dtype="float16", **LIMITS),
        env=env,
    )
    assert again.cache_hit and not first.cache_hit


def test_tp2_engine(tiny_model: Path, tmp_path: Path) -> None:
    env = detect_env("tensorrtllm")
    if len(env.gpus) < 2:
        pytest.skip("needs 2 GPUs")
    build_engine(EngineSpec(checkpoint=tiny_model, out=tmp_path / "tp2", tp=2, **LIMITS), env=env)
    m = read_manifest(tmp_path / "tp2")
    assert (m.parallel.tp, m.parallel.world_size) == (2, 2)
    assert (tmp_path / "tp2" / "rank1.engine").is_file()


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") == "1", reason="calibration data comes from the Hub"
)
def test_fp8_engine_with_fp8_kv_cache(tiny_model: Path, tmp_path: Path) -> None:
    env = detect_env("tensorrtllm")
    if env.gpus[0].sm < 89:
        pytest.skip("FP8 needs SM >= 89")
    build_engine(
        EngineSpec(
            checkpoint=tiny_model,
            out=tmp_path / "fp8",
            quant="fp8",
            kv_cache_dtype="fp8",
            calib_size=16,
            **LIMITS,
        ),
        env=env,
    )
    m = read_manifest(tmp_path / "fp8")
    assert (m.quantization.quant_algo, m.quantization.kv_cache_quant_algo) == ("FP8", "FP8")
    assert m.features is not None and m.features.fp8_context_fmha
