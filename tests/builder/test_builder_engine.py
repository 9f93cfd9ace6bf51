"""``build_engine`` end to end with fake TensorRT-LLM tools (tests/fakes): plan, run, verify,
manifest, cache, failures."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.builder.builder_fakes import FAKE_TOOLCHAIN
from trtbuild.builder.commands import Tools
from trtbuild.builder.engine import BuildEnv, build_engine
from trtbuild.builder.manifest import read_manifest
from trtbuild.errors import OutputExists, ProcessFailed, SpecError, ToolNotFound
from trtbuild.specs import EngineSpec

LIMITS = {"max_batch_size": 8, "max_input_len": 256, "max_seq_len": 512, "max_num_tokens": 512}


def spec(ckpt: Path, out: Path, **options: object) -> EngineSpec:
    return EngineSpec(checkpoint=ckpt, out=out, **{**LIMITS, **options})  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tp2_build_writes_engine_tokenizer_and_manifest(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    out = tmp_path / "engine"
    result = build_engine(spec(tiny_model, out, tp=2), env=fake_env("h100-sxm", 2))

    assert not result.cache_hit
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "config.json",
        "logs/build.log",
        "logs/convert-rank0.log",
        "logs/convert-rank1.log",
        "rank0.engine",
        "rank1.engine",
        "tokenizer/config.json",
        "tokenizer/generation_config.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "trtbuild-engine.json",
    ]
    m = read_manifest(out)
    assert m.runtime == "tensorrtllm"
    assert (m.gpu.name, m.gpu.sm, m.gpu.compute_capability, m.gpu.source) == (
        "h100-sxm",
        90,
        "9.0",
        "detected",
    )  # type: ignore[union-attr]
    assert m.software.model_dump() == {
        "trtbuild": "0.1.0",
        "tensorrt_llm": "1.2.1",
        "tensorrt": "10.14.1.48",
        "cuda": "13.1",
        "container": "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
    }
    assert (m.parallel.tp, m.parallel.pp, m.parallel.world_size) == (2, 1, 2)
    assert m.dtype == "bfloat16"  # float32 checkpoint, SM 90: bfloat16
    assert m.quantization.model_dump() == {
        "weights": None,
        "kv_cache": None,
        "quant_algo": None,
        "kv_cache_quant_algo": None,
        "prequantized": False,
    }
    assert m.limits.model_dump() == LIMITS
    assert (
        m.features is not None and m.features.paged_context_fmha and not m.features.fp8_context_fmha
    )
    assert m.tokenizer_dir == "tokenizer"
    assert m.source.path == str(tiny_model.resolve())
    assert m.source.files["model.safetensors"] == sha256(tiny_model / "model.safetensors")
    assert m.source.repo_id is None and m.source.revision is None
    assert m.files["rank1.engine"] == sha256(out / "rank1.engine")
    assert "trtbuild-engine.json" not in m.files and "logs/build.log" not in m.files
    assert [(t.phase, t.rank) for t in m.timings] == [
        ("convert", 0),
        ("convert", 1),
        ("build", None),
        ("verify", None),
    ]
    assert all(t.seconds >= 0 for t in m.timings)
    assert [argv[2:4] for argv in m.commands[:2]] == [["convert", "--model_dir"]] * 2
    assert m.commands[0][-2:] == ["--rank", "0"] and m.commands[-1][2] == "--checkpoint_dir"
    assert m.commands[-1][m.commands[-1].index("--output_dir") + 1] == str(out.resolve())
    assert m.settings.tp == 2 and m.spec["tp"] == 2 and m.spec["max_seq_len"] == 512
    assert m.cache_key and len(m.cache_key) == 64
    engine_config = json.loads((out / "config.json").read_text())
    assert engine_config["pretrained_config"]["mapping"]["tp_size"] == 2
    assert "tokenizer_class" in json.loads(
        (out / "tokenizer" / "tokenizer_config.json").read_text()
    )


def test_fp8_with_fp8_kv_cache(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    out = tmp_path / "fp8"
    build_engine(
        spec(tiny_model, out, quant="fp8", kv_cache_dtype="fp8", calib_size=32),
        env=fake_env("h100-sxm"),
    )
    m = read_manifest(out)
    assert m.quantization.model_dump() == {
        "weights": "fp8",
        "kv_cache": "fp8",
        "quant_algo": "FP8",
        "kv_cache_quant_algo": "FP8",
        "prequantized": False,
    }
    assert m.features is not None and m.features.fp8_context_fmha
    assert [t.phase for t in m.timings] == ["quantize", "build", "verify"]
    assert m.settings.calib_size == 32
    assert "--calib_size" in m.commands[0] and "32" in m.commands[0]


def test_int8_kv_cache_on_ampere(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    result = build_engine(
        spec(tiny_model, tmp_path / "e", kv_cache_dtype="int8", pp=2), env=fake_env("a100-80gb", 2)
    )
    m = read_manifest(tmp_path / "e")
    assert m.quantization.kv_cache_quant_algo == "INT8" and m.quantization.quant_algo is None
    assert m.features is not None and not m.features.paged_context_fmha
    assert (m.parallel.pp, m.gpu.sm) == (2, 80)  # type: ignore[union-attr]
    assert result.notes == [
        "INT8 KV cache: paged context FMHA is off, so KV-cache reuse and "
        "chunked context are unavailable with this engine"
    ]


def test_second_build_is_a_cache_hit_without_running_anything(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    first = build_engine(spec(tiny_model, tmp_path / "a", tp=2), env=fake_env("h100-sxm", 2))
    broken = BuildEnv(
        gpus=fake_env("h100-sxm", 2).gpus,
        toolchain=FAKE_TOOLCHAIN.__class__(
            **{
                **FAKE_TOOLCHAIN.__dict__,
                "tools": Tools(
                    convert=("/nonexistent/convert",), trtllm_build=("/nonexistent/build",)
                ),
            }
        ),
    )
    second = build_engine(spec(tiny_model, tmp_path / "b", tp=2), env=broken)
    assert second.cache_hit and not first.cache_hit
    assert "cache hit" in second.summary()
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert a == b
    for name in a.files:
        assert sha256(tmp_path / "b" / name) == a.files[name]
    # a setting that changes the engine misses (and so does --no-cache)
    with pytest.raises(ToolNotFound):
        build_engine(spec(tiny_model, tmp_path / "c", tp=2, max_batch_size=4), env=broken)
    with pytest.raises(ToolNotFound):  # --no-cache
        build_engine(spec(tiny_model, tmp_path / "d", tp=2, use_cache=False), env=broken)


def test_cache_key_changes_with_sm_and_version(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    a = read_manifest(
        build_engine(spec(tiny_model, tmp_path / "a"), env=fake_env("h100-sxm")).out_dir
    )
    b = read_manifest(build_engine(spec(tiny_model, tmp_path / "b"), env=fake_env("l40s")).out_dir)
    newer = BuildEnv(
        gpus=fake_env("h100-sxm").gpus,
        toolchain=FAKE_TOOLCHAIN.__class__(
            **{**FAKE_TOOLCHAIN.__dict__, "trtllm_version": "1.2.0"}
        ),
    )
    c = build_engine(spec(tiny_model, tmp_path / "c"), env=newer)
    assert not c.cache_hit
    assert len({a.cache_key, b.cache_key, read_manifest(tmp_path / "c").cache_key}) == 3


def test_failing_convert_rank_names_phase_rank_and_log_tail(
    tiny_model: Path,
    tmp_path: Path,
    fake_env: Callable[..., BuildEnv],
    monkeypatch: pytest.MonkeyPatch,
    _own_cache: Path,
) -> None:
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "convert:1")
    out = tmp_path / "engine"
    with pytest.raises(ProcessFailed) as exc:
        build_engine(spec(tiny_model, out, tp=2), env=fake_env("h100-sxm", 2))
    err = exc.value
    assert err.message.startswith("convert (rank 1 of 2) failed with exit code 1: ")
    assert err.message.endswith("--tp_size 2 --pp_size 1 --rank 1")
    assert err.details is not None
    assert "rank 1: CUDA out of memory (FAKE failure)" in err.details
    log = Path(err.details.splitlines()[-1].removeprefix("full log: "))
    assert log.parent == _own_cache / "logs" and "FAKE failure" in log.read_text()
    assert not out.exists() and list(tmp_path.glob(".engine*")) == []  # nothing half-written


def test_failing_build_rank(
    tiny_model: Path,
    tmp_path: Path,
    fake_env: Callable[..., BuildEnv],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "build:1")
    with pytest.raises(ProcessFailed) as exc:
        build_engine(spec(tiny_model, tmp_path / "engine", tp=2), env=fake_env("h100-sxm", 2))
    assert exc.value.message.startswith("build (rank 1 of 2) failed with exit code 1: ")
    assert "rank 1: builder ran out of GPU memory (FAKE failure)" in (exc.value.details or "")
    assert not (tmp_path / "engine").exists()


def test_failing_quantize(
    tiny_model: Path,
    tmp_path: Path,
    fake_env: Callable[..., BuildEnv],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "quantize")
    with pytest.raises(ProcessFailed, match=r"^quantize \(1 rank\) failed with exit code 1"):
        build_engine(spec(tiny_model, tmp_path / "e", quant="fp8"), env=fake_env("h100-sxm"))


def test_engine_whose_files_disagree_with_the_plan_is_refused(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    # a "trtllm-build" that exits 0 without writing rank1.engine (as a crashed worker can)
    quiet = tmp_path / "fake_trtllm-build-skips-rank1"
    quiet.write_text(
        "import runpy, sys, pathlib\n"
        f"sys.argv[0] = {str(FAKE_TOOLCHAIN.tools.trtllm_build[1])!r}\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--output_dir') + 1])\n"
        "(out / 'rank1.engine').unlink()\n"
    )
    toolchain = FAKE_TOOLCHAIN.__class__(
        **{
            **FAKE_TOOLCHAIN.__dict__,
            "tools": Tools(
                convert=FAKE_TOOLCHAIN.tools.convert,
                trtllm_build=(FAKE_TOOLCHAIN.tools.trtllm_build[0], str(quiet)),
            ),
        }
    )
    from trtbuild.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match=r"lacks rank1\.engine \(ranks missing: 1\)$"):
        build_engine(
            spec(tiny_model, tmp_path / "e", tp=2),
            env=BuildEnv(gpus=fake_env("h100-sxm", 2).gpus, toolchain=toolchain),
        )


def test_missing_tensorrt_llm_gives_the_container_line(
    tiny_model: Path, tmp_path: Path, no_gpu_env: BuildEnv, _own_cache: Path
) -> None:
    out = tmp_path / "engine"
    with pytest.raises(ToolNotFound) as exc:
        build_engine(spec(tiny_model, out, gpu="h100-sxm", tp=2), env=no_gpu_env)
    assert exc.value.exit_code == 2
    assert exc.value.message == (
        "TensorRT-LLM not found. Engines are built inside "
        "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 (TensorRT-LLM 1.2.1) on a machine "
        "with the target GPU; run this there:"
    )
    line = exc.value.details or ""
    assert line.startswith("docker run --gpus all --rm --ipc=host -v ")
    assert f"-v {tiny_model}:/models/model:ro" in line
    assert f"-v {tmp_path}:/engines" in line
    assert "-e TRTBUILD_HOME=/trtbuild-home" in line and f"-v {_own_cache}:/trtbuild-home" in line
    assert (
        "trtbuild engine /models/model --out /engines/engine --runtime tensorrtllm --gpu h100-sxm "
        "--tp 2 --pp 1 --dtype bfloat16 --max-batch-size 8 --max-input-len 256 "
        "--max-seq-len 512 --max-num-tokens 512"
    ) in line
    assert not out.exists()


def test_missing_tensorrt_llm_still_serves_cache_hits(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    build_engine(
        spec(tiny_model, tmp_path / "a"), env=fake_env("h100-sxm")
    )  # built "in the container"
    hit = build_engine(
        spec(tiny_model, tmp_path / "b", gpu="h100-sxm"), env=fake_env("h100-sxm", toolchain=False)
    )
    assert hit.cache_hit


def test_dry_run_plans_without_gpu_or_tensorrt_llm(
    tiny_model: Path, tmp_path: Path, no_gpu_env: BuildEnv
) -> None:
    out = tmp_path / "engine"
    result = build_engine(
        spec(tiny_model, out, gpu="h100-sxm", tp=2, quant="fp8", dry_run=True), env=no_gpu_env
    )
    assert result.dry_run and not out.exists()
    assert [argv[3] for argv in result.commands[:1]] == ["quantize"]
    assert result.commands[-1][0] == "trtllm-build"
    text = result.summary()
    assert text.splitlines()[0] == (
        f"# plan for {out}: tensorrtllm, h100-sxm (SM 90), TP 2 x PP 1, bfloat16, fp8 weights"
    )
    assert text.splitlines()[-1] == f"# then: verify, write {out}/trtbuild-engine.json"


def test_no_gpu_and_no_name(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv], no_gpu_env: BuildEnv
) -> None:
    with pytest.raises(
        SpecError,
        match=r"^no NVIDIA GPU detected and no --gpu given; name the target GPU with --gpu \(known: a100-40gb, ",
    ):
        build_engine(spec(tiny_model, tmp_path / "e", dry_run=True), env=no_gpu_env)
    with pytest.raises(
        ToolNotFound
    ):  # not a dry run, and no TensorRT-LLM either: the container line
        build_engine(spec(tiny_model, tmp_path / "e"), env=no_gpu_env)


def test_engines_are_built_on_their_gpu(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    with pytest.raises(SpecError) as exc:
        build_engine(spec(tiny_model, tmp_path / "e", gpu="h100-sxm"), env=fake_env("a100-80gb"))
    assert str(exc.value) == (
        "engines are built on the GPU they run on: h100-sxm (SM 90) is not on this machine "
        "(NVIDIA A100-SXM4-80GB (SM 80)); build on a h100-sxm, or use --dry-run"
    )


def test_never_overwrites_without_force(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    out = tmp_path / "engine"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExists):
        build_engine(spec(tiny_model, out), env=fake_env())
    assert (out / "mine.txt").read_text() == "keep me"
    build_engine(spec(tiny_model, out, force=True), env=fake_env())
    assert not (out / "mine.txt").exists() and (out / "rank0.engine").is_file()


def test_plan_file_fills_unset_options(
    tiny_model: Path, tmp_path: Path, fake_env: Callable[..., BuildEnv]
) -> None:
    from trtbuild.plan import plan_from_spec
    from trtbuild.specs import PlanRequest, PlanSpec

    made = plan_from_spec(
        PlanSpec(model=str(tiny_model), gpu="h100-sxm", request=PlanRequest(max_input_len=128))
    )
    limits = {"max_batch_size": 32, "max_input_len": 128, "max_seq_len": 1024}
    chosen = made.model_copy(
        update={
            "tp": 2,
            "pp": 1,
            "max_num_tokens": 256,
            "quant": "none",
            **limits,
            "kv_cache_dtype": "fp8",
            "dtype": "float16",
        }  # fmt: skip
    )
    plan = tmp_path / "plan.json"
    plan.write_text(chosen.model_dump_json())
    result = build_engine(
        EngineSpec(
            checkpoint=tiny_model, out=tmp_path / "e", plan=plan, max_batch_size=4, dry_run=True
        ),
        env=fake_env("h100-sxm", 2),
    )
    s = result.settings
    assert (s.tp, s.dtype, s.quant, s.kv_cache_dtype) == (2, "float16", None, "fp8")
    assert s.limits.model_dump() == {
        "max_batch_size": 4,
        "max_input_len": 128,
        "max_seq_len": 1024,
        "max_num_tokens": 256,
    }
    assert result.target is not None and result.target.source == "named"


def test_bad_checkpoint_is_a_user_error(tmp_path: Path, fake_env: Callable[..., BuildEnv]) -> None:
    with pytest.raises(SpecError, match="is not a directory"):
        build_engine(spec(tmp_path / "nope", tmp_path / "e"), env=fake_env())
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SpecError, match="has no config.json; pass a Hugging Face checkpoint directory$"
    ):
        build_engine(spec(tmp_path / "empty", tmp_path / "e"), env=fake_env())
    assert not os.path.exists(tmp_path / "e")
