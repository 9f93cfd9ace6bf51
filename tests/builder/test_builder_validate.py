"""Validation rules: every broken rule is a one-line SpecError that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builder.builder_fakes import gpus
from trtbuild.builder.checkpoint import read_checkpoint
from trtbuild.builder.settings import resolve
from trtbuild.builder.validate import (
    Target,
    fp8_context_fmha,
    paged_context_fmha,
    resolve_target,
    validate,
)
from trtbuild.errors import SpecError
from trtbuild.specs import EngineSpec


def check(
    ckpt: Path, gpu: str | None = "h100-sxm", count: int | None = None, **options: object
) -> list[str]:
    spec = EngineSpec(checkpoint=ckpt, out=ckpt.parent / "out", **options)  # type: ignore[arg-type]
    facts = read_checkpoint(ckpt)
    target = resolve_target(gpu, gpus(gpu, count) if gpu and count else [])
    return validate(resolve(spec, facts, sm=target.sm if target else None), facts, target)


def test_a_good_fp8_build_passes(llama_8b: Path) -> None:
    assert check(llama_8b, tp=4, pp=2, quant="fp8", kv_cache_dtype="fp8") == []


@pytest.mark.parametrize(
    ("gpu", "options", "message"),
    [
        (
            "a100-80gb",
            {"quant": "fp8"},
            "FP8 weights need SM >= 89 (Ada, Hopper or newer); a100-80gb (SM 80) lacks FP8, use --quant int8-sq or int4-awq",
        ),
        (
            "a100-80gb",
            {"kv_cache_dtype": "fp8"},
            "an FP8 KV cache needs SM >= 89; a100-80gb (SM 80) lacks FP8, use --kv-cache-dtype int8",
        ),
        ("a10", {"dtype": "float16", "quant": "fp8"}, "FP8 weights need SM >= 89"),
        (
            "b200",
            {"quant": "int8-sq"},
            "TensorRT-LLM does not build --quant int8-sq for b200 (SM 100); use --quant fp8 and --kv-cache-dtype fp8",
        ),
        (
            "b200",
            {"kv_cache_dtype": "int8"},
            "TensorRT-LLM does not build --kv-cache-dtype int8 for b200",
        ),
        ("b200", {"quant": "int4-awq"}, "TensorRT-LLM does not build --quant int4-awq for b200"),
    ],
)
def test_hardware_rules(llama_8b: Path, gpu: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match="^" + _escape(message)):
        check(llama_8b, gpu, **options)


def test_bf16_refused_below_sm80(llama_8b: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtbuild.builder import validate as v

    facts = read_checkpoint(llama_8b)
    spec = EngineSpec(checkpoint=llama_8b, out=llama_8b / "o", dtype="bfloat16")
    settings = resolve(spec, facts, sm=75)
    with pytest.raises(
        SpecError, match=r"^bfloat16 needs SM >= 80; t4 \(SM 75\) lacks it, use --dtype float16$"
    ):
        v.validate(settings, facts, Target("t4", 75, "named", None))


def test_default_dtype_follows_checkpoint_then_gpu(write_checkpoint) -> None:  # type: ignore[no-untyped-def]
    fp32 = write_checkpoint("fp32", torch_dtype="float32")
    facts = read_checkpoint(fp32)
    spec = EngineSpec(checkpoint=fp32, out=fp32 / "o")
    assert resolve(spec, facts, sm=90).dtype == "bfloat16"
    assert resolve(spec, facts, sm=75).dtype == "float16"
    bf16 = read_checkpoint(write_checkpoint("bf16"))
    assert resolve(spec, bf16, sm=75).dtype == "bfloat16"  # then the bf16 rule refuses it on SM 75


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"tp": 3},
            "--tp 3 does not divide the model's 32 attention heads; use one of 1, 2, 4, 8, 16, 32",
        ),
        ({"pp": 33}, "--pp 33 exceeds the model's 32 layers; lower --pp"),
        (
            {"max_input_len": 4096, "max_seq_len": 4096},
            "--max-input-len (4096) must be below --max-seq-len (4096) to leave room for output; raise --max-seq-len or lower --max-input-len",
        ),
        (
            {"max_seq_len": 200000},
            "--max-seq-len 200000 exceeds the model's max_position_embeddings (131072); lower --max-seq-len to 131072 or less",
        ),
        (
            {"max_input_len": 8192, "max_seq_len": 16384, "max_num_tokens": 4096},
            "--max-num-tokens (4096) is below --max-input-len (8192), so the longest prompt cannot be prefilled; raise --max-num-tokens to at least --max-input-len",
        ),
    ],
)
def test_model_and_limit_rules(llama_8b: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as exc:
        check(llama_8b, **options)
    assert str(exc.value) == message


def test_tp_that_does_not_fit_kv_heads(write_checkpoint) -> None:  # type: ignore[no-untyped-def]
    ckpt = write_checkpoint(num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(
        SpecError, match=r"^--tp 6 does not fit the model's 4 KV heads .*use one of 1, 2, 4, 12$"
    ):
        check(ckpt, tp=6)
    assert check(ckpt, tp=4) == []
    assert check(ckpt, tp=12) == []  # a multiple of the KV heads: TensorRT-LLM replicates them


def test_chunked_context_allows_short_max_num_tokens(llama_8b: Path) -> None:
    ok = {"max_input_len": 8192, "max_seq_len": 16384, "max_num_tokens": 2048}
    assert check(llama_8b, chunked_context=True, **ok) == []
    with pytest.raises(SpecError, match="^chunked context needs paged context FMHA"):
        check(llama_8b, chunked_context=True, kv_cache_dtype="int8", **ok)


def test_world_size_within_visible_gpus_when_building_here(llama_8b: Path) -> None:
    with pytest.raises(SpecError) as exc:
        check(llama_8b, "h100-sxm", count=2, tp=4)
    assert str(exc.value) == (
        "TP x PP = 4 needs 4 GPUs but 2 h100-sxm are visible here; lower --tp/--pp or build on a "
        "node with enough GPUs"
    )
    assert check(llama_8b, "h100-sxm", count=8, tp=4, pp=2) == []
    assert check(llama_8b, "h100-sxm", tp=8) == []  # planning away from the GPU: no count to check


def test_runtime_specific_rules(llama_8b: Path, write_checkpoint) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        SpecError, match=r"^the portable runtime \(--runtime torch\) has no pipeline parallelism"
    ):
        check(llama_8b, runtime="torch", pp=2)
    with pytest.raises(
        SpecError,
        match=r"^--tp 16 does not divide the model's num_key_value_heads 8; use --tp 1 or 2 or "
        r"4 or 8$",
    ):
        check(llama_8b, runtime="torch", tp=16)
    assert check(llama_8b, runtime="torch", tp=8) == []  # split across processes
    with pytest.raises(
        SpecError, match=r"^the portable runtime \(--runtime torch\) does not quantize"
    ):
        check(llama_8b, runtime="torch", quant="fp8")
    with pytest.raises(SpecError, match="^--runtime llmapi does not quantize weights"):
        check(llama_8b, runtime="llmapi", quant="fp8")
    with pytest.raises(SpecError, match="^the LLM API KV cache is auto or fp8"):
        check(llama_8b, runtime="llmapi", kv_cache_dtype="int8")
    fp8 = write_checkpoint(
        "fp8",
        files={
            "hf_quant_config.json": {
                "producer": {"name": "modelopt", "version": "0.31"},
                "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
            }
        },
    )
    with pytest.raises(
        SpecError,
        match=r"is already quantized \(FP8 in hf_quant_config.json\); serve it with --runtime llmapi",
    ):
        check(fp8)
    assert check(fp8, runtime="llmapi") == []
    with pytest.raises(
        SpecError, match=r"is FP8 \(hf_quant_config.json\), which needs SM >= 89; a100-80gb"
    ):
        check(fp8, "a100-80gb", runtime="llmapi")


def test_nvfp4_needs_blackwell(write_checkpoint) -> None:  # type: ignore[no-untyped-def]
    ckpt = write_checkpoint(
        files={"hf_quant_config.json": {"quantization": {"quant_algo": "NVFP4"}}}
    )
    with pytest.raises(
        SpecError,
        match=r"is NVFP4, which needs SM >= 100 \(Blackwell\); h100-sxm \(SM 90\) cannot run it",
    ):
        check(ckpt, "h100-sxm", runtime="llmapi")
    assert check(ckpt, "b200", runtime="llmapi") == []


def test_kv_cache_notes_and_fmha_flags(llama_8b: Path) -> None:
    notes = check(llama_8b, kv_cache_dtype="int8")
    assert notes == [
        "INT8 KV cache: paged context FMHA is off, so KV-cache reuse and chunked context are "
        "unavailable with this engine"
    ]
    assert check(llama_8b, kv_cache_dtype="fp8") == [
        "FP8 KV cache without FP8 weights: paged context FMHA is off, so KV-cache reuse and chunked "
        "context are unavailable with this engine"
    ]
    facts = read_checkpoint(llama_8b)

    def settings(**o: object):  # type: ignore[no-untyped-def]
        return resolve(EngineSpec(checkpoint=llama_8b, out=llama_8b / "o", **o), facts, sm=90)  # type: ignore[arg-type]

    assert paged_context_fmha(settings(quant="fp8", kv_cache_dtype="fp8"))
    assert fp8_context_fmha(settings(quant="fp8", kv_cache_dtype="fp8"))
    assert not fp8_context_fmha(settings(quant="fp8"))
    assert paged_context_fmha(settings(quant="int4-awq"))


def test_unknown_gpu_lists_known_ones(llama_8b: Path) -> None:
    with pytest.raises(SpecError, match=r"^unknown GPU 'h1000'; known GPUs: .*h100-sxm"):
        check(llama_8b, "h1000")


def test_named_gpu_counts_matching_detected_gpus() -> None:
    target = resolve_target("h100", gpus("h100-sxm", 4))
    assert target == Target("h100-sxm", 90, "named", 4)
    assert resolve_target("a100-80gb", gpus("h100-sxm", 4)) == Target(
        "a100-80gb", 80, "named", None
    )
    assert resolve_target(None, gpus("l40s", 2)) == Target("l40s", 89, "detected", 2)
    assert resolve_target(None, []) is None


def _escape(text: str) -> str:
    import re

    return re.escape(text)
