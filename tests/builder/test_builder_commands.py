"""The plan of a TensorRT-LLM build: golden argv for TP x PP x quantization (make golden)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.goldens import check_golden
from trtbuild import proc
from trtbuild.builder.checkpoint import read_checkpoint
from trtbuild.builder.commands import DISPLAY_TOOLS, plan_phases
from trtbuild.builder.settings import resolve
from trtbuild.specs import EngineSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "engine"
VARIANTS = {
    "bf16": {},
    "fp8": {"quant": "fp8"},
    "fp8-kv-fp8": {"quant": "fp8", "kv_cache_dtype": "fp8"},
    "kv-int8": {"kv_cache_dtype": "int8"},
}
CASES = [
    (f"tp{tp}-pp{pp}-{variant}", {"tp": tp, "pp": pp, **VARIANTS[variant]})
    for tp, pp, variant in itertools.product((1, 2, 4), (1, 2), VARIANTS)
] + [
    ("tp1-pp1-int8-sq", {"quant": "int8-sq", "calib_size": 64}),
    ("tp2-pp1-int4-awq", {"tp": 2, "quant": "int4-awq"}),
]


def render(llama_8b: Path, options: dict[str, object]) -> str:
    spec = EngineSpec(
        checkpoint=llama_8b,
        out=Path("/engines/llama"),
        max_batch_size=64,  # type: ignore[arg-type]
        max_input_len=4096,
        max_seq_len=8192,
        max_num_tokens=8192,
        **options,
    )
    settings = resolve(spec, read_checkpoint(llama_8b), sm=90)
    phases = plan_phases(
        settings,
        checkpoint=Path("/models/llama"),
        work_dir=Path("/engines/llama/.trtbuild-work"),
        engine_dir=Path("/engines/llama"),
        tools=DISPLAY_TOOLS,
    )
    return "".join(f"# {p.label}\n{proc.format_command(p.argv)}\n" for p in phases)


@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_golden_plan(
    llama_8b: Path, name: str, options: dict[str, object], update_golden: bool
) -> None:
    text = render(llama_8b, options)
    check_golden(GOLDEN / f"{name}.txt", text, update_golden)


def test_one_convert_process_per_rank_then_one_build(llama_8b: Path) -> None:
    text = render(llama_8b, {"tp": 4, "pp": 2})
    labels = [line for line in text.splitlines() if line.startswith("#")]
    assert labels == [f"# convert (rank {r} of 8)" for r in range(8)] + ["# build (8 ranks)"]
    assert "--workers 8" in text and "--rank 7" in text


def test_quantized_builds_run_one_quantize_process(llama_8b: Path) -> None:
    text = render(llama_8b, {"tp": 2, "quant": "fp8", "kv_cache_dtype": "fp8"})
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# quantize (2 ranks)",
        "# build (2 ranks)",
    ]
    assert (
        "quantize --model_dir /models/llama --output_dir /engines/llama/.trtbuild-work/checkpoint "
        "--dtype bfloat16 --qformat fp8 --kv_cache_dtype fp8 --calib_size 512 "
        "--calib_dataset cnn_dailymail --tp_size 2 --pp_size 1"
    ) in text
    assert "--use_paged_context_fmha enable --use_fp8_context_fmha enable" in text
    assert "--gemm_plugin fp8" in text


def test_kv_only_quantization_keeps_weights_full_precision(llama_8b: Path) -> None:
    text = render(llama_8b, {"kv_cache_dtype": "int8"})
    assert "--qformat full_prec --kv_cache_dtype int8" in text
    assert "--use_paged_context_fmha disable --use_fp8_context_fmha disable" in text
    assert "--gemm_plugin auto" in text


def test_every_important_flag_is_explicit(llama_8b: Path) -> None:
    build = render(llama_8b, {}).splitlines()[-1]
    for flag in (
        "--max_batch_size 64",
        "--max_input_len 4096",
        "--max_seq_len 8192",
        "--max_num_tokens 8192",
        "--kv_cache_type paged",
        "--remove_input_padding enable",
        "--use_paged_context_fmha enable",
        "--gpt_attention_plugin auto",
        "--gemm_plugin auto",
        "--multiple_profiles enable",
        "--workers 1",
        "--use_fp8_context_fmha disable",
        "--context_fmha enable",
        "--tokens_per_block 32",
    ):
        assert flag in build
