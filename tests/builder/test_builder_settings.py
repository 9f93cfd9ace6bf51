"""Resolving settings: explicit options, then the plan file, then defaults from the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from trtbuild.builder.checkpoint import read_checkpoint
from trtbuild.builder.settings import load_plan, resolve
from trtbuild.errors import SpecError
from trtbuild.specs import EngineSpec


def test_defaults(llama_8b: Path) -> None:
    s = resolve(
        EngineSpec(checkpoint=llama_8b, out=llama_8b / "o"), read_checkpoint(llama_8b), sm=90
    )
    assert (s.runtime, s.tp, s.pp, s.dtype, s.quant, s.kv_cache_dtype) == (
        "tensorrtllm",
        1,
        1,
        "bfloat16",
        None,
        None,
    )
    assert s.limits.model_dump() == {
        "max_batch_size": 16,
        "max_input_len": 1024,
        "max_seq_len": 2048,
        "max_num_tokens": 4096,
    }
    assert (s.calib_size, s.calib_dataset, s.quantized, s.world_size) == (None, None, False, 1)


def test_short_context_models_shrink_the_defaults(write_checkpoint: Callable[..., Path]) -> None:
    ckpt = write_checkpoint(max_position_embeddings=512)
    s = resolve(EngineSpec(checkpoint=ckpt, out=ckpt / "o"), read_checkpoint(ckpt))
    assert (s.limits.max_seq_len, s.limits.max_input_len, s.limits.max_num_tokens) == (
        512,
        256,
        4096,
    )
    s = resolve(
        EngineSpec(checkpoint=ckpt, out=ckpt / "o", max_input_len=400), read_checkpoint(ckpt)
    )
    assert s.limits.max_input_len == 400


def test_quantized_builds_get_calibration_defaults(llama_8b: Path) -> None:
    s = resolve(
        EngineSpec(checkpoint=llama_8b, out=llama_8b / "o", kv_cache_dtype="fp8"),
        read_checkpoint(llama_8b),
    )
    assert (s.quantized, s.calib_size, s.calib_dataset) == (True, 512, "cnn_dailymail")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not valid JSON"),
        ("[1]", "must be a JSON object; regenerate it with trtbuild plan"),
        (
            '{"quant": "fp4"}',
            "invalid quant: Input should be 'none', 'fp8', 'int8-sq' or 'int4-awq'",
        ),
    ],
)
def test_bad_plans(tmp_path: Path, content: str, message: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    with pytest.raises(SpecError, match=message):
        load_plan(plan)


def test_plan_none_and_auto_mean_unquantized(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"quant": "none", "kv_cache_dtype": "auto", "model": {"x": 1}}))
    p = load_plan(plan)
    assert (p.quant, p.kv_cache_dtype) == (None, None)
