"""Resolving settings: explicit options, then the plan file, then defaults from the model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from trtbuild.builder.checkpoint import read_checkpoint
from trtbuild.builder.settings import resolve
from trtbuild.errors import SpecError
from trtbuild.files.plan_file import read_plan
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
        "max_num_tokens": 8192,  # trtllm-build's default (trtbuild.vocab)
    }
    assert (s.calib_size, s.calib_dataset, s.quantized, s.world_size) == (None, None, False, 1)


def test_short_context_models_shrink_the_defaults(write_checkpoint: Callable[..., Path]) -> None:
    ckpt = write_checkpoint(max_position_embeddings=512)
    s = resolve(EngineSpec(checkpoint=ckpt, out=ckpt / "o"), read_checkpoint(ckpt))
    assert (s.limits.max_seq_len, s.limits.max_input_len, s.limits.max_num_tokens) == (
        512,
        256,
        8192,
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


def _plan(tmp_path: Path, checkpoint: Path, **request: object) -> Path:
    from trtbuild.plan import plan_from_spec
    from trtbuild.specs import PlanRequest, PlanSpec

    plan = plan_from_spec(
        PlanSpec(model=str(checkpoint), gpu="h100-sxm", request=PlanRequest(**request))
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not a trtbuild plan (Invalid JSON"),
        ("[1]", "is not a trtbuild plan"),
        ('{"quant": "fp4"}', "is not a trtbuild plan"),
    ],
)
def test_bad_plans(tmp_path: Path, content: str, message: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    with pytest.raises(SpecError, match=re.escape(message)):
        read_plan(plan)


def test_a_plan_with_a_wrong_value_names_it(tmp_path: Path, llama_8b: Path) -> None:
    path = _plan(tmp_path, llama_8b)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "quant": "fp4"}))
    with pytest.raises(SpecError, match="quant: Input should be 'none', 'fp8', 'int8-sq' or"):
        read_plan(path)


def test_plan_none_and_auto_mean_unquantized(tmp_path: Path, llama_8b: Path) -> None:
    plan = read_plan(_plan(tmp_path, llama_8b, quant="none", kv_cache_dtype="auto"))
    assert (plan.quant, plan.kv_cache_dtype) == ("none", "auto")
    s = resolve(
        EngineSpec(checkpoint=llama_8b, out=llama_8b / "o"), read_checkpoint(llama_8b), plan=plan
    )
    assert (s.quant, s.kv_cache_dtype) == (None, None)
    assert (s.tp, s.limits.max_batch_size) == (plan.tp, plan.max_batch_size)
