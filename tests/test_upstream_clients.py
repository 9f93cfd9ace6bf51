"""What TensorRT-LLM's own client scripts send, and what they index into, against trtbuild.

The requests and reads below are the ones the facts files record for upstream's scripts
(``facts(...).clients``: end_to_end_grpc_client.py, tools/inflight_batcher_llm/end_to_end_test.py,
inflight_batcher_llm_client.py), sent to a real tritonserver serving trtbuild's portable
repository. Expected text comes from transformers on the same weights.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import Reference
from trtbuild.ensembles.upstream import facts

pytestmark = pytest.mark.server
PROMPT = "What upstream's clients send"


def _client(script: str) -> dict[str, Any]:
    return next(c for c in facts("1.2").clients if c["script"].endswith(script))


def _tensor(module: Any, name: str, arr: np.ndarray) -> Any:
    dtype = {np.object_: "BYTES", np.int32: "INT32", np.bool_: "BOOL", np.float32: "FP32"}
    t = module.InferInput(name, list(arr.shape), dtype[arr.dtype.type])
    t.set_data_from_numpy(arr)
    return t


def test_end_to_end_grpc_client_request_and_reads(served, reference: Reference) -> None:
    """end_to_end_grpc_client.py: a gRPC stream per request, streaming or not, always sending
    beam_width, temperature and exclude_input_in_output; it prints text_output[0].decode()."""
    sent = {s["name"] for s in _client("end_to_end_grpc_client.py")["sends"]}
    assert {"text_input", "max_tokens", "stream", "exclude_input_in_output"} <= sent
    for stream in (True, False):
        values = {
            "text_input": np.array([[PROMPT.encode()]], dtype=object),
            "max_tokens": np.array([[10]], dtype=np.int32),
            "stream": np.array([[stream]], dtype=bool),
            "beam_width": np.array([[1]], dtype=np.int32),
            "temperature": np.array([[1.0]], dtype=np.float32),
            "exclude_input_in_output": np.array([[False]], dtype=bool),
            "end_id": np.array([[-1]], dtype=np.int32),  # the random model: ignore end tokens
        }
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(served.grpc_url)
        client.start_stream(callback=lambda result, error, got=got: got.put((result, error)))
        client.async_stream_infer(
            "ensemble", [_tensor(grpcclient, k, v) for k, v in values.items()], request_id="1"
        )
        text = ""
        while True:
            result, error = got.get(timeout=60)
            assert error is None, error
            output = result.as_numpy("text_output")
            text += output[0].decode("utf-8")  # exactly what the script does
            if not stream or result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        client.close()
        expected = reference.decode(reference.greedy(PROMPT, 10))
        if stream:
            assert text == expected  # streamed pieces are the new tokens only
        else:  # the whole response: the prompt, as asked (exclude_input_in_output false), then the rest
            assert text.endswith(expected) and PROMPT in text


def test_end_to_end_test_flow_pre_core_post_equals_the_ensemble(
    served_whole, reference: Reference
) -> None:
    """tools/inflight_batcher_llm/end_to_end_test.py: preprocessing's outputs are forwarded
    unchanged to tensorrt_llm, its output_ids to postprocessing, and postprocessing's OUTPUT must
    equal the ensemble's text_output, whole arrays compared."""
    reads = {r["output"] for r in _client("end_to_end_test.py")["reads"]}
    assert "OUTPUT vs text_output" in reads
    with httpclient.InferenceServerClient(served_whole.http_url) as client:
        pre = client.infer(
            "preprocessing",
            [
                _tensor(httpclient, "QUERY", np.array([[PROMPT.encode()]], dtype=object)),
                _tensor(httpclient, "BAD_WORDS_DICT", np.array([[b""]], dtype=object)),
                _tensor(httpclient, "STOP_WORDS_DICT", np.array([[b""]], dtype=object)),
                _tensor(httpclient, "REQUEST_OUTPUT_LEN", np.array([[8]], dtype=np.int32)),
            ],
        )
        forwarded = {
            "input_ids": pre.as_numpy("INPUT_ID"),
            "decoder_input_ids": pre.as_numpy("DECODER_INPUT_ID"),
            "input_lengths": pre.as_numpy("REQUEST_INPUT_LEN"),
            "request_output_len": pre.as_numpy("REQUEST_OUTPUT_LEN"),
            "end_id": np.array([[-1]], dtype=np.int32),
            "pad_id": pre.as_numpy("OUT_PAD_ID"),
        }
        core = client.infer(
            "tensorrt_llm",
            [_tensor(httpclient, k, v.astype(np.int32)) for k, v in forwarded.items()],
        )
        post = client.infer(
            "postprocessing",
            [
                _tensor(httpclient, "TOKENS_BATCH", core.as_numpy("output_ids").astype(np.int32)),
                _tensor(httpclient, "SEQUENCE_LENGTH", core.as_numpy("sequence_length")),
            ],
        )
        ensemble = client.infer(
            "ensemble",
            [
                _tensor(httpclient, "text_input", np.array([[PROMPT.encode()]], dtype=object)),
                _tensor(httpclient, "max_tokens", np.array([[8]], dtype=np.int32)),
                _tensor(httpclient, "bad_words", np.array([[b""]], dtype=object)),
                _tensor(httpclient, "stop_words", np.array([[b""]], dtype=object)),
                _tensor(httpclient, "end_id", np.array([[-1]], dtype=np.int32)),
            ],
        )
    expected = reference.decode(reference.greedy(PROMPT, 8))
    assert post.as_numpy("OUTPUT").shape == ensemble.as_numpy("text_output").shape == (1,)
    assert np.array_equal(post.as_numpy("OUTPUT"), ensemble.as_numpy("text_output"))
    assert ensemble.as_numpy("text_output")[0].decode() == expected


def test_inflight_batcher_llm_client_reads_output_ids_of_beam_0(
    served, reference: Reference
) -> None:
    """inflight_batcher_llm_client.py streams to the core model and reads
    output_ids[0][0] while sequence_length[0][0] > 0."""
    ids = reference.encode(PROMPT)
    values = {
        "input_ids": np.array([ids], dtype=np.int32),
        "input_lengths": np.array([[len(ids)]], dtype=np.int32),
        "request_output_len": np.array([[6]], dtype=np.int32),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "streaming": np.array([[True]], dtype=bool),
        "end_id": np.array([[-1]], dtype=np.int32),
        "pad_id": np.array([[0]], dtype=np.int32),
        "runtime_top_k": np.array([[1]], dtype=np.int32),
        "runtime_top_p": np.array([[0.0]], dtype=np.float32),
    }
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer(
        "tensorrt_llm",
        [_tensor(grpcclient, k, v) for k, v in values.items()],
        enable_empty_final_response=True,
    )
    tokens: list[int] = []
    while True:
        result, error = got.get(timeout=60)
        assert error is None, error
        if (
            result.as_numpy("output_ids") is not None
            and result.as_numpy("sequence_length")[0][0] > 0
        ):
            tokens += list(result.as_numpy("output_ids")[0][0])
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    assert tokens == reference.greedy(ids, 6)
