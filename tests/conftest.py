"""Shared fixtures. Tests are hermetic: no HF token, no user caches, no network, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

ISOLATED_PREFIXES = ("TRTBUILD_", "HF_", "HUGGINGFACE_")
ISOLATED_NAMES = ("CUDA_VISIBLE_DEVICES", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite tests/golden from the current output"
    )


@pytest.fixture(scope="session", autouse=True)
def _isolate_session_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Strip tokens and user configuration for the whole run; caches go to a temp dir."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            del os.environ[name]
    base = tmp_path_factory.mktemp("home")
    os.environ["TRTBUILD_HOME"] = str(base / "trtbuild")
    os.environ["HF_HOME"] = str(base / "hf")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


@pytest.fixture(autouse=True)
def _isolate_test_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Per test: no token or user setting leaks in (or out: monkeypatch restores the environment
    after each test), and trtbuild's and the Hub's caches are this test's own."""
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            monkeypatch.delenv(name)
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("TRTBUILD_HOME", str(base / "trtbuild"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default checkpoint, made once per test session (seed 0)."""
    from trtbuild.tiny_model import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# -- the served portable runtime, shared by every end-to-end test of the session --------------------
STOP_PROMPT = "Stop words and end ids:"


class Reference:
    """transformers on the same weights: what the server's greedy output must equal."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, attn_implementation="sdpa"
        ).eval()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def greedy(self, prompt: str | list[int], max_new_tokens: int) -> list[int]:
        ids = self.encode(prompt) if isinstance(prompt, str) else prompt
        with self.torch.no_grad():
            out = self.model.generate(
                self.torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=3,
            )
        return out[0][len(ids) :].tolist()

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


@pytest.fixture(scope="session")
def reference(tiny_model: Path) -> Reference:
    return Reference(tiny_model)


@pytest.fixture(scope="session")
def portable_engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtbuild.builder.engine import prepare_portable_engine

    return prepare_portable_engine(tiny_model, tmp_path_factory.mktemp("engine") / "engine")


@pytest.fixture(scope="session")
def chat_end_token(reference: Reference) -> tuple[int, int]:
    """A token the greedy continuation of STOP_PROMPT produces, to serve as a second end token.

    Returns (token id, its index in the continuation). It is rendered into the repository as an
    extra end token (like Llama-3's <|eot_id|> beside </s>).
    """
    ids = reference.greedy(STOP_PROMPT, 24)
    for index in range(4, len(ids)):
        tok = ids[index]
        if tok not in ids[:index] and tok > 4:
            return tok, index
    raise AssertionError("no usable token in the continuation")


@pytest.fixture(scope="session")
def served(
    portable_engine: Path, chat_end_token: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    """A real tritonserver serving the portable inflight-batching repository."""
    from trtbuild.render import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec, ServingLimits
    from trtbuild.tiny_model import repo_spec

    # max_queue_size 8: 16 slots + 8 waiting (test_portable_runtime.py fills both, then is refused)
    limits = ServingLimits(
        max_batch_size=16, max_input_len=256, max_seq_len=512, max_num_tokens=512, max_queue_size=8
    )
    spec = repo_spec(portable_engine, extra_end_ids=(chat_end_token[0],), limits=limits)
    repo = render_repository(spec, tmp_path_factory.mktemp("served") / "repository")
    # shutdown_grace: Triton 2.51 keeps a decoupled model loaded after it rejected a gRPC stream
    # request for a wrong input dtype (test_max_tokens_zero_and_wrong_dtype_are_refused does that)
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    with TritonServer(serve, quiet=True) as server:
        yield server


@pytest.fixture(scope="session")
def served_whole(portable_engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The portable flavor rendered with --no-streaming: a non-decoupled core model."""
    from trtbuild.render import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec, ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    spec = repo_spec(portable_engine, limits=limits).model_copy(update={"streaming": False})
    repo = render_repository(spec, tmp_path_factory.mktemp("whole") / "repository")
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    with TritonServer(serve, quiet=True) as server:
        yield server
