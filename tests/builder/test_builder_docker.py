"""The container line printed when TensorRT-LLM is not installed."""

from __future__ import annotations

import shlex
from pathlib import Path

from trtbuild.builder.checkpoint import read_checkpoint
from trtbuild.builder.docker import docker_command, source_root
from trtbuild.builder.settings import resolve
from trtbuild.builder.validate import Target
from trtbuild.specs import EngineSpec


def test_full_docker_line(llama_8b: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRTBUILD_HOME", "/home/me/.cache/trtbuild")
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    spec = EngineSpec(
        checkpoint=llama_8b,
        out=tmp_path / "engines" / "llama-fp8",
        tp=2,
        quant="fp8",
        kv_cache_dtype="fp8",
        plan=plan,
        force=True,
    )
    settings = resolve(spec, read_checkpoint(llama_8b), sm=90)
    argv = docker_command(
        spec, settings, Target("h100-sxm", 90, "named", None), src=Path("/src/trtbuild")
    )
    assert argv[:-3] == [
        "docker",
        "run",
        "--gpus",
        "all",
        "--rm",
        "--ipc=host",
        "-v",
        f"{llama_8b}:/models/llama-8b:ro",
        "-v",
        f"{tmp_path / 'engines'}:/engines",
        "-v",
        "/home/me/.cache/trtbuild:/trtbuild-home",
        "-e",
        "TRTBUILD_HOME=/trtbuild-home",
        "-v",
        f"{plan}:/trtbuild-plan.json:ro",
        "-v",
        "/src/trtbuild:/opt/trtbuild-src:ro",
        "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
    ]
    assert argv[-3:-1] == ["bash", "-c"]
    install, run = argv[-1].split(" && trtbuild engine ")
    assert install.endswith("pip install -q --no-deps /tmp/trtbuild")
    assert shlex.split(run) == [
        "/models/llama-8b",
        "--out",
        "/engines/llama-fp8",
        "--runtime",
        "tensorrtllm",
        "--gpu",
        "h100-sxm",
        "--tp",
        "2",
        "--pp",
        "1",
        "--dtype",
        "bfloat16",
        "--quant",
        "fp8",
        "--kv-cache-dtype",
        "fp8",
        "--max-batch-size",
        "16",
        "--max-input-len",
        "1024",
        "--max-seq-len",
        "2048",
        "--max-num-tokens",
        "8192",
        "--calib-size",
        "512",
        "--plan",
        "/trtbuild-plan.json",
        "--force",
    ]


def test_hub_snapshot_mounts_the_repo_folder_and_unknown_gpus_are_not_named(
    tmp_path: Path,
    llama_8b: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr("trtbuild.builder.docker.source_root", lambda: None)  # a wheel install
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.parent.mkdir(parents=True)
    llama_8b.rename(snap)
    spec = EngineSpec(checkpoint=snap, out=tmp_path / "e")
    settings = resolve(spec, read_checkpoint(snap), sm=89)
    argv = docker_command(spec, settings, Target("NVIDIA RTX 6000 Ada", 89, "detected", 1))
    assert f"{tmp_path / 'hub' / 'models--org--m'}:/models/models--org--m:ro" in argv
    assert argv[-1].startswith(
        "pip install -q --no-deps trtbuild==0.1.0 && trtbuild engine "
        "/models/models--org--m/snapshots/abc --out /engines/e --runtime tensorrtllm --tp 1"
    )


def test_source_root_is_this_checkout() -> None:
    root = source_root()
    assert root is not None and (root / "builder" / "docker.py").is_file()
