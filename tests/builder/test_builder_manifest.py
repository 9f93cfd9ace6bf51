"""The manifest and the compatibility gate that serve and repo call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtbuild.builder.manifest import (
    MANIFEST,
    GpuRecord,
    Manifest,
    QuantRecord,
    ServingHost,
    SoftwareRecord,
    SourceRecord,
    check_compatible,
    read_manifest,
    write_manifest,
)
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import IncompatibleArtifact, SpecError
from trtbuild.specs import Limits

LIMITS = Limits(max_batch_size=8, max_input_len=256, max_seq_len=512, max_num_tokens=512)
H100 = ServingHost(
    sm=90, gpu_name="h100-sxm", trtllm_version="1.2.1", tensorrt_version="10.14.1.48"
)


def manifest(runtime: str = "tensorrtllm", **changes: object) -> Manifest:
    base = Manifest(
        runtime=runtime,  # type: ignore[arg-type]
        created="2026-08-01T00:00:00+00:00",
        gpu=GpuRecord(name="h100-sxm", sm=90, compute_capability="9.0", source="detected"),
        software=SoftwareRecord(trtbuild="0.1.0", tensorrt_llm="1.2.1", tensorrt="10.14.1.48"),
        dtype="bfloat16",
        limits=LIMITS,
        source=SourceRecord(path="/models/x"),
        settings=BuildSettings(runtime=runtime, dtype="bfloat16", limits=LIMITS),  # type: ignore[arg-type]
    )
    return base.model_copy(update=changes)


def test_round_trip(tmp_path: Path) -> None:
    m = manifest()
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["gpu"]["sm"] == 90 and data["software"]["tensorrt_llm"] == "1.2.1"


def test_same_gpu_and_versions_pass() -> None:
    assert check_compatible(manifest(), H100) == []


def test_other_sm_is_refused_naming_both() -> None:
    l40s = ServingHost(sm=89, gpu_name="l40s", trtllm_version="1.2.1")
    with pytest.raises(IncompatibleArtifact) as exc:
        check_compatible(manifest(), l40s, where=Path("/e"))
    assert exc.value.exit_code == 2
    assert str(exc.value) == (
        "engine /e: built for h100-sxm (SM 90) but this GPU is l40s (SM 89). Rebuild it with "
        "'trtbuild engine' on the serving GPU and container, or pass --force to try anyway"
    )


def test_other_versions_are_refused_and_force_returns_them() -> None:
    runtime = ServingHost(sm=90, trtllm_version="1.2.0", tensorrt_version="10.13.3.9")
    with pytest.raises(
        IncompatibleArtifact,
        match=(
            r"^the engine: built with TensorRT-LLM 1\.2\.1 but the runtime has 1\.2\.0; built with "
            r"TensorRT 10\.14\.1\.48 but the runtime has 10\.13\.3\.9\. Rebuild"
        ),
    ):
        check_compatible(manifest(), runtime)
    assert check_compatible(manifest(), runtime, force=True) == [
        "built with TensorRT-LLM 1.2.1 but the runtime has 1.2.0",
        "built with TensorRT 10.14.1.48 but the runtime has 10.13.3.9",
    ]


def test_unknown_runtime_facts_are_not_checked() -> None:
    assert check_compatible(manifest(), ServingHost()) == []


def test_portable_engines_run_anywhere() -> None:
    assert (
        check_compatible(manifest("torch", gpu=None), ServingHost(sm=75, trtllm_version="0.9"))
        == []
    )


def test_llmapi_checks_quantization_against_the_gpu() -> None:
    fp8 = manifest(
        "llmapi", quantization=QuantRecord(weights="FP8", quant_algo="FP8", prequantized=True)
    )
    assert check_compatible(fp8, ServingHost(sm=89, trtllm_version="1.0.0")) == []  # no SM lock
    with pytest.raises(
        IncompatibleArtifact,
        match=r"^the engine: needs SM >= 89 for FP8 weights but this GPU is a100-80gb \(SM 80\)",
    ):
        check_compatible(fp8, ServingHost(sm=80, gpu_name="a100-80gb"))
    nvfp4 = manifest("llmapi", quantization=QuantRecord(quant_algo="NVFP4"))
    assert check_compatible(nvfp4, ServingHost(sm=90), force=True) == [
        "needs SM >= 100 for NVFP4 weights but this GPU is SM 90"
    ]


def test_missing_newer_and_broken_manifests(tmp_path: Path) -> None:
    with pytest.raises(
        SpecError, match=r"has no trtbuild-engine\.json; build it with 'trtbuild engine'"
    ):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(IncompatibleArtifact, match="has format 99, newer than this trtbuild reads"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_bytes(b"\xff{")
    with pytest.raises(
        SpecError, match=r"is not valid JSON \('utf-8' codec.*; rebuild the engine$"
    ):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "runtime": "tensorrtllm"}))
    with pytest.raises(SpecError, match=r"invalid created: Field required; rebuild the engine$"):
        read_manifest(tmp_path)


def test_unknown_keys_from_a_later_trtbuild_are_tolerated(tmp_path: Path) -> None:
    data = json.loads(manifest().model_dump_json())
    data["something_new"] = {"x": 1}
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    assert read_manifest(tmp_path) == manifest()


def test_check_engine_dir_is_the_one_call_for_serve_and_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtbuild.builder import manifest as mod

    write_manifest(tmp_path, manifest())
    assert mod.check_engine_dir(tmp_path, runtime=H100) == (manifest(), [])
    monkeypatch.setattr(mod, "detect_host", lambda: ServingHost(sm=80, gpu_name="a100-80gb"))
    with pytest.raises(
        IncompatibleArtifact,
        match=rf"^engine {tmp_path}: built for h100-sxm \(SM 90\) but this GPU is a100-80gb \(SM 80\)\.",
    ):
        mod.check_engine_dir(tmp_path)
    assert mod.check_engine_dir(tmp_path, force=True)[1] == [
        "built for h100-sxm (SM 90) but this GPU is a100-80gb (SM 80)"
    ]


# -- what a portable engine records ----------------------------------------------------------------
def test_portable_engine_records_torch_transformers_and_its_hash(
    tiny_model: Path, tmp_path: Path
) -> None:
    import hashlib
    from importlib import metadata

    from trtbuild.builder.engine import prepare_portable_engine

    out = prepare_portable_engine(tiny_model, tmp_path / "engine", dtype="bfloat16")
    data = json.loads((out / MANIFEST).read_text())
    assert data["hash"] == "sha256"
    assert data["software"]["torch"] == metadata.version("torch")
    assert data["software"]["transformers"] == metadata.version("transformers")
    # the named algorithm is the one the digests were made with
    assert data["files"]
    for rel, digest in data["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    m = read_manifest(out)
    assert (m.hash, m.software.torch) == ("sha256", metadata.version("torch"))


def test_manifests_from_before_the_hash_field_read_as_sha256(tmp_path: Path) -> None:
    data = json.loads(manifest().model_dump_json())
    del data["hash"]
    assert "torch" not in data["software"]  # only portable engines record it
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    read = read_manifest(tmp_path)
    assert read.hash == "sha256" and read.software.torch is None


def test_a_manifest_naming_another_hash_is_refused(tmp_path: Path) -> None:
    data = json.loads(manifest().model_dump_json())
    data["hash"] = "md5"
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"invalid hash: Input should be 'sha256'"):
        read_manifest(tmp_path)
