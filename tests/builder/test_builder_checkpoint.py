"""Checkpoint facts, Hub-cache identity and hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from trtbuild.builder.checkpoint import hash_tree, mount_root, read_checkpoint, source_info
from trtbuild.errors import SpecError
from trtbuild.files.hf import file_sha256
from trtbuild.files.hf import parse_snapshot as hub_snapshot


def test_facts_from_the_tiny_model(tiny_model: Path) -> None:
    facts = read_checkpoint(tiny_model)
    assert (
        facts.architecture,
        facts.num_attention_heads,
        facts.num_key_value_heads,
        facts.num_hidden_layers,
        facts.max_position_embeddings,
    ) == ("LlamaForCausalLM", 4, 2, 4, 2048)
    assert (
        facts.has_tokenizer and facts.weights == ("model.safetensors",) and facts.prequant is None
    )


def test_multimodal_text_config_and_bad_configs(tmp_path: Path) -> None:
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    text = {
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "num_hidden_layers": 8,
        "hidden_size": 1024,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    }
    (vlm / "config.json").write_text(json.dumps({"architectures": ["Foo"], "text_config": text}))
    facts = read_checkpoint(vlm)
    assert (facts.num_attention_heads, facts.num_key_value_heads, facts.num_hidden_layers) == (
        16,
        4,
        8,
    )
    (vlm / "config.json").write_text(json.dumps({**text, "num_hidden_layers": 0}))
    with pytest.raises(
        SpecError,
        match=r"config\.json: invalid num_layers: Input should be greater than or equal to 1$",
    ):
        read_checkpoint(vlm)
    (vlm / "config.json").write_text(json.dumps({**text, "num_attention_heads": None}))
    with pytest.raises(SpecError, match=r"^.*vlm: config\.json has no attention head count"):
        read_checkpoint(vlm)
    (vlm / "config.json").write_text("{")
    with pytest.raises(SpecError, match="is not valid JSON"):
        read_checkpoint(vlm)


def test_download_record_gives_identity_and_trusted_hashes(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    big = os.urandom(2 << 20)
    (ckpt / "model.safetensors").write_bytes(big)
    (ckpt / "config.json").write_text("{}")
    recorded = "ab" * 32  # not the real hash: proves the record is used instead of reading
    from trtbuild.files.checkpoint_manifest import (
        CheckpointManifest,
        FileEntry,
        read_model_facts,
        write_checkpoint_manifest,
    )

    facts = read_model_facts("meta-llama/Llama-3.1-8B")  # any valid facts: not what is tested
    entries = [
        FileEntry(path="model.safetensors", size=len(big), sha256=recorded),
        FileEntry(path="config.json", size=2, sha256="cd" * 32),
    ]
    manifest = CheckpointManifest(
        repo_id="org/m", revision="main", commit="c" * 40, files=entries, model=facts
    )
    write_checkpoint_manifest(ckpt, manifest)
    info = source_info(ckpt)
    assert (info.repo_id, info.revision) == ("org/m", "c" * 40)
    assert info.files == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),  # small: always read
        "model.safetensors": recorded,
    }
    later = (ckpt / "trtbuild-checkpoint.json").stat().st_mtime + 10
    os.utime(ckpt / "model.safetensors", (later, later))  # modified after the download
    assert source_info(ckpt).files["model.safetensors"] == hashlib.sha256(big).hexdigest()


def test_hub_cache_snapshot_identity_and_blob_hashes(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    content = b"weights" * 100
    digest = hashlib.sha256(content).hexdigest()
    (repo / "blobs" / digest).write_bytes(content)
    (snap / "model.safetensors").symlink_to(Path("../../blobs") / digest)
    (repo / "blobs" / ("f" * 40)).write_text("{}")  # a small file: git blob id, not a sha256
    (snap / "config.json").symlink_to(Path("../../blobs") / ("f" * 40))
    assert hub_snapshot(snap) == ("meta-llama/Llama-3.1-8B", "a" * 40)
    assert mount_root(snap) == repo
    info = source_info(snap)
    assert info.repo_id == "meta-llama/Llama-3.1-8B" and info.revision == "a" * 40
    assert info.files == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),
        "model.safetensors": digest,
    }
    (repo / "blobs" / digest).write_bytes(b"changed")  # trusted by its name: never read
    assert file_sha256(snap / "model.safetensors") == digest


def test_hash_tree_skips_hidden_and_named(tmp_path: Path) -> None:
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "x.lock").write_text("x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "build.log").write_text("log")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    assert hash_tree(tmp_path, skip=("logs",)) == {"sub/a.txt": hashlib.sha256(b"a").hexdigest()}
    assert hub_snapshot(tmp_path) == (None, None) and mount_root(tmp_path) == tmp_path
