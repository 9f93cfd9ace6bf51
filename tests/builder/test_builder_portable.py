"""The portable-runtime engine (``--runtime torch``), for real: dtype cast, safetensors, tokenizer,
manifest, cache; loaded back with transformers and compared with the source checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.builder.builder_fakes import trtbuild_main
from tests.conftest import Reference
from trtbuild.builder.engine import prepare_portable_engine
from trtbuild.builder.manifest import read_manifest
from trtbuild.errors import SpecError


def test_cli_builds_a_portable_engine_that_generates_like_the_source(
    tiny_model: Path, tmp_path: Path, runner: CliRunner, reference: Reference
) -> None:
    out = tmp_path / "engine"
    result = runner.invoke(
        trtbuild_main,
        [
            "engine",
            str(tiny_model),
            "--out",
            str(out),
            "--runtime",
            "torch",
            "--max-seq-len",
            "1024",
            "--max-input-len",
            "512",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Engine ready: {out} (torch, TP 1 x PP 1, auto; built in ")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "trtbuild-engine.json",
    ]
    m = read_manifest(out)
    assert (m.runtime, m.dtype, m.gpu, m.tokenizer_dir, m.features) == (
        "torch",
        "auto",
        None,
        ".",
        None,
    )
    assert m.limits.max_seq_len == 1024 and m.limits.max_input_len == 512
    for name, digest in m.files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert (
        m.files["model.safetensors"] == m.source.files["model.safetensors"]
    )  # not cast: same bytes
    assert [t.phase for t in m.timings] == ["write"]

    prompt = "the model server token"
    assert Reference(out).greedy(prompt, 6) == reference.greedy(prompt, 6)

    again = runner.invoke(
        trtbuild_main,
        [
            "engine",
            str(tiny_model),
            "--out",
            str(tmp_path / "again"),
            "--runtime",
            "torch",
            "--max-seq-len",
            "1024",
            "--max-input-len",
            "512",
        ],
    )
    assert again.exit_code == 0 and "; cache hit in " in again.stdout
    assert read_manifest(tmp_path / "again") == m


def test_dtype_cast_and_tokenizer_normalisation(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "src"
    src.mkdir()
    for p in tiny_model.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "TokenizersBackend"  # what transformers 5 writes
    (src / "tokenizer_config.json").write_text(json.dumps(config))

    out = prepare_portable_engine(src, tmp_path / "fp16", dtype="float16")
    cast, original = (
        load_file(str(out / "model.safetensors")),
        load_file(str(src / "model.safetensors")),
    )
    assert set(cast) == set(original)
    for name, tensor in cast.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, original[name].to(torch.float16))
    assert (
        json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    assert (
        json.loads((src / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "TokenizersBackend"
    )
    assert read_manifest(out).dtype == "float16"


def test_portable_needs_safetensors_and_a_fast_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "bin"
    src.mkdir()
    (src / "config.json").write_text((tiny_model / "config.json").read_text())
    (src / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SpecError, match=r"has no \*\.safetensors weights; convert \.bin weights"):
        prepare_portable_engine(src, tmp_path / "e")
    (src / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        SpecError, match=r"has no tokenizer\.json \(a fast tokenizer is required\)$"
    ):
        prepare_portable_engine(src, tmp_path / "e")
    assert not (tmp_path / "e").exists()
