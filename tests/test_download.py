"""``trtbuild download`` against a local fake Hub (tests/hub_server.py), offline mode and local paths.

No network beyond 127.0.0.1: HF_ENDPOINT points at the fake Hub and HF_HOME at a temp dir.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tests.hub_server import FakeHub, FakeRepo, serve_hub
from trtbuild.download import select_files
from trtbuild.errors import SpecError
from trtbuild.files.checkpoint_manifest import CHECKPOINT_MANIFEST
from trtbuild.files.checkpoint_manifest import read_checkpoint_manifest as read_manifest

REPO = "acme/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SERVING = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
           "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
SECRET = "hf_trtbuildTestSecretToken0123456789"


def run_main(runner: CliRunner, *args: str) -> Result:
    """Invoke ``trtbuild.cli.main`` (the real error handler and exit codes)."""
    from trtbuild.cli import main

    @click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def entry(argv: tuple[str, ...]) -> None:
        main(list(argv))

    return runner.invoke(entry, list(args))


@pytest.fixture(scope="session")
def repo_files(tiny_model: Path) -> dict[str, bytes]:
    """The tiny model as a Hub repo, with the duplicates real repos carry."""
    files = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
    assert sorted(files) == SERVING
    files["pytorch_model.bin"] = b"the same weights, pickled" * 64
    files["original/consolidated.00.pth"] = b"the same weights, Meta format" * 64
    files["README.md"] = b"# tiny llama\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


@pytest.fixture
def hub(
    repo_files: dict[str, bytes], hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    with serve_hub() as hub:
        hub.add(REPO, FakeRepo(files=dict(repo_files), commit=COMMIT))
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def snapshot(hf_home: Path, commit: str = COMMIT) -> Path:
    return hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit


def all_manifests(root: Path) -> list[Path]:
    return list(root.rglob(CHECKPOINT_MANIFEST))


# -- the happy path -----------------------------------------------------------------------------
def test_download_fetches_only_what_serving_needs(
    runner: CliRunner, hub: FakeHub, hf_home: Path, repo_files: dict[str, bytes]
) -> None:
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == snapshot(hf_home).resolve() or path == snapshot(hf_home)
    assert sorted(set(hub.file_gets())) == SERVING  # no .bin, .pth, README
    assert f"{REPO} @ {COMMIT}: 6 files" in result.stderr and "sha256 verified" in result.stderr

    manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    assert (manifest["repo_id"], manifest["revision"], manifest["commit"]) == (REPO, "main", COMMIT)
    assert [f["path"] for f in manifest["files"]] == SERVING
    for entry in manifest["files"]:
        data = repo_files[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    model = manifest["model"]
    assert (model["name"], model["architecture"], model["num_layers"], model["hidden_size"]) == (
        REPO, "LlamaForCausalLM", 4, 128)  # fmt: skip
    assert (model["num_attention_heads"], model["num_kv_heads"], model["head_dim"]) == (4, 2, 32)
    assert (model["dtype"], model["num_experts"], model["quantization"]) == ("float32", 0, None)


def test_revision_is_resolved_to_a_commit(runner: CliRunner, hub: FakeHub, hf_home: Path) -> None:
    other = "fedcba9876543210fedcba9876543210fedcba98"
    hub.repos[REPO].branches["v1.0"] = other
    hub.repos[REPO].commit = other  # the server serves one file set; the commit is what matters
    result = run_main(runner, "download", REPO, "--revision", "v1.0")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(Path(result.stdout.strip()))
    assert manifest is not None
    assert (manifest.revision, manifest.commit) == ("v1.0", other)
    assert Path(result.stdout.strip()).name == other


def test_all_weights_fetches_the_duplicates(runner: CliRunner, hub: FakeHub) -> None:
    result = run_main(runner, "download", REPO, "--all-weights")
    assert result.exit_code == 0, result.output
    assert {"pytorch_model.bin", "original/consolidated.00.pth"} <= set(hub.file_gets())


def test_plan_reads_the_downloaded_checkpoint(runner: CliRunner, hub: FakeHub) -> None:
    path = run_main(runner, "download", REPO).stdout.strip()
    result = run_main(runner, "plan", path, "--gpu", "l4", "--max-input-len", "512", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == REPO


# -- local dir, resume, refusal ----------------------------------------------------------------------
def test_local_dir_and_resume(runner: CliRunner, hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    result = run_main(runner, "download", REPO, "--local-dir", str(out))
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == out.resolve()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*SERVING, CHECKPOINT_MANIFEST])  # fmt: skip

    (out / "tokenizer.json").unlink()  # an interrupted earlier run
    before = len(hub.requests)
    result = run_main(runner, "download", REPO, "--local-dir", str(out))
    assert result.exit_code == 0, result.output
    fetched = [r.path for r in hub.requests[before:] if r.method == "GET" and "/resolve/" in r.path]
    assert len(fetched) == 1 and fetched[0].endswith("/tokenizer.json")
    assert read_manifest(out) is not None


def test_local_dir_with_someone_elses_files_needs_force(
    runner: CliRunner, hub: FakeHub, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_main(runner, "download", REPO, "--local-dir", str(out))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: {out.resolve()} exists and is not empty; pass --force to replace it.\n"
    )
    assert hub.file_gets() == []
    result = run_main(runner, "download", REPO, "--local-dir", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "keep me"


# -- errors -----------------------------------------------------------------------------------------
def test_missing_repo(runner: CliRunner, hub: FakeHub) -> None:
    result = run_main(runner, "download", "acme/nope")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: repository acme/nope not found on {hub.url} (or it is private)"
    )


def test_missing_revision(runner: CliRunner, hub: FakeHub) -> None:
    result = run_main(runner, "download", REPO, "--revision", "v9")
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: revision 'v9' not found in {REPO}; see {hub.url}/{REPO}/tree/main.\n"
    )


def test_gated_repo_gives_the_access_link_and_writes_nothing(
    runner: CliRunner, hub: FakeHub, hf_home: Path, repo_files: dict[str, bytes]
) -> None:
    hub.add("meta/gated", FakeRepo(files=dict(repo_files), gated=True, token=SECRET))
    result = run_main(runner, "download", "meta/gated")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: meta/gated is gated: request access at {hub.url}/meta/gated, then set HF_TOKEN "
        "or run 'hf auth login'."
    )
    assert all_manifests(hf_home) == []


def test_token_is_used_but_never_written(
    runner: CliRunner, hub: FakeHub, hf_home: Path, tmp_path: Path, repo_files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    hub.add("meta/gated", FakeRepo(files=dict(repo_files), gated=True, token=SECRET))
    monkeypatch.setenv("HF_TOKEN", "hf_wrongToken")
    result = run_main(runner, "download", "meta/gated")
    assert result.exit_code == 2 and "is gated" in result.stderr  # 403: not on the list

    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = tmp_path / "gated"
    for args in ([], ["--local-dir", str(out)]):
        result = run_main(runner, "download", "meta/gated", *args)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
    assert any(r.headers.get("authorization") == f"Bearer {SECRET}" for r in hub.requests)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 12
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


def test_no_network_suggests_offline_mode(
    runner: CliRunner, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach http://127.0.0.1:{port} (")
    assert "set HF_HUB_OFFLINE=1 to use it" in result.stderr


def test_disk_full_before_download(runner: CliRunner, hub: FakeHub, hf_home: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr("trtbuild.download._free_bytes", lambda path: 1000)
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 2
    assert "GB to download but 0.0 GB free at" in result.stderr and "--local-dir" in result.stderr
    assert hub.file_gets() == [] and all_manifests(hf_home) == []


def test_disk_full_midway_leaves_nothing_that_looks_complete(
    runner: CliRunner, hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.file_download as fd

    def full(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(fd, "_chmod_and_move", full)
        result = run_main(runner, "download", REPO)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: no space left on device while downloading {REPO}; partial files are kept"
    )
    assert all_manifests(hf_home) == []
    result = run_main(runner, "download", REPO)  # space freed: the next run completes
    assert result.exit_code == 0, result.output
    assert read_manifest(snapshot(hf_home)) is not None


# -- offline ----------------------------------------------------------------------------------------
def test_offline_uses_the_cache(
    runner: CliRunner, hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_main(runner, "download", REPO)
    assert first.exit_code == 0, first.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 0, result.output
    assert result.stdout == first.stdout
    assert len(hub.requests) == before  # not one request
    manifest = read_manifest(Path(result.stdout.strip()))
    assert manifest is not None and manifest.commit == COMMIT


def test_offline_with_a_cache_made_by_an_older_client(
    runner: CliRunner, hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cached tree listing (huggingface_hub < 1.x did not write one): list the snapshot."""
    assert run_main(runner, "download", REPO).exit_code == 0
    tree = hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "trees" / f"{COMMIT}.json"
    tree.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(Path(result.stdout.strip()))
    assert manifest is not None and [f.path for f in manifest.files] == SERVING


def test_offline_without_a_cached_copy(
    runner: CliRunner, hub: FakeHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: HF_HUB_OFFLINE is set and {REPO}@main is not in the cache"
    )
    assert "unset HF_HUB_OFFLINE to download it" in result.stderr
    assert hub.requests == []


# -- local checkpoints ------------------------------------------------------------------------------
@pytest.fixture
def local_model(tiny_model: Path, tmp_path: Path) -> Path:
    model = tmp_path / "my-model"
    shutil.copytree(tiny_model, model)
    (model / "pytorch_model.bin").write_bytes(b"duplicate")
    return model


def test_local_path_gets_a_manifest_in_place(
    runner: CliRunner, local_model: Path, hf_home: Path
) -> None:
    result = run_main(runner, "download", str(local_model))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(local_model)
    manifest = read_manifest(local_model)
    assert manifest is not None
    assert (manifest.repo_id, manifest.commit, manifest.source_dir) == (
        None,
        None,
        str(local_model),
    )
    assert [f.path for f in manifest.files] == SERVING
    assert manifest.model.name == "my-model"
    assert not (hf_home / "hub").exists()


def test_local_path_copied_to_local_dir(
    runner: CliRunner, local_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    result = run_main(runner, "download", str(local_model), "--local-dir", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*SERVING, CHECKPOINT_MANIFEST])
    assert not (local_model / CHECKPOINT_MANIFEST).exists()
    result = run_main(runner, "download", str(local_model), "--local-dir", str(out))
    assert result.exit_code == 2 and "pass --force to replace it" in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "./no-such-dir",
            "Error: ./no-such-dir is not a checkpoint directory (and not a Hub repo id).\n",
        ),
        (
            "not a repo",
            "Error: 'not a repo' is not a Hub repo id (owner/name) nor an existing directory.\n",
        ),
    ],
)
def test_bad_sources(runner: CliRunner, hf_home: Path, source: str, message: str) -> None:
    result = run_main(runner, "download", source)
    assert result.exit_code == 2
    assert result.stderr == message


def test_local_dir_without_config(runner: CliRunner, tmp_path: Path) -> None:
    result = run_main(runner, "download", str(tmp_path))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: {tmp_path} has no config.json; it is not a transformers checkpoint.\n"
    )


# -- file selection (pure) --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"],
         ["config.json", "model.safetensors", "tokenizer.json"]),
        (["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
          "model.safetensors.index.json", "consolidated.safetensors", "original/consolidated.00.pth",
          "original/tokenizer.model", "generation_config.json", "tokenizer_config.json"],
         ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer_config.json"]),
        (["config.json", "pytorch_model.bin", "tokenizer.model", "vocab.json", "merges.txt"],
         ["config.json", "merges.txt", "pytorch_model.bin", "tokenizer.model", "vocab.json"]),
        (["config.json", "hf_quant_config.json", "model.safetensors", "qwen.tiktoken", "chat_template.jinja"],
         ["chat_template.jinja", "config.json", "hf_quant_config.json", "model.safetensors", "qwen.tiktoken"]),
    ],
)  # fmt: skip
def test_select_files(files: list[str], expected: list[str]) -> None:
    assert select_files(files) == expected


def test_select_files_refuses_non_transformers_repos() -> None:
    with pytest.raises(SpecError, match="no Hugging Face-format weights"):
        select_files(["config.json", "consolidated.safetensors", "params.json"])
    with pytest.raises(SpecError, match="no config.json"):
        select_files(["model.safetensors"])
    assert select_files(["config.json", "model.safetensors", "x.bin"], all_weights=True) == [
        "config.json", "model.safetensors", "x.bin"]  # fmt: skip


# -- tokens and credentials ----------------------------------------------------------------------
BAD_TOKEN = (
    "refused the token (HTTP 401: invalid credentials); check HF_TOKEN, or run 'hf auth login' "
    "again (unset HF_TOKEN for a public repository)."
)


def test_a_wrong_token_is_a_bad_token_not_a_gated_repo(
    runner: CliRunner, hub: FakeHub, hf_home: Path, repo_files: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    hub.valid_tokens = {SECRET, "hf_validButNotOnTheList"}
    hub.add("meta/gated", FakeRepo(files=dict(repo_files), gated=True, token=SECRET))
    monkeypatch.setenv("HF_TOKEN", "hf_revokedToken")
    for repo in (REPO, "meta/gated"):  # the Hub answers 401 for an invalid token, everywhere
        result = run_main(runner, "download", repo)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines()[-1] == f"Error: {hub.url} {BAD_TOKEN}"
        assert "Traceback" not in result.output and "hf_revokedToken" not in result.output
    monkeypatch.setenv("HF_TOKEN", "hf_validButNotOnTheList")  # a good token without access: 403
    result = run_main(runner, "download", "meta/gated")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("Error: meta/gated is gated: request access")
    assert all_manifests(hf_home) == []


def test_credentials_in_hf_endpoint_never_reach_a_message(
    runner: CliRunner, hub: FakeHub, hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "s3cretPassw0rd"
    host = hub.url.removeprefix("http://")
    monkeypatch.setenv("HF_ENDPOINT", f"http://alice:{password}@{host}")
    shown = f"http://***@{host}"
    result = run_main(runner, "download", "acme/nope")  # 404
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: repository acme/nope not found on {shown} ")
    result = run_main(runner, "download", REPO, "--revision", "v9")
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: revision 'v9' not found in {REPO}; see {shown}/{REPO}/tree/main.\n"
    )
    hub.valid_tokens = {SECRET}  # the URL's credentials are not a token the Hub knows
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 2 and result.stderr.splitlines()[-1] == f"Error: {shown} {BAD_TOKEN}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://alice:{password}@127.0.0.1:{port}")
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach http://***@127.0.0.1:{port} (")
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert password.encode() not in path.read_bytes(), path


def test_hub_errors_without_a_mapping_are_one_line_runtime_failures(
    runner: CliRunner, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    def broken(*args: object, **kwargs: object) -> None:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        request = httpx2.Request("GET", "http://alice:pw@hub.example/api/models/acme/x")
        response = httpx2.Response(500, request=request)
        raise HfHubHTTPError(
            "500 Server Error for url http://alice:pw@hub.example/x", response=response
        )

    monkeypatch.setattr(HfApi, "resolve_revision", broken)
    result = run_main(runner, "download", REPO)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {hub.url} answered 500 for {REPO}: 500 Server Error for url "
        "http://***@hub.example/x; try again later.\n"
    )


@pytest.mark.parametrize(("content", "why"), [(b"{not json", "is not valid JSON"),
                                               (b"\xff\xfe{}", "codec can't decode")])  # fmt: skip
def test_a_local_checkpoint_whose_config_is_not_json(
    runner: CliRunner, local_model: Path, content: bytes, why: str
) -> None:
    (local_model / "config.json").write_bytes(content)
    result = run_main(runner, "download", str(local_model))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {local_model}/config.json {why}" if "JSON" in why
                                    else f"Error: {local_model}/config.json is not valid JSON")  # fmt: skip
    assert result.stderr.endswith("; fix or replace it (a transformers checkpoint's own file)\n")
    assert "Traceback" not in result.output and not (local_model / CHECKPOINT_MANIFEST).exists()
