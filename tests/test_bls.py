"""tensorrt_llm_bls: the ensemble's steps from Python, whole (the default) or streamed (decoupled).

Served for real (tritonserver 2.51): the session's portable repository for the plain BLS, and one
more repository rendered with ``bls_decoupled`` for the streaming BLS. Expected text comes from
transformers on the same weights.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import Reference

pytestmark = pytest.mark.server

PROMPTS = ["The BLS runs the ensemble's steps", "A second row of the same batch, longer than"]


@pytest.fixture(scope="session")
def served_bls_decoupled(portable_engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    from trtbuild.render import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec, ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=8, max_input_len=128, max_seq_len=256, max_num_tokens=256)
    spec = repo_spec(portable_engine, limits=limits).model_copy(update={"bls_decoupled": True})
    repo = render_repository(spec, tmp_path_factory.mktemp("bls") / "repository")
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    with TritonServer(serve, quiet=True) as server:
        yield server


def _inputs(values: dict[str, Any]) -> list[grpcclient.InferInput]:
    dtypes = {np.object_: "BYTES", np.int32: "INT32", np.bool_: "BOOL", np.float32: "FP32"}
    tensors = []
    for name, arr in values.items():
        t = grpcclient.InferInput(name, list(arr.shape), dtypes[arr.dtype.type])
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return tensors


def _request(prompts: list[str], max_tokens: int, **extra: Any) -> list[grpcclient.InferInput]:
    rows = len(prompts)
    values: dict[str, Any] = {
        "text_input": np.array([[p.encode()] for p in prompts], dtype=object),
        "max_tokens": np.full((rows, 1), max_tokens, dtype=np.int32),
        "end_id": np.full((rows, 1), -1, dtype=np.int32),
    }
    values.update({k: np.full((rows, 1), v) for k, v in extra.items()})
    return _inputs(values)


def _stream(url: str, inputs: list[grpcclient.InferInput]) -> list[Any]:
    """Every response of one request over the gRPC stream, until the final flag."""
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    responses = []
    try:
        client.async_stream_infer("tensorrt_llm_bls", inputs, enable_empty_final_response=True)
        while True:
            result, error = got.get(timeout=60)
            if error is not None:
                raise AssertionError(str(error))
            if result.as_numpy("text_output") is not None:
                responses.append(result)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return responses
    finally:
        client.stop_stream()
        client.close()


def _text(result: Any) -> list[str]:
    out = result.as_numpy("text_output")
    assert out.ndim == 1  # upstream's shape: one string per sequence; clients read out[0]
    return [v.decode() for v in out]


def test_a_batch_of_two_prompts_answers_both_rows(served, reference: Reference) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_url)
    result = client.infer("tensorrt_llm_bls", _request(PROMPTS, 12))
    assert _text(result) == [reference.decode(reference.greedy(p, 12)) for p in PROMPTS]
    client.close()


def test_decoupled_bls_streams_token_by_token(served_bls_decoupled, reference: Reference) -> None:
    expected = reference.decode(reference.greedy(PROMPTS[0], 16))
    streamed = _stream(served_bls_decoupled.grpc_url, _request(PROMPTS[:1], 16, stream=True))
    assert len(streamed) > 8  # it really streamed
    assert "".join(_text(r)[0] for r in streamed) == expected
    whole = _stream(served_bls_decoupled.grpc_url, _request(PROMPTS[:1], 16))
    assert [_text(r) for r in whole] == [[expected]]  # without stream: one response


def test_decoupled_bls_streams_a_batch_with_batch_index(
    served_bls_decoupled, reference: Reference
) -> None:
    responses = _stream(served_bls_decoupled.grpc_url, _request(PROMPTS, 10, stream=True))
    texts = ["", ""]
    for r in responses:
        row = int(r.as_numpy("batch_index")[0][0])
        texts[row] += _text(r)[0]
    assert texts == [reference.decode(reference.greedy(p, 10)) for p in PROMPTS]


def _biased_greedy(reference: Reference, prompt: str, bias: dict[int, float], n: int) -> list[int]:
    """transformers' greedy decoding with a bias added to the logits at every step."""
    torch = reference.torch
    ids = reference.encode(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = reference.model(torch.tensor([ids + out])).logits[0, -1].clone()
            for token, weight in bias.items():
                logits[token] += weight
            out.append(int(logits.argmax()))
    return out


def test_embedding_bias_words_reach_the_model_through_the_bls(served, reference: Reference) -> None:
    """Upstream's embedding_bias_words/weights (each word encoded as upstream's preprocessing
    encodes it, special tokens included; the weight added to each of its ids)."""
    word, weight = "hello", 25.0
    bias: dict[int, float] = {}
    for token in reference.tokenizer.encode(word):
        bias[token] = bias.get(token, 0.0) + weight
    expected = reference.decode(_biased_greedy(reference, "Bias me", bias, 4))
    assert expected != reference.decode(reference.greedy("Bias me", 4))  # the bias matters
    values = {
        "text_input": np.array([[b"Bias me"]], dtype=object),
        "max_tokens": np.array([[4]], dtype=np.int32),
        "end_id": np.array([[-1]], dtype=np.int32),
        "embedding_bias_words": np.array([[word.encode()]], dtype=object),
        "embedding_bias_weights": np.array([[weight]], dtype=np.float32),
    }
    client = grpcclient.InferenceServerClient(served.grpc_url)
    result = client.infer("tensorrt_llm_bls", _inputs(values))
    client.close()
    assert _text(result) == [expected]
