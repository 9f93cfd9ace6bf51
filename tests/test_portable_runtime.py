"""The served inflight-batching repository with the portable runtime, end to end.

One real tritonserver (session fixture ``served``) runs preprocessing -> tensorrt_llm (trtbuild's
portable runtime) -> postprocessing, plus the BLS front. Expected outputs come from transformers'
``generate`` on the same weights, never from hard-coded values.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import STOP_PROMPT, Reference
from tests.triton_helpers import core_inputs, metric, stream_core
from trtbuild.client import Client
from trtbuild.errors import InferenceError, InvalidRequest, RuntimeFailure, UserError
from trtbuild.specs import InferSpec, SamplingSpec

pytestmark = pytest.mark.server

PROMPTS = [
    "Hi",
    "Tensor parallelism splits every layer across GPUs 🚀🔥 and",
    "推理服务器 streams 日本語の文章 and emoji ✨🤖 while the",
    "def decode(self, ids):\n    return",
    "A much longer prompt about batching, memory, latency and throughput " * 6,
]


def spec(server, prompt: str, *, protocol: str = "grpc", **kw) -> InferSpec:  # type: ignore[no-untyped-def]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return InferSpec(prompt=prompt, url=url, protocol=protocol, **kw)  # type: ignore[arg-type]


def generate(server, prompt: str, **kw):  # type: ignore[no-untyped-def]
    s = spec(server, prompt, **kw)
    with Client(s.url, s.protocol) as client:
        return client.generate(s)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["2tok", "emoji", "cjk", "code", "long"])
def test_core_model_greedy_tokens_equal_transformers_generate(
    served, reference: Reference, prompt: str
) -> None:
    ids = reference.encode(prompt)
    expected = reference.greedy(ids, 40)
    got = stream_core(served.grpc_url, core_inputs(ids, 40, end_id=-1, streaming=True))
    assert got.error is None
    assert got.tokens == expected
    assert len(got.responses) == 40  # one response per token: it really streamed


@pytest.mark.parametrize("prompt", PROMPTS[1:3], ids=["emoji", "cjk"])
def test_streamed_text_equals_whole_text_equals_decode(
    served, reference: Reference, prompt: str
) -> None:
    expected = reference.decode(reference.greedy(prompt, 48))
    assert expected  # the comparison below means something
    runs = {
        "grpc stream": generate(served, prompt, stream=True, max_tokens=48, end_id=-1),
        "grpc whole": generate(served, prompt, stream=False, max_tokens=48, end_id=-1),
        "http generate_stream": generate(
            served, prompt, protocol="http", stream=True, max_tokens=48, end_id=-1
        ),
        "http generate": generate(
            served, prompt, protocol="http", stream=False, max_tokens=48, end_id=-1
        ),
        "bls grpc infer": generate(
            served, prompt, model="tensorrt_llm_bls", max_tokens=48, end_id=-1
        ),
        "bls http infer": generate(
            served, prompt, protocol="http", model="tensorrt_llm_bls", max_tokens=48, end_id=-1
        ),
    }
    for name, result in runs.items():
        assert result.text == expected, name
        assert result.tokens == 48, name
    # streaming delivered the text in many pieces; whole requests in one
    assert len(runs["grpc stream"].pieces) > 10
    assert len(runs["http generate_stream"].pieces) > 10
    assert len(runs["grpc whole"].pieces) == 1


def test_split_utf8_characters_are_held_back_not_mangled(served, reference: Reference) -> None:
    """A prompt ending inside a character run: every streamed piece is valid, whole text."""
    prompt = "日本語 ✨ é"  # byte-level BPE splits some of these into several tokens
    ids = reference.greedy(prompt, 40)
    expected = reference.decode(ids)
    result = generate(served, prompt, stream=True, max_tokens=40, end_id=-1)
    assert "".join(result.pieces) == expected
    singles = [reference.decode([t]) for t in ids]
    if any("\ufffd" in s for s in singles) and "\ufffd" not in expected:
        # per-token decoding would have produced replacement characters; streaming did not
        assert all("\ufffd" not in p for p in result.pieces)


def test_sixteen_concurrent_streaming_clients_all_complete(served, reference: Reference) -> None:
    prompts = [f"Client {i} asks about {PROMPTS[i % len(PROMPTS)][:40]}" for i in range(16)]
    expected = [reference.decode(reference.greedy(p, 32)) for p in prompts]
    start = threading.Barrier(16)

    def one(i: int):  # type: ignore[no-untyped-def]
        start.wait()
        return generate(served, prompts[i], stream=True, max_tokens=32, end_id=-1)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert [r.text for r in results] == expected  # batching did not change any sequence
    assert all(r.tokens == 32 for r in results)
    assert all(len(r.pieces) >= 16 for r in results)


def _active(server) -> float | None:  # type: ignore[no-untyped-def]
    return metric(server.metrics_url, "nv_trt_llm_request_metrics", request_type="active")


def _iterations(server) -> float:  # type: ignore[no-untyped-def]
    value = metric(
        server.metrics_url, "nv_trt_llm_general_metrics", general_type="iteration_counter"
    )
    assert value is not None
    return value


def test_cancellation_stops_generation_and_frees_the_slot(served, reference: Reference) -> None:
    ids = reference.encode("Cancel me after a few tokens")
    before = _iterations(served)
    got = stream_core(
        served.grpc_url, core_inputs(ids, 480, end_id=-1, streaming=True), cancel_after=5
    )
    assert got.error is None and len(got.responses) == 5
    deadline = time.monotonic() + 30
    while _active(served) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _active(served) == 0
    time.sleep(0.3)  # metrics refresh every 50 ms
    steps = _iterations(served) - before
    assert steps < 240, f"generation ran {steps} steps after cancel (asked for 480)"
    # the slot is free: a later request completes, with the right tokens
    later = stream_core(served.grpc_url, core_inputs(ids, 8, end_id=-1, streaming=True))
    assert later.tokens == reference.greedy(ids, 8)


def test_stop_request_with_the_same_id_cancels(served, reference: Reference) -> None:
    """TensorRT-LLM's `stop` input: a second request with the same id stops the first."""
    ids = reference.encode("Stop me by id")
    tokens: list[int] = []
    done = threading.Event()

    def callback(result, error):  # type: ignore[no-untyped-def]
        if error is None:
            out = result.as_numpy("output_ids")
            if out is not None:
                tokens.extend(int(x) for x in out.reshape(-1))
            final = result.get_response().parameters.get("triton_final_response")
            if final is None or not final.bool_param:
                return
        done.set()

    client = grpcclient.InferenceServerClient(served.grpc_url)
    client.start_stream(callback=callback)
    client.async_stream_infer(
        "tensorrt_llm",
        core_inputs(ids, 480, end_id=-1, streaming=True),
        request_id="job-42",
        enable_empty_final_response=True,
    )
    deadline = time.monotonic() + 30
    while len(tokens) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopper = grpcclient.InferenceServerClient(served.grpc_url)
    stopper.start_stream(callback=lambda result, error: None)
    stopper.async_stream_infer(
        "tensorrt_llm",
        [*core_inputs(ids, 1, streaming=True), _bool("stop", True)],
        request_id="job-42",
        enable_empty_final_response=True,
    )
    assert done.wait(30)
    stopper.stop_stream()
    client.stop_stream()
    assert 3 <= len(tokens) < 240


def _bool(name: str, value: bool) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, [1, 1], "BOOL")
    t.set_data_from_numpy(np.array([[value]], dtype=bool))
    return t


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "text_input is empty"),
        ({"prompt": "Hi", "max_tokens": 600}, "exceeds max_seq_len 512"),
        ({"prompt": "word " * 300}, "max_input_len"),
    ],
    ids=["empty-prompt", "max-tokens-past-limit", "prompt-too-long"],
)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(
    served, reference, kwargs, message
) -> None:  # type: ignore[no-untyped-def]
    # gRPC stream errors carry a message but no status code; HTTP and unary calls say 400/INVALID
    with pytest.raises((InvalidRequest, InferenceError), match=message):
        generate(served, stream=True, **kwargs)
    with pytest.raises(InvalidRequest, match=message):
        generate(served, protocol="http", **kwargs)
    with pytest.raises(InvalidRequest, match=message):
        generate(served, model="tensorrt_llm_bls", **kwargs)
    ok = generate(served, "Still serving?", stream=True, max_tokens=4, end_id=-1)
    assert ok.text == reference.decode(reference.greedy("Still serving?", 4))


def test_max_tokens_zero_and_wrong_dtype_are_refused(served) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_url)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"Hello"]], dtype=object))
    for arr, dtype, match in (
        (np.array([[0]], dtype=np.int32), "INT32", "max_tokens must be >= 1"),
        (np.array([[8.0]], dtype=np.float32), "FP32", "data-type|datatype|data type"),
    ):
        max_tokens = grpcclient.InferInput("max_tokens", [1, 1], dtype)
        max_tokens.set_data_from_numpy(arr)
        with pytest.raises(Exception, match=match):
            client.infer("tensorrt_llm_bls", [text, max_tokens])
    # wrong dtype straight to the core model
    ids = grpcclient.InferInput("input_ids", [1, 3], "INT64")
    ids.set_data_from_numpy(np.array([[1, 5, 6]], dtype=np.int64))
    got = stream_core(served.grpc_url, [ids, *core_inputs([1], 4)[1:]])
    assert got.error is not None and "INT64" in got.error.upper()
    # and beam search, which the portable runtime cannot honour
    got = stream_core(served.grpc_url, core_inputs([1, 5, 6], 4, beam_width=2))
    assert got.error is not None and "beam_width > 1 is not supported" in got.error
    got = stream_core(served.grpc_url, core_inputs([1, 5, 6], 4, lora_task_id=3))
    assert got.error is not None and "does not support lora_task_id" in got.error
    client.close()


def test_a_second_end_token_ends_generation(served, reference: Reference, chat_end_token) -> None:  # type: ignore[no-untyped-def]
    """The repository has two end tokens (eos and a 'chat end' one); either stops generation."""
    token, index = chat_end_token
    full = reference.greedy(STOP_PROMPT, 24)
    stopped = generate(served, STOP_PROMPT, stream=True, max_tokens=24)
    assert stopped.tokens == index + 1  # the end token is the last one generated
    assert stopped.text == reference.decode(full[: index + 1])
    unstopped = generate(served, STOP_PROMPT, stream=True, max_tokens=24, end_id=-1)
    assert unstopped.tokens == 24


def test_request_stop_words_and_end_id(served, reference: Reference) -> None:
    prompt = "Which words stop this"
    full = reference.greedy(prompt, 30)
    tok = reference.tokenizer
    # a token in the continuation that re-tokenizes to itself when used as a stop word
    j = next(
        i
        for i in range(3, 30)
        if full[i] not in full[:i]
        and full[i] > 4
        and tok(tok.decode([full[i]]), add_special_tokens=False)["input_ids"] == [full[i]]
    )
    stopped = generate(
        served, prompt, stream=True, max_tokens=30, end_id=-1, stop_words=[tok.decode([full[j]])]
    )
    assert stopped.text == reference.decode(full[: j + 1])
    # end_id = that token: generation ends before it (end tokens are not returned)
    ended = generate(served, prompt, stream=False, max_tokens=30, end_id=full[j])
    assert ended.text == reference.decode(full[:j])


def test_seeded_sampling_is_reproducible(served) -> None:
    sampling = SamplingSpec(temperature=0.9, top_p=0.9, seed=7)
    a = generate(served, "Sample me", max_tokens=24, end_id=-1, sampling=sampling)
    b = generate(served, "Sample me", max_tokens=24, end_id=-1, sampling=sampling)
    c = generate(
        served,
        "Sample me",
        max_tokens=24,
        end_id=-1,
        sampling=SamplingSpec(temperature=0.9, top_p=0.9, seed=8),
    )
    assert a.text == b.text
    assert a.text != c.text


def test_log_probs_are_returned_on_request(served, reference: Reference) -> None:
    ids = reference.encode("Log probs please")
    got = stream_core(served.grpc_url, core_inputs(ids, 6, end_id=-1, return_log_probs=True))
    assert got.error is None
    response = got.responses[-1]
    lps = response["output_log_probs"].reshape(-1)
    assert len(lps) == 6 and (lps <= 0).all()
    assert float(response["cum_log_probs"].reshape(-1)[0]) == pytest.approx(
        float(lps.sum()), rel=1e-5
    )
    # they are the model's: compare with transformers' scores for the same greedy tokens
    torch = reference.torch
    with torch.no_grad():
        full = torch.tensor([ids + got.tokens])
        logits = reference.model(full).logits[0, len(ids) - 1 : -1].float()
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(got.tokens)[:, None]).squeeze(1)
    assert np.allclose(lps, expected.numpy(), atol=1e-4)


def test_prompt_is_echoed_only_when_asked(served, reference: Reference) -> None:
    ids = reference.encode("Echo")
    echoed = stream_core(
        served.grpc_url, core_inputs(ids, 4, end_id=-1, exclude_input_in_output=False)
    )
    plain = stream_core(served.grpc_url, core_inputs(ids, 4, end_id=-1))
    assert echoed.tokens == ids + plain.tokens
    assert plain.tokens == reference.greedy(ids, 4)


def test_bls_refuses_streaming_with_a_pointer_to_the_ensemble(served) -> None:
    with pytest.raises(UserError, match="not decoupled and cannot stream"):
        generate(served, "Hi", model="tensorrt_llm_bls", stream=True)
    client = grpcclient.InferenceServerClient(served.grpc_url)
    inputs = []
    for name, arr, dtype in (
        ("text_input", np.array([[b"Hi"]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[4]], dtype=np.int32), "INT32"),
        ("stream", np.array([[True]], dtype=bool), "BOOL"),
    ):
        t = grpcclient.InferInput(name, [1, 1], dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    with pytest.raises(Exception, match="generate_stream"):
        client.infer("tensorrt_llm_bls", inputs)
    client.close()


def test_runtime_metrics_are_exported(served) -> None:
    assert metric(served.metrics_url, "nv_trt_llm_request_metrics", request_type="max") == 16
    assert _active(served) is not None
    with pytest.raises(RuntimeFailure, match="no_such_model"):  # a model that does not exist
        generate(served, "Hi", model="no_such_model")


@pytest.fixture(scope="module")
def served_whole(portable_engine, reference, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The portable flavor rendered with --no-streaming: a non-decoupled core model."""
    from trtbuild.repository import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import RuntimeLimits, ServeSpec
    from trtbuild.tiny_model import repo_spec

    limits = RuntimeLimits(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    spec = repo_spec(portable_engine, limits=limits).model_copy(update={"streaming": False})
    repo = render_repository(spec, tmp_path_factory.mktemp("whole") / "repository")
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3)
    with TritonServer(serve, quiet=True) as server:
        yield server


def test_a_non_streaming_deployment_answers_whole_requests(
    served_whole, reference: Reference
) -> None:  # type: ignore[no-untyped-def]
    """Core model not decoupled: a batch mixing good and refused requests answers each one."""
    import tritonclient.http as http

    prompts = ["Whole answers", "Batched with", "Another one"]
    expected = [reference.decode(reference.greedy(p, 12)) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        good = list(
            pool.map(
                lambda p: generate(
                    served_whole,
                    p,
                    protocol="http",
                    model="tensorrt_llm_bls",
                    max_tokens=12,
                    end_id=-1,
                ),
                prompts,
            )
        )
    assert [r.text for r in good] == expected
    # plain /infer reaches the core model itself now; requests past the limit are refused one by one
    ids = reference.encode("Whole answers")

    def core(max_tokens: int):  # type: ignore[no-untyped-def]
        tensors = []
        for name, arr in (
            ("input_ids", np.array([ids], dtype=np.int32)),
            ("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
            ("request_output_len", np.array([[max_tokens]], dtype=np.int32)),
            ("end_id", np.array([[-1]], dtype=np.int32)),
        ):
            t = http.InferInput(name, list(arr.shape), "INT32")
            t.set_data_from_numpy(arr)
            tensors.append(t)
        # one client per thread: tritonclient's HTTP client is not safe to share between threads
        with http.InferenceServerClient(served_whole.http_url) as client:
            wanted = [http.InferRequestedOutput("output_ids")]
            return client.infer("tensorrt_llm", tensors, outputs=wanted)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(core, n) for n in (8, 500, 8, 500)]
        outcomes = [f.exception() or f.result() for f in futures]
    for n, outcome in zip((8, 500, 8, 500), outcomes, strict=True):
        if n == 8:
            assert outcome.as_numpy("output_ids").reshape(-1).tolist() == reference.greedy(ids, 8)
        else:
            assert "exceeds max_seq_len 128" in str(outcome)
