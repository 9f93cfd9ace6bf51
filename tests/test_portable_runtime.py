"""The served inflight-batching repository with the portable runtime, end to end.

One real tritonserver (session fixture ``served``) runs preprocessing -> tensorrt_llm (trtbuild's
portable runtime) -> postprocessing, plus the BLS front. Expected outputs come from transformers'
``generate`` on the same weights, never from hard-coded values.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from tests.conftest import STOP_PROMPT, Reference
from tests.test_cli import run_main
from tests.test_poisoned_requests import CLIENT_TYPES, Stream, core, ensemble, load_types, tensors
from tests.triton_helpers import core_inputs, metric, stream_core
from trtbuild.client import Client
from trtbuild.errors import InvalidRequest, RuntimeFailure, UserError
from trtbuild.specs import InferSpec, SamplingSpec

pytestmark = pytest.mark.server


@pytest.fixture(scope="module", autouse=True)
def _declared_types(served) -> None:  # type: ignore[no-untyped-def]
    load_types(served.grpc_url)


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
    # it really streamed: several responses, each with the tokens made since the last one (one
    # per decode step, or several when they waited for the sender: it merges what waited)
    assert len(got.responses) > 1
    assert [int(r["sequence_length"][0, 0]) for r in got.responses] == [
        r["output_ids"].shape[-1] for r in got.responses
    ]
    assert all(r["output_ids"].shape[-1] >= 1 for r in got.responses)


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


def test_the_engine_counters_are_served_as_metrics(served, reference: Reference) -> None:
    """The portable runtime's counters (trtbuild_runtime_counters, one ``counter`` label value
    each) follow the engine: a request's prefill shows, and every counter is there."""

    def counter(name: str) -> float | None:
        return metric(served.metrics_url, "trtbuild_runtime_counters", counter=name)

    before = counter("prefills")
    assert before is not None
    stream_core(served.grpc_url, core_inputs(reference.encode("Count me"), 4, end_id=-1))
    _settled_iterations(served)
    assert (counter("prefills") or 0) >= before + 1
    for name in ("chained_steps", "synced_launches", "mixed_steps", "ended_row_steps"):
        assert counter(name) is not None, name
    assert counter("ended_row_steps_queued") is not None


def test_cancellation_stops_generation_and_frees_the_slot(served, reference: Reference) -> None:
    ids = reference.encode("Cancel me after a few tokens")
    before = _iterations(served)
    got = stream_core(
        served.grpc_url, core_inputs(ids, 480, end_id=-1, streaming=True), cancel_after=5
    )
    assert got.error is None and len(got.responses) == 5
    steps = _settled_iterations(served) - before  # the engine went idle: nothing runs on
    assert steps < 240, f"generation ran {steps} steps after cancel (asked for 480)"
    assert _active(served) == 0
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
    # gRPC stream errors carry a message but no status code: the models' mark says it was the
    # request (exit 2); HTTP and unary calls say 400/INVALID
    with pytest.raises(InvalidRequest, match=message) as streamed:
        generate(served, stream=True, **kwargs)
    assert streamed.value.exit_code == 2
    with pytest.raises(InvalidRequest, match=message):
        generate(served, protocol="http", **kwargs)
    with pytest.raises(InvalidRequest, match=message):
        generate(served, model="tensorrt_llm_bls", **kwargs)
    ok = generate(served, "Still serving?", stream=True, max_tokens=4, end_id=-1)
    assert ok.text == reference.decode(reference.greedy("Still serving?", 4))


def test_trtbuild_infer_exits_2_for_a_request_the_decoupled_ensemble_refuses(
    served, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """Over gRPC the decoupled ensemble answers on a stream, whose errors carry no status code:
    the models' mark still makes it the user's error, one line, exit 2."""
    with Client(served.grpc_url) as client:  # the ensemble is decoupled through its core model
        assert client.model_config("tensorrt_llm")["model_transaction_policy"]["decoupled"]
    code, out, err = run_main(
        ["infer", "Hi", "--url", served.grpc_url, "--max-tokens", "600"], capsys
    )
    assert (code, out) == (2, "")
    assert err.startswith("Error: ensemble: ") and err.count("\n") == 1
    assert "exceeds max_seq_len 512" in err


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
    assert got.error is not None and "beam_width 2 is not supported" in got.error
    got = stream_core(served.grpc_url, core_inputs([1, 5, 6], 4, lora_task_id=3))
    assert got.error is not None and "lora_task_id asks for a LoRA adapter" in got.error
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


# -- upstream's defaults, shapes and outputs -----------------------------------------------------
PRE_TO_CORE = {  # what upstream's ensemble maps from preprocessing into tensorrt_llm
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
    "DECODER_INPUT_ID": "decoder_input_ids", "REQUEST_DECODER_INPUT_LEN": "decoder_input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len", "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list", "EMBEDDING_BIAS": "embedding_bias",
    "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id",
    "OUT_PROMPT_TABLE_EXTRA_IDS": "prompt_table_extra_ids",
}  # fmt: skip


def _infer(url: str, model: str, values: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(url)
    inputs = []
    for name, arr in values.items():
        dtype = "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    try:
        return client.infer(model, inputs)
    finally:
        client.close()


def _preprocess(served, prompts: list[str], max_tokens: int, **extra: np.ndarray):  # type: ignore[no-untyped-def]
    values = {
        "QUERY": np.array([[p.encode()] for p in prompts], dtype=object),
        "REQUEST_OUTPUT_LEN": np.full((len(prompts), 1), max_tokens, dtype=np.int32),
        **extra,
    }
    result = _infer(served.grpc_url, "preprocessing", values)
    return {n: result.as_numpy(n) for n in PRE_TO_CORE if result.as_numpy(n) is not None}


def _as_core(pre: dict[str, np.ndarray], **extra: np.ndarray) -> list[grpcclient.InferInput]:
    values = {PRE_TO_CORE[n]: arr for n, arr in pre.items()}
    values.update(extra)
    inputs = []
    for name, arr in values.items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return inputs


def test_preprocessing_emits_upstreams_outputs_and_the_core_accepts_them(
    served, reference: Reference, chat_end_token
) -> None:  # type: ignore[no-untyped-def]
    from trtbuild.tiny_model import EOS_ID, EOT_ID, PAD_ID

    prompt = "Upstream defaults reach the core"
    ids = reference.encode(prompt)
    pre = _preprocess(
        served,
        [prompt],
        12,
        END_ID=np.array([[-1]], dtype=np.int32),
        PROMPT_TABLE_EXTRA_ID=np.array([[7]], dtype=np.uint64),
    )
    assert pre["INPUT_ID"].dtype == np.int32 and pre["INPUT_ID"].tolist() == [ids]
    assert pre["REQUEST_INPUT_LEN"].tolist() == [[len(ids)]]
    assert pre["DECODER_INPUT_ID"].tolist() == [[PAD_ID]]  # upstream: the pad id, length 1
    assert pre["REQUEST_DECODER_INPUT_LEN"].tolist() == [[1]]
    assert pre["BAD_WORDS_IDS"].shape == pre["STOP_WORDS_IDS"].shape == (1, 2, 0)
    assert pre["EMBEDDING_BIAS"].shape == (1, 0) and pre["EMBEDDING_BIAS"].dtype == np.float32
    assert pre["OUT_END_ID"].tolist() == [[-1]] and pre["OUT_PAD_ID"].tolist() == [[PAD_ID]]
    assert pre["REQUEST_OUTPUT_LEN"].tolist() == [[12]]
    extra = pre["OUT_PROMPT_TABLE_EXTRA_IDS"]  # text only: no prompt-table position
    assert extra.dtype == np.uint64 and extra.shape == (1, len(ids)) and not extra.any()
    # all of it, as upstream's ensemble maps it, and the client's defaults beside
    got = Stream(
        served.grpc_url,
        "tensorrt_llm",
        _as_core(
            pre,
            streaming=np.array([[True]]),
            len_penalty=np.array([[1.0]], dtype=np.float32),
            beam_width=np.array([[1]], dtype=np.int32),
            num_return_sequences=np.array([[1]], dtype=np.int32),
        ),
    ).wait()
    assert got.error is None and got.tokens == reference.greedy(ids, 12)
    # the tokenizer's end id: the model's other end tokens become stop words
    default = _preprocess(served, [prompt], 12)
    assert default["OUT_END_ID"].tolist() == [[EOS_ID]]
    words = default["STOP_WORDS_IDS"][0]
    assert words.tolist() == [[EOT_ID, chat_end_token[0]], [1, 2]]


def test_embedding_bias_words_work_exactly_as_upstreams(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    words, weights = ["model", "Triton"], [9.0, -2.5]
    prompt = "Bias the next words"
    pre = _preprocess(
        served,
        [prompt],
        16,
        EMBEDDING_BIAS_WORDS=np.array([[w.encode() for w in words]], dtype=object),
        EMBEDDING_BIAS_WEIGHTS=np.array([weights], dtype=np.float32),
    )
    # upstream: a vocabulary-sized zero vector; each weight added to every id of
    # tokenizer.encode(word) (transformers' default: special tokens included)
    tok = reference.tokenizer
    expected = np.zeros(len(tok.vocab), dtype=np.float32)
    for word, weight in zip(words, weights, strict=True):
        for i in tok.encode(word):
            expected[i] += weight
    assert pre["EMBEDDING_BIAS"].shape == (1, len(tok.vocab))
    assert np.array_equal(pre["EMBEDDING_BIAS"][0], expected)
    bias = torch.tensor(expected)

    class Add(LogitsProcessor):
        def __call__(self, input_ids, scores):  # type: ignore[no-untyped-def]
            return scores + bias

    ids = reference.encode(prompt)
    with torch.no_grad():
        out = reference.model.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
            pad_token_id=3, logits_processor=LogitsProcessorList([Add()]),
        )  # fmt: skip
    biased = out[0][len(ids) :].tolist()
    assert biased != reference.greedy(ids, 16)  # the bias matters
    stream = Stream(
        served.grpc_url,
        "ensemble",
        ensemble(
            prompt, 16, end_id=-1, embedding_bias_words=[words], embedding_bias_weights=[weights]
        ),
    ).wait()
    assert stream.error is None and stream.text == reference.decode(biased)


def test_response_shapes_are_upstreams(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    """output_ids [1, beam, T], sequence_length / cum_log_probs [1, beam], output_log_probs
    [1, beam, T] (TensorRT-LLM's utils.cc); text_output one string per sequence, [1], so that
    upstream clients' ``as_numpy('text_output')[0].decode()`` works."""
    ids = reference.encode("Shapes")
    got = stream_core(served.grpc_url, core_inputs(ids, 5, end_id=-1, return_log_probs=True))
    r = got.responses[-1]
    assert r["output_ids"].shape == (1, 1, 5) and r["sequence_length"].shape == (1, 1)
    assert r["cum_log_probs"].shape == (1, 1) and r["output_log_probs"].shape == (1, 1, 5)
    assert "batch_index" not in r  # one sequence: upstream sends it only for batches
    # no output named: Triton asks for every output; trtbuild's output_text is left out (only
    # callers that name it, the ensemble and the BLS, pay for detokenizing)
    assert "output_text" not in r and "output_ids" in r
    for stream in (True, False):
        s = Stream(
            served.grpc_url, "ensemble", ensemble("Shapes", 6, end_id=-1, stream=stream)
        ).wait()
        texts = [r["text_output"] for r in s.responses]
        assert texts and all(t.shape == (1,) for t in texts)
        expected = reference.decode(reference.greedy("Shapes", 6))
        assert "".join(t[0].decode() for t in texts) == expected


def test_perf_metrics_are_real(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    from trtbuild.runtime.engine import TOKENS_PER_BLOCK

    prompt = list(range(5, 44))  # 39 tokens
    got = Stream(
        served.grpc_url,
        "tensorrt_llm",
        core(prompt, 40, end_id=-1, streaming=True, return_perf_metrics=True),
    ).wait()
    assert got.error is None and got.tokens == reference.greedy(prompt, 40)
    ints = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
            "total_accepted_draft_tokens", "total_draft_tokens")  # fmt: skip
    times = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns",
             "last_token_time_ns")  # fmt: skip
    for r in got.responses:
        for name in ints:
            assert r[name].shape == (1, 1) and r[name].dtype == np.int32, name
        for name in times:
            assert r[name].shape == (1, 1) and r[name].dtype == np.int64, name
        assert r["acceptance_rate"].dtype == np.float32 and float(r["acceptance_rate"][0, 0]) == 0
    v = [{k: int(r[k].reshape(-1)[0]) for k in (*ints, *times)} for r in got.responses]
    seen = 0  # tokens received so far (a response carries several when they waited to be sent)
    for r, row in zip(got.responses, v, strict=True):
        seen += r["output_ids"].shape[-1]
        # the KV this request holds when its newest token was made, in blocks of 32, none reused
        blocks = -(-(39 + seen - 1) // TOKENS_PER_BLOCK)
        assert row["kv_cache_alloc_new_blocks"] == row["kv_cache_alloc_total_blocks"] == blocks
        assert row["kv_cache_reused_blocks"] == row["total_draft_tokens"] == 0
        assert row["total_accepted_draft_tokens"] == 0
        assert row["arrival_time_ns"] <= row["first_scheduled_time_ns"]
        assert row["first_scheduled_time_ns"] <= row["first_token_time_ns"]
        assert row["first_token_time_ns"] <= row["last_token_time_ns"]
    assert v[-1]["kv_cache_alloc_total_blocks"] == 3  # 39 + 39 tokens
    assert len({row["first_token_time_ns"] for row in v}) == 1
    assert [row["last_token_time_ns"] for row in v] == sorted(
        row["last_token_time_ns"] for row in v
    )
    # through the ensemble too
    ens = Stream(
        served.grpc_url, "ensemble", ensemble("Perf", 3, end_id=-1, return_perf_metrics=True)
    ).wait()
    assert all(r["kv_cache_alloc_total_blocks"].shape == (1, 1) for r in ens.responses)


# -- a batch dimension > 1 -------------------------------------------------------------------------
def test_a_batch_of_sequences_answers_like_tensorrt_llm(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    from trtbuild.tiny_model import PAD_ID

    prompts = [reference.encode(p) for p in ("Batch row zero", "Row one", "And a longer row two")]
    lengths = [9, 5, 12]
    width = max(len(p) for p in prompts)
    ids = np.full((3, width), PAD_ID, dtype=np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p

    def request(stream: bool) -> list[grpcclient.InferInput]:
        values = {
            "input_ids": ids,
            "input_lengths": np.array([[len(p)] for p in prompts], dtype=np.int32),
            "request_output_len": np.array([[n] for n in lengths], dtype=np.int32),
            "end_id": np.array([[-1]] * 3, dtype=np.int32),
            "streaming": np.array([[stream]] * 3),
        }
        return _as_core({}, **values)

    expected = [reference.greedy(p, n) for p, n in zip(prompts, lengths, strict=True)]
    for stream in (True, False):
        got = Stream(served.grpc_url, "tensorrt_llm", request(stream), batched=True).wait()
        assert got.errors == []
        rows: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for r in got.responses:
            assert r["batch_index"].shape == (1, 1) and r["output_ids"].shape[:2] == (1, 1)
            rows[int(r["batch_index"][0, 0])] += r["output_ids"].ravel().tolist()
        assert [rows[i] for i in range(3)] == expected
        # one final flag, on the last response, after every sequence ended
        assert got.finals == 1 and got.responses[-1]["_final"]
        assert [r["_final"] for r in got.responses].count(True) == 1
        if not stream:
            assert len(got.responses) == 3
    # through the ensemble: preprocessing takes QUERY [B, 1] the way upstream's does
    texts = ["Two prompts", "in one request"]
    pre = _preprocess(served, texts, 6)
    encoded = [reference.encode(t) for t in texts]
    assert pre["REQUEST_INPUT_LEN"].tolist() == [[len(e)] for e in encoded]
    assert pre["INPUT_ID"].shape == (2, max(len(e) for e in encoded))
    assert pre["INPUT_ID"][0, len(encoded[0]) :].tolist() == [PAD_ID] * (
        pre["INPUT_ID"].shape[1] - len(encoded[0])
    )
    values = {"text_input": [[t] for t in texts], "max_tokens": [[6], [6]], "stream": [[True]] * 2,
              "end_id": [[-1], [-1]]}  # fmt: skip
    ens = Stream(served.grpc_url, "ensemble", tensors(values, CLIENT_TYPES), batched=True).wait()
    by_row: dict[int, str] = {0: "", 1: ""}
    for r in ens.responses:
        if r.get("text_output") is not None:
            by_row[int(r["batch_index"][0, 0])] += r["text_output"][0].decode()
    assert [by_row[0], by_row[1]] == [reference.decode(reference.greedy(e, 6)) for e in encoded]


def test_a_failing_sequence_of_a_batch_fails_alone(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    """Row 1 bans every token (legal values, impossible logits): its error carries no final flag;
    row 0 runs to the end and ends the request."""
    from trtbuild.tiny_model import PAD_ID

    prompt = reference.encode("Healthy row")
    ids = np.array([prompt, [1, 5] + [PAD_ID] * (len(prompt) - 2)], dtype=np.int32)
    bias = np.zeros((2, 2048), dtype=np.float32)
    bias[1, :] = -np.inf
    values = {
        "input_ids": ids,
        "input_lengths": np.array([[len(prompt)], [2]], dtype=np.int32),
        "request_output_len": np.array([[10], [10]], dtype=np.int32),
        "end_id": np.array([[-1], [-1]], dtype=np.int32),
        "embedding_bias": bias,
        "streaming": np.array([[True], [True]]),
    }
    got = Stream(served.grpc_url, "tensorrt_llm", _as_core({}, **values), batched=True).wait()
    assert len(got.errors) == 1 and "sequence 1:" in got.errors[0]
    assert got.tokens == reference.greedy(prompt, 10) and got.finals == 1


def test_a_non_streaming_deployment_refuses_a_batch_like_tensorrt_llm(served_whole) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as http

    tensors_ = []
    for name, arr in (
        ("input_ids", np.array([[1, 5], [1, 6]], dtype=np.int32)),
        ("input_lengths", np.array([[2], [2]], dtype=np.int32)),
        ("request_output_len", np.array([[4], [4]], dtype=np.int32)),
    ):
        t = http.InferInput(name, list(arr.shape), "INT32")
        t.set_data_from_numpy(arr)
        tensors_.append(t)
    with (
        http.InferenceServerClient(served_whole.http_url) as client,
        pytest.raises(Exception, match="needs the decoupled transaction policy") as exc,
    ):
        client.infer("tensorrt_llm", tensors_)
    assert exc.value.status() == "400"  # type: ignore[attr-defined]


# -- overload: the queue beyond the free slots -------------------------------------------------------
def _waiting(server) -> float | None:  # type: ignore[no-untyped-def]
    return metric(server.metrics_url, "nv_trt_llm_request_metrics", request_type="waiting")


def test_a_burst_fills_the_slots_and_the_queue_then_requests_are_refused_as_busy(
    served, reference: Reference
) -> None:  # type: ignore[no-untyped-def]
    """16 slots + max_queue_size 8: a burst of 24 is accepted; the 25th is UNAVAILABLE, marked
    retryable, and trtbuild's client says to retry (exit 1)."""
    from trtbuild.client import ServerBusy

    holders = [
        Stream(
            served.grpc_url,
            "tensorrt_llm",
            core([1, 5, 6 + i], 480, end_id=-1, streaming=True),
            request_id=f"burst-{i}",
            send=False,
        )
        for i in range(24)
    ]
    for holder in holders:  # all connected first: the burst arrives within milliseconds
        holder.send()
    deadline = time.monotonic() + 30
    while (_active(served), _waiting(served)) != (16, 8) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (_active(served), _waiting(served)) == (16, 8)
    assert not any(h.errors for h in holders)  # all 24 accepted
    refused = Stream(served.grpc_url, "tensorrt_llm", core([1, 5, 6], 4, streaming=True)).wait()
    assert refused.error is not None and "(retryable)" in refused.error
    assert "8 requests already wait beyond the 16 batch slots" in refused.error
    for protocol in ("grpc", "http"):
        with pytest.raises(ServerBusy, match="retry the request later") as exc:
            generate(served, "One too many", protocol=protocol, stream=True, max_tokens=4)
        assert exc.value.exit_code == 1
    with Client(served.grpc_url) as client:
        for i in range(24):
            client.stop("ensemble", f"burst-{i}")
    for h in holders:
        h.wait()
        assert h.errors == [] and len(h.tokens) < 480
    ok = generate(served, "Served again", stream=True, max_tokens=4, end_id=-1)
    assert ok.text == reference.decode(reference.greedy("Served again", 4))


# -- cancellation through the ensemble ---------------------------------------------------------------
class _WalkAway(Exception):
    pass


def test_cancelled_ensemble_streams_free_their_slots(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    """Triton 2.51 does not forward a client's cancel to the ensemble's tensorrt_llm; trtbuild's
    client also sends `stop` with the stream's request id, so the slots free at once."""
    start = threading.Barrier(16)

    def walk_away(i: int) -> None:
        pieces = []

        def on_piece(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 3:
                raise _WalkAway

        start.wait()
        s = spec(served, f"Walk away {i}", stream=True, max_tokens=480, end_id=-1)
        with Client(s.url, s.protocol) as client, pytest.raises(_WalkAway):
            client.generate(s, on_piece=on_piece)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(walk_away, range(16)))
    began = time.monotonic()
    after = generate(served, "After the cancels", stream=True, max_tokens=4, end_id=-1)
    assert time.monotonic() - began < 1.0  # the slots are free: it did not wait behind 16 streams
    assert after.text == reference.decode(reference.greedy("After the cancels", 4))
    deadline = time.monotonic() + 10
    while _active(served) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _active(served) == 0


def test_an_abandoned_http_stream_is_stopped_too(served) -> None:  # type: ignore[no-untyped-def]
    """Triton 2.51's HTTP generate_stream has no cancellation at all: the client stops by id."""
    before = _iterations(served)
    pieces: list[str] = []

    def on_piece(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            raise _WalkAway

    s = spec(served, "Walk away over HTTP", protocol="http", stream=True, max_tokens=480, end_id=-1)
    with Client(s.url, s.protocol) as client, pytest.raises(_WalkAway):
        client.generate(s, on_piece=on_piece)
    assert _settled_iterations(served) - before < 240, "generation ran on after the client left"


def _settled_iterations(server) -> float:  # type: ignore[no-untyped-def]
    """The iteration counter once the engine has stopped stepping (no change for 0.5 s)."""
    deadline = time.monotonic() + 60
    last = _iterations(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _iterations(server)
        if now == last:
            return now
        last = now
    raise AssertionError("the engine never went idle")


def test_a_cancel_alone_does_not_reach_the_ensembles_core_model(served) -> None:  # type: ignore[no-untyped-def]
    """What a client that only cancels gets (Triton 2.51): its stream ends, but tensorrt_llm
    generates on to max_tokens. (If a later Triton forwards cancellation, this test says so.)"""
    before = _iterations(served)
    s = Stream(served.grpc_url, "ensemble", ensemble("Only cancel", 400, end_id=-1))
    while len(s.responses) < 3:
        time.sleep(0.005)
    s.close()  # cancels the stream, sends no stop
    assert _settled_iterations(served) - before >= 390  # it ran to (about) max_tokens


def test_stop_with_the_ensemble_streams_request_id_ends_it(served) -> None:  # type: ignore[no-untyped-def]
    """The ensemble hands the client's request id to tensorrt_llm, so `stop` finds it."""
    s = Stream(served.grpc_url, "ensemble", ensemble("Stop me", 480, end_id=-1), request_id="ens-7")
    while len(s.responses) < 3:
        time.sleep(0.005)
    with Client(served.http_url, "http") as client:
        assert client.stop("ensemble", "ens-7")
    s.wait(30)
    assert s.errors == [] and len(s.responses) < 240


# -- the engine thread dies ----------------------------------------------------------------------------
FAULT = '\nparameters: {\n  key: "test_fault_request_id"\n  value: { string_value: "die" }\n}\n'


@pytest.fixture
def fragile(portable_engine, tmp_path):  # type: ignore[no-untyped-def]
    """A server of its own whose runtime kills its engine thread on request id "die"."""
    from trtbuild.render import render_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import ServeSpec, ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=4, max_input_len=64, max_seq_len=512, max_num_tokens=128)
    repo = render_repository(repo_spec(portable_engine, limits=limits), tmp_path / "repository")
    config = repo / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text() + FAULT)
    server = TritonServer(
        ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=3),
        quiet=True,
    )
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_dead_engine_answers_everyone_and_the_model_dies(fragile) -> None:  # type: ignore[no-untyped-def]
    running = [
        Stream(
            fragile.grpc_url, "tensorrt_llm", core([1, 5, 6 + i], 480, end_id=-1, streaming=True)
        )
        for i in range(3)
    ]
    for r in running:
        assert r.first.wait(30)
    trigger = Stream(fragile.grpc_url, "tensorrt_llm", core([1, 5], 4), request_id="die")
    for s in [*running, trigger]:
        s.wait(30)
        assert s.error is not None and "engine thread died" in s.error, s.error
    later = Stream(fragile.grpc_url, "tensorrt_llm", core([1, 5], 4)).wait(30)
    assert later.error is not None  # an error, never silence
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _ready(fragile):
        time.sleep(0.1)
    assert not _ready(fragile)  # the stub exited: the model is gone


def _ready(server) -> bool:  # type: ignore[no-untyped-def]
    try:
        with urllib.request.urlopen(  # noqa: S310 - loopback
            f"http://{server.http_url}/v2/models/tensorrt_llm/ready", timeout=2
        ) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False
