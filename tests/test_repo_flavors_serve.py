"""Rendered TensorRT-LLM flavors in the real tritonserver, as far as this machine allows; and the
launch command for TP x PP > 1 (which cannot run here: no GPU, no MPI, no TensorRT-LLM).

- tensorrtllm: ``tensorrt_llm`` is TensorRT-LLM's C++ backend (``backend: "tensorrtllm"``), which
  exists only in the NGC ``-trtllm-python-py3`` containers and needs a GPU, so it is left out
  (explicit model control) and with it the ``ensemble`` that contains it. preprocessing,
  postprocessing and tensorrt_llm_bls load and answer for real.
- llmapi: ``tensorrt_llm`` is TensorRT-LLM's own llmapi model, which trtbuild does not ship. The
  repository is rendered with ``llmapi_model_py`` pointing at tests/fakes/fake_llmapi (a stand-in
  laid out like the real one that answers with what it received), so trtbuild's shim, model.yaml,
  preprocessing, ensemble and BLS all run for real; only TensorRT-LLM's model code does not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.goldens import check_golden
from tests.repo_fakes import copy_tokenizer, write_llama3_tokenizer, write_trtllm_engine
from trtbuild.builder.manifest import ServingHost
from trtbuild.render import render_repository
from trtbuild.repo import build_repo_spec
from trtbuild.server import (
    RepoLaunch,
    TritonInstall,
    TritonServer,
    launch_argv,
    repo_launch,
)
from trtbuild.specs import ServeSpec

pytestmark = pytest.mark.server
FAKE_LLMAPI = Path(__file__).parent / "fakes" / "fake_llmapi" / "model.py"
GOLDEN = Path(__file__).parent / "golden" / "serve"
CORE_LEFT_OUT = ["preprocessing", "postprocessing", "tensorrt_llm_bls"]


def _serve(repo: Path, load_models: list[str] | None = None) -> TritonServer:
    spec = ServeSpec(
        repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3,
        load_models=load_models,
    )  # fmt: skip
    return TritonServer(spec, quiet=True)


def _post(server: TritonServer, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _states(server: TritonServer) -> dict[str, str]:
    return {m["name"]: m.get("state", "") for m in _post(server, "/v2/repository/index")}


# -- tensorrtllm: everything but TensorRT-LLM's C++ backend ----------------------------------------
@pytest.fixture(scope="module")
def cpp_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("cpp")
    engine = write_trtllm_engine(tmp / "engine", max_batch_size=8, max_input_len=256,
                                 max_seq_len=512, tokenizer=tiny_model)  # fmt: skip
    spec = build_repo_spec(engine, host=ServingHost()).spec
    repo = render_repository(spec, tmp / "repo")
    with _serve(repo, CORE_LEFT_OUT) as server:
        yield server, spec


def test_tensorrtllm_flavor_loads_all_but_tensorrt_llm_which_needs_the_cpp_backend_and_a_gpu(
    cpp_server: Any,
) -> None:
    server, _ = cpp_server
    states = _states(server)
    assert {states[m] for m in CORE_LEFT_OUT} == {"READY"}
    # not loaded here: tensorrt_llm (backend "tensorrtllm": NGC trtllm container + GPU) and the
    # ensemble, which Triton loads only with all its steps
    assert states["tensorrt_llm"] != "READY" and states["ensemble"] != "READY"


def test_tensorrtllm_flavor_preprocessing_fills_end_ids_and_stop_tokens(
    cpp_server: Any, tiny_model: Path
) -> None:
    import tritonclient.http as http
    from tokenizers import Tokenizer

    server, spec = cpp_server
    query = http.InferInput("QUERY", [1, 1], "BYTES")
    query.set_data_from_numpy(np.array([[b"The KV cache grows with"]], dtype=object))
    length = http.InferInput("REQUEST_OUTPUT_LEN", [1, 1], "INT32")
    length.set_data_from_numpy(np.array([[16]], dtype=np.int32))
    with http.InferenceServerClient(server.http_url) as client:
        result = client.infer("preprocessing", [query, length])
    ids = Tokenizer.from_file(str(tiny_model / "tokenizer.json")).encode("The KV cache grows with")
    assert result.as_numpy("INPUT_ID").tolist() == [ids.ids]
    assert result.as_numpy("OUT_END_ID").tolist() == [[spec.end_id]]
    assert result.as_numpy("OUT_PAD_ID").tolist() == [[spec.pad_id]]
    # the model's other end token (generation_config.json) is sent as a stop word
    stop = result.as_numpy("STOP_WORDS_IDS")
    assert stop.shape == (1, 2, len(spec.stop_token_ids))
    assert stop[0, 0].tolist() == list(spec.stop_token_ids)


def test_tensorrtllm_flavor_postprocessing_decodes_the_core_models_ids(
    cpp_server: Any, tiny_model: Path
) -> None:
    import tritonclient.http as http
    from tokenizers import Tokenizer

    server, _ = cpp_server
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    ids = tok.encode("Triton serves tokens", add_special_tokens=False).ids
    tokens = http.InferInput("TOKENS_BATCH", [1, 1, len(ids) + 2], "INT32")
    tokens.set_data_from_numpy(np.array([[[*ids, 0, 0]]], dtype=np.int32))  # padded beam
    lengths = http.InferInput("SEQUENCE_LENGTH", [1, 1], "INT32")
    lengths.set_data_from_numpy(np.array([[len(ids)]], dtype=np.int32))
    with http.InferenceServerClient(server.http_url) as client:
        result = client.infer("postprocessing", [tokens, lengths])
    assert result.as_numpy("OUTPUT").reshape(-1)[0].decode() == tok.decode(ids)


def test_tensorrtllm_flavor_bls_reports_that_tensorrt_llm_is_not_loaded(cpp_server: Any) -> None:
    server, _ = cpp_server
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server, "/v2/models/tensorrt_llm_bls/generate",
              {"text_input": "hello", "max_tokens": 4})  # fmt: skip
    assert "tensorrt_llm" in info.value.read().decode()


# -- llmapi: TensorRT-LLM's model replaced by a stand-in ------------------------------------------------
@pytest.fixture(scope="module")
def llmapi_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("llmapi")
    ckpt = copy_tokenizer(tiny_model, tmp / "ckpt")
    (ckpt / "config.json").write_text((tiny_model / "config.json").read_text())
    spec = build_repo_spec(ckpt, runtime="llmapi", host=ServingHost()).spec
    spec = spec.model_copy(update={"llmapi_model_py": str(FAKE_LLMAPI)})
    repo = render_repository(spec, tmp / "repo")
    with _serve(repo) as server:
        yield server, spec


def test_llmapi_flavor_serves_with_a_stand_in_for_tensorrt_llms_llmapi_model(
    llmapi_server: Any,
) -> None:
    server, spec = llmapi_server
    assert set(_states(server).values()) == {"READY"}
    out = _post(server, "/v2/models/ensemble/generate",
                {"text_input": "hello there", "max_tokens": 8, "temperature": 0.5})  # fmt: skip
    answer = json.loads(out["text_output"])
    got = answer["received"]
    assert got["text_input"] == "hello there"
    assert got["sampling_param_max_tokens"] == 8
    assert got["sampling_param_temperature"] == 0.5
    assert got["streaming"] is False
    # trtbuild's preprocessing: no prompt echo, and the model's other end token as a stop string
    assert got["sampling_param_exclude_input_from_output"] is True
    assert got["sampling_param_stop"] == ["<|eot|>"]
    # the shim found model.yaml in its own model directory
    assert answer["model_yaml"]["model"] == str(spec.engine_dir)
    assert answer["model_yaml"]["triton_config"] == {"max_batch_size": 0, "decoupled": True}


def test_llmapi_flavor_streams_through_the_ensemble(llmapi_server: Any) -> None:
    server, _ = llmapi_server
    body = json.dumps({"text_input": "hi", "max_tokens": 4, "stream": True}).encode()
    url = f"http://{server.http_url}/v2/models/ensemble/generate_stream"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as resp:  # noqa: S310
        events = [json.loads(line[5:]) for line in resp.read().decode().splitlines() if line]
    assert [e["text_output"][:12] for e in events][0] == "fake piece; "
    assert json.loads(events[-1]["text_output"])["received"]["streaming"] is True


def test_llmapi_flavor_bls_answers_plain_infer_and_errors_name_the_fix(llmapi_server: Any) -> None:
    import tritonclient.http as http

    server, _ = llmapi_server
    prompt = http.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"hello"], dtype=object))
    tokens = http.InferInput("max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([5], dtype=np.int32))
    with http.InferenceServerClient(server.http_url) as client:
        result = client.infer("tensorrt_llm_bls", [prompt, tokens])
        got = json.loads(result.as_numpy("text_output")[0])["received"]
        assert (got["streaming"], got["sampling_param_max_tokens"]) == (False, 5)
        tokens.set_data_from_numpy(np.array([100000], dtype=np.int32))
        with pytest.raises(Exception, match="exceeds max_seq_len .* ask for at most"):
            client.infer("tensorrt_llm_bls", [prompt, tokens])


@pytest.mark.parametrize(
    ("protocol", "model", "stream"),
    [("grpc", "ensemble", True), ("http", "ensemble", True), ("grpc", "ensemble", False),
     ("http", "tensorrt_llm_bls", False), ("grpc", "tensorrt_llm_bls", False)],
)  # fmt: skip
def test_trtbuild_client_speaks_to_the_llmapi_flavor(
    llmapi_server: Any, protocol: str, model: str, stream: bool
) -> None:
    """`trtbuild infer`'s client shapes inputs for max_batch_size 0 and asks only for declared outputs."""
    from trtbuild.client import Client
    from trtbuild.specs import InferSpec

    server, _ = llmapi_server
    url = server.grpc_url if protocol == "grpc" else server.http_url
    spec = InferSpec(
        prompt="hello", url=url, protocol=protocol, model=model, stream=stream, max_tokens=7
    )
    with Client(url, protocol) as client:
        result = client.generate(spec)
    got = json.loads(result.text.removeprefix("fake piece; "))["received"]
    assert (got["text_input"], got["sampling_param_max_tokens"], got["streaming"]) == (
        "hello",
        7,
        stream,
    )
    assert len(result.pieces) == (2 if stream else 1)


@pytest.mark.parametrize(
    ("protocol", "model", "stream"),
    [("grpc", "ensemble", True), ("grpc", "tensorrt_llm_bls", False),
     ("http", "tensorrt_llm_bls", False)],
)  # fmt: skip
def test_a_refused_request_is_the_users_error_through_the_llmapi_flavor(
    llmapi_server: Any, protocol: str, model: str, stream: bool
) -> None:
    """Preprocessing's refusal reaches trtbuild's client as InvalidRequest (exit 2) through the
    decoupled ensemble's gRPC stream (no status code) and through the BLS (which re-raises it)."""
    from trtbuild.client import Client
    from trtbuild.errors import InvalidRequest
    from trtbuild.specs import InferSpec

    server, _ = llmapi_server
    url = server.grpc_url if protocol == "grpc" else server.http_url
    spec = InferSpec(
        prompt="hello", url=url, protocol=protocol, model=model, stream=stream, max_tokens=100000
    )
    with (
        Client(url, protocol) as client,
        pytest.raises(InvalidRequest, match="exceeds max_seq_len"),
    ):
        client.generate(spec)


def test_the_llmapi_bls_refuses_stream_as_the_users_error(llmapi_server: Any) -> None:
    import tritonclient.grpc as grpcclient

    from trtbuild.client import _server_error
    from trtbuild.errors import InvalidRequest

    server, _ = llmapi_server
    prompt = grpcclient.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"hello"], dtype=object))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(Exception, match="answers whole responses") as refused:
            client.infer("tensorrt_llm_bls", [prompt, stream])
    finally:
        client.close()
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    assert isinstance(_server_error("tensorrt_llm_bls", refused.value), InvalidRequest)


# -- launching TP x PP > 1 (argv only: no mpirun, GPU or TensorRT-LLM here) ------------------------------
INSTALL = TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, {})
SERVE = ServeSpec(repo=Path("/srv/repository"), http_port=8000, grpc_port=8001, metrics_port=8002)
LAUNCHES = {
    "leader-tp2": RepoLaunch("leader", 2),
    "leader-tp2-pp2": RepoLaunch("leader", 4),
    "orchestrator-2x-tp2": RepoLaunch("orchestrator", 2, gpus=(0, 1, 2, 3)),
    "llmapi-tp2": RepoLaunch("mpi", 2),
    "single": RepoLaunch(),
}


@pytest.mark.parametrize("case", sorted(LAUNCHES))
def test_golden_serve_argv(case: str, update_golden: bool) -> None:
    argv, env = launch_argv(SERVE, INSTALL, LAUNCHES[case])
    text = "".join(f"{k}={v}\n" for k, v in sorted(env.items())) + "\n".join(argv) + "\n"
    check_golden(GOLDEN / f"{case}.txt", text, update_golden)


def test_leader_mode_gives_each_rank_its_shm_prefix_and_loads_only_the_core_on_workers() -> None:
    argv, _ = launch_argv(SERVE, INSTALL, RepoLaunch("leader", 2))
    ranks = " ".join(argv).split(" : ")
    assert ranks[0].startswith("mpirun --allow-run-as-root -n 1 /opt/tritonserver/bin/tritonserver")
    assert "shm-region-prefix-name=prefix0_" in ranks[0] and "--load-model" not in ranks[0]
    assert ranks[1].startswith("-n 1 /opt/tritonserver/bin/tritonserver")
    assert "shm-region-prefix-name=prefix1_" in ranks[1]
    assert "--model-control-mode=explicit --load-model=tensorrt_llm" in ranks[1]


def test_world_size_comes_from_the_repository(tmp_path: Path) -> None:
    tok = write_llama3_tokenizer(tmp_path / "tok")
    engine = write_trtllm_engine(tmp_path / "engine", tp=2, pp=2, tokenizer=tok)
    spec = build_repo_spec(engine, host=ServingHost()).spec
    repo = render_repository(spec, tmp_path / "repo")
    assert repo_launch(repo) == RepoLaunch("leader", 4)
    # a hand-written repository: read from the engine its tensorrtllm model points at
    (repo / "trtbuild-repo.json").unlink()
    assert repo_launch(repo) == RepoLaunch("leader", 4)
    replicas = render_repository(
        spec.model_copy(update={"tp": 2, "pp": 2, "gpu_device_ids": [[0, 1, 2, 3], [4, 5, 6, 7]]}),
        tmp_path / "replicas",
    )
    assert repo_launch(replicas) == RepoLaunch("orchestrator", 4, gpus=tuple(range(8)))


def test_serving_world_size_2_without_mpirun_names_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trtbuild.server as server
    from trtbuild.errors import ToolNotFound

    tok = write_llama3_tokenizer(tmp_path / "tok")
    engine = write_trtllm_engine(tmp_path / "engine", tp=2, tokenizer=tok)
    repo = render_repository(build_repo_spec(engine, host=ServingHost()).spec,
                             tmp_path / "repo")  # fmt: skip
    real_which = server.shutil.which
    monkeypatch.setattr(
        server.shutil,
        "which",
        lambda name, **kw: None if name == "mpirun" else real_which(name, **kw),
    )
    with pytest.raises(ToolNotFound, match=r"mpirun not found.*world size 2.*trtllm-python-py3"):
        TritonServer(ServeSpec(repo=repo))


def test_explicit_model_loading_argv() -> None:
    spec = SERVE.model_copy(update={"load_models": ["preprocessing", "postprocessing"]})
    argv, _ = launch_argv(spec, INSTALL, RepoLaunch())
    assert argv[-3:] == [
        "--model-control-mode=explicit",
        "--load-model=preprocessing",
        "--load-model=postprocessing",
    ]
