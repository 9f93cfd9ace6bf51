"""Checks of the directories TensorRT-LLM writes (as documented for 1.2.x)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtbuild.builder.layout import verify_checkpoint, verify_engine
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import RuntimeFailure
from trtbuild.files.trtllm import missing_ranks
from trtbuild.specs import Limits

LIMITS = Limits(max_batch_size=8, max_input_len=4096, max_seq_len=2048, max_num_tokens=512)


def settings(**changes: object) -> BuildSettings:
    return BuildSettings(runtime="tensorrtllm", dtype="bfloat16", limits=LIMITS, **changes)  # type: ignore[arg-type]


def engine(tmp_path: Path, *, tp: int = 2, kv: str | None = None, algo: str | None = None) -> Path:
    config = {
        "version": "1.2.1",
        "pretrained_config": {
            "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
            "quantization": {"quant_algo": algo, "kv_cache_quant_algo": kv},
        },
        "build_config": {
            "max_batch_size": 8,
            "max_input_len": 2048,
            "max_seq_len": 2048,
            "max_num_tokens": 512,
            "kv_cache_type": "PAGED",
            "plugin_config": {"gemm_plugin": "auto"},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    for rank in range(tp):
        (tmp_path / f"rank{rank}.engine").write_bytes(b"x")
    return tmp_path


def test_effective_limits_come_from_the_engine(tmp_path: Path) -> None:
    facts = verify_engine(engine(tmp_path), settings(tp=2))
    assert facts.limits.max_input_len == 2048  # trtllm-build clipped it to max_seq_len
    assert (facts.version, facts.world_size, facts.plugin_config) == (
        "1.2.1",
        2,
        {"gemm_plugin": "auto"},
    )


def test_mismatches_are_runtime_failures(tmp_path: Path) -> None:
    with pytest.raises(
        RuntimeFailure, match=r"has pretrained_config\.mapping\.tp_size = 2, expected 4$"
    ):
        verify_engine(engine(tmp_path), settings(tp=4))
    with pytest.raises(
        RuntimeFailure, match=r"has quantization\.kv_cache_quant_algo = None, expected 'FP8'$"
    ):
        verify_engine(engine(tmp_path), settings(tp=2, kv_cache_dtype="fp8"))
    with pytest.raises(RuntimeFailure, match=r"has quant_algo None, expected FP8$"):
        verify_engine(engine(tmp_path), settings(tp=2, quant="fp8"))
    (tmp_path / "rank1.engine").unlink()
    assert missing_ranks(tmp_path, 2, ".engine") == [1]
    with pytest.raises(RuntimeFailure, match=r"lacks rank1\.engine"):
        verify_engine(tmp_path, settings(tp=2))


def test_checkpoint_checks(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}})
    )
    (tmp_path / "rank0.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeFailure, match=r"lacks rank1\.safetensors \(ranks missing: 1\)$"):
        verify_checkpoint(tmp_path, settings(tp=2))
    with pytest.raises(RuntimeFailure, match="is missing or not JSON"):
        verify_checkpoint(tmp_path / "nope", settings())
