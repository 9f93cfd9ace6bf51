"""Poisoned and malformed requests against the served portable runtime (session fixture ``served``).

Each poisoned request is sent while eight greedy streams run; all eight must finish with exactly
transformers' greedy tokens, and the poison must get its own error (or, when it is a legal but
extreme value, run without touching the others). Then a table of malformed requests: each gets
its specific error, and the server keeps serving.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import Reference
from trtbuild.client import Client
from trtbuild.errors import InvalidRequest
from trtbuild.specs import InferSpec

pytestmark = pytest.mark.server

_NP = {
    "INT32": np.int32, "FP32": np.float32, "BOOL": bool, "UINT64": np.uint64, "FP16": np.float16,
    "STRING": object, "INT64": np.int64,
}  # fmt: skip
# the data types the served repository declares (read once from its configs)
CORE_TYPES: dict[str, str] = {}
CLIENT_TYPES: dict[str, str] = {}


def load_types(url: str) -> None:
    """Fill CORE_TYPES / CLIENT_TYPES from the served configs (once)."""
    if CORE_TYPES and CLIENT_TYPES:
        return
    client = grpcclient.InferenceServerClient(url)
    for model, table in (("tensorrt_llm", CORE_TYPES), ("ensemble", CLIENT_TYPES)):
        config = client.get_model_config(model, as_json=True)["config"]
        table.update({t["name"]: t["data_type"].removeprefix("TYPE_") for t in config["input"]})
    client.close()


@pytest.fixture(scope="module", autouse=True)
def _declared_types(served) -> None:  # type: ignore[no-untyped-def]
    load_types(served.grpc_url)


def tensors(values: dict[str, Any], types: dict[str, str]) -> list[grpcclient.InferInput]:
    """gRPC inputs with the declared data types; scalars become [1, 1]."""
    out = []
    for name, value in values.items():
        dtype = types[name]
        with np.errstate(over="ignore"):  # -1e39 as FP32 is -inf: exactly what is being sent
            arr = np.array(value, dtype=_NP[dtype])
        if arr.ndim == 0:
            arr = arr.reshape(1, 1)
        if dtype == "STRING":
            arr = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(
                arr
            )
        t = grpcclient.InferInput(name, list(arr.shape), "BYTES" if dtype == "STRING" else dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def core(ids: list[int], max_tokens: int, **extra: Any) -> list[grpcclient.InferInput]:
    values = {"input_ids": [ids], "input_lengths": len(ids), "request_output_len": max_tokens}
    values.update(extra)
    return tensors(values, CORE_TYPES)


def ensemble(prompt: str, max_tokens: int, **extra: Any) -> list[grpcclient.InferInput]:
    values = {"text_input": [[prompt]], "max_tokens": max_tokens, "stream": True, **extra}
    return tensors(values, CLIENT_TYPES)


class Stream:
    """One request over its own gRPC stream, read on tritonclient's thread."""

    def __init__(
        self,
        url: str,
        model: str,
        inputs: list[grpcclient.InferInput],
        *,
        request_id: str = "",
        outputs: list[str] | None = None,
        batched: bool = False,
        send: bool = True,
    ) -> None:
        """``send=False``: connect now, send with ``send()`` (a burst without connection set-up
        between its requests)."""
        self.responses: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.finals = 0
        self.batched = batched
        self.first = threading.Event()
        self.done = threading.Event()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=self._on)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        self._request = (model, inputs, request_id, wanted)
        if send:
            self.send()

    def send(self) -> None:
        model, inputs, request_id, wanted = self._request
        self.client.async_stream_infer(
            model,
            inputs,
            request_id=request_id,
            enable_empty_final_response=True,
            outputs=wanted,
        )

    def _on(self, result: Any, error: Any) -> None:
        if error is not None:
            self.errors.append(str(error))
            self.first.set()
            if not self.batched:
                self.done.set()
            return
        response = result.get_response()
        outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
        final = response.parameters.get("triton_final_response")
        is_final = final is not None and final.bool_param
        if outputs:
            outputs["_final"] = is_final
            self.responses.append(outputs)
        self.first.set()
        if is_final:
            self.finals += 1
            self.done.set()

    def wait(self, timeout: float = 60) -> Stream:
        assert self.done.wait(timeout), "no final response"
        self.close()
        return self

    def close(self) -> None:
        self.client.stop_stream(cancel_requests=not self.done.is_set())
        self.client.close()

    @property
    def error(self) -> str | None:
        return self.errors[0] if self.errors else None

    @property
    def tokens(self) -> list[int]:
        return [int(x) for r in self.responses for x in r.get("output_ids", np.zeros(0)).ravel()]

    @property
    def text(self) -> str:
        return "".join(
            r["text_output"][0].decode() for r in self.responses if r.get("text_output") is not None
        )


INNOCENT = [f"Innocent stream {i} keeps decoding" for i in range(8)]


def _innocents(served, reference: Reference) -> tuple[list[Stream], list[list[int]]]:  # type: ignore[no-untyped-def]
    prompts = [reference.encode(p) for p in INNOCENT]
    streams = [
        Stream(served.grpc_url, "tensorrt_llm", core(ids, 48, end_id=-1, streaming=True))
        for ids in prompts
    ]
    for s in streams:
        assert s.first.wait(30)  # all eight are decoding when the poison arrives
    return streams, [reference.greedy(ids, 48) for ids in prompts]


VOCAB = 2048
BIG_PROMPT = "x" * 5_000_000  # 5 MB: bounded in bytes before preprocessing tokenizes anything

# (name, model, inputs builder, expected error (None: a legal value; it runs), error at sampling?)
POISONS: list[tuple[str, str, Any, str | None]] = [
    ("temperature-nan", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, temperature=float("nan"), runtime_top_k=5),
     "temperature must be a finite number, got nan"),
    ("temperature-inf", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, temperature=float("inf"), runtime_top_k=5),
     "temperature must be a finite number, got inf"),
    ("temperature-huge", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, temperature=3e38, runtime_top_k=5, end_id=-1), None),
    ("top-p-nan", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, runtime_top_p=float("nan")), "runtime_top_p (top_p) must be a"),
    ("top-p-2", "tensorrt_llm", lambda: core([1, 5, 6], 8, runtime_top_p=2.0), "must be in [0, 1]"),
    ("presence-minus-1e39-top-k-5-ensemble", "ensemble",
     lambda: ensemble("Poison", 8, top_k=5, presence_penalty=-1e39),
     "presence_penalty must be a finite number, got -inf"),
    ("frequency-inf", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, frequency_penalty=float("inf")), "frequency_penalty must be a fin"),
    ("frequency-huge-sampled", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, frequency_penalty=3e38, runtime_top_k=5, end_id=-1), None),
    ("repetition-denormal", "tensorrt_llm",  # legal (> 0), but the logits overflow to +inf
     lambda: core([1, 5, 6], 8, repetition_penalty=1e-45, end_id=-1),
     "logits became NaN, +inf or all -inf"),
    ("repetition-zero", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, repetition_penalty=0.0), "repetition_penalty must be > 0"),
    ("bad-word-beyond-vocab", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, bad_words_list=[[[VOCAB + 7], [1]]]),
     f"bad_words_list (bad_words) holds token id {VOCAB + 7}"),
    ("stop-word-beyond-vocab", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, stop_words_list=[[[5, 10**6], [2, -1]]]),
     "stop_words_list (stop_words) holds token id 1000000"),
    ("end-id-1e6", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, end_id=10**6), "end_id must be -1 or a token id in [0, 2048)"),
    ("top-k-1e9", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, runtime_top_k=10**9), "must be in [0, 2048] (the vocabulary size)"),
    ("input-lengths-minus-2", "tensorrt_llm",
     lambda: tensors({"input_ids": [[1, 5, 6]], "input_lengths": -2, "request_output_len": 8},
                     CORE_TYPES),
     "input_lengths -2 is not in [1, 3]"),
    ("input-lengths-50-of-3", "tensorrt_llm",
     lambda: tensors({"input_ids": [[1, 5, 6]], "input_lengths": 50, "request_output_len": 8},
                     CORE_TYPES),
     "input_lengths 50 is not in [1, 3]"),
    ("embedding-bias-wrong-size", "tensorrt_llm",
     lambda: core([1, 5, 6], 8, embedding_bias=[[0.5] * 7]), "embedding_bias"),
    ("embedding-bias-all-minus-inf", "tensorrt_llm",  # legal, but bans every token
     lambda: core([1, 5, 6], 8, embedding_bias=[[float("-inf")] * VOCAB], end_id=-1),
     "logits became NaN, +inf or all -inf"),
    ("prompt-5mb", "ensemble", lambda: ensemble(BIG_PROMPT, 8),
     "text_input has 5,000,000 bytes; this deployment accepts at most 8,192 bytes before tokenizing"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "make", "expected"),
    [p[1:] for p in POISONS],
    ids=[p[0] for p in POISONS],
)
def test_a_poisoned_request_fails_alone_while_eight_streams_run(
    served, reference: Reference, model: str, make: Any, expected: str | None
) -> None:  # type: ignore[no-untyped-def]
    streams, greedy = _innocents(served, reference)
    poison = Stream(served.grpc_url, model, make()).wait()
    if expected is None:
        assert poison.error is None and len(poison.tokens) == 8
    else:
        assert poison.error is not None and expected in poison.error, poison.error
    for stream, want in zip(streams, greedy, strict=True):
        stream.wait()
        assert stream.error is None
        assert stream.tokens == want  # token-identical to transformers' greedy output


def test_the_prompt_bound_comes_before_the_tokenizer(served) -> None:  # type: ignore[no-untyped-def]
    """Just over the byte bound: refused by bytes, not after tokenizing (a tokens message)."""
    limit = 256 * 32  # max_input_len 256 x 32 bytes per token
    over = Stream(served.grpc_url, "ensemble", ensemble("a" * (limit + 1), 4)).wait()
    assert over.error is not None and f"has {limit + 1:,} bytes" in over.error
    at = Stream(served.grpc_url, "ensemble", ensemble("a " * (limit // 2), 4)).wait()
    assert at.error is not None and "the prompt has" in at.error and "tokens" in at.error


# -- malformed requests: each gets its specific error ---------------------------------------------
def _http(server, path: str, body: dict[str, Any]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    import json

    req = urllib.request.Request(
        f"http://{server.http_url}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


MALFORMED: list[tuple[str, str, Any, str]] = [
    ("ensemble-no-text-input", "ensemble",
     lambda: tensors({"max_tokens": 4, "stream": True}, CLIENT_TYPES), "text_input is required"),
    ("ensemble-no-max-tokens", "ensemble",
     lambda: tensors({"text_input": [["Hi"]], "stream": True}, CLIENT_TYPES),
     "max_tokens is required"),
    ("ensemble-empty-prompt", "ensemble", lambda: ensemble("", 4), "text_input is empty"),
    ("ensemble-max-tokens-0", "ensemble", lambda: ensemble("Hi", 0), "max_tokens must be >= 1"),
    ("ensemble-end-id-beyond-vocab", "ensemble", lambda: ensemble("Hi", 4, end_id=5000),
     "end_id must be -1 or a token id in [0, 2048)"),
    ("ensemble-bias-weights-mismatch", "ensemble",
     lambda: ensemble("Hi", 4, embedding_bias_words=[["a", "b"]],
                      embedding_bias_weights=[[1.0]]),
     "embedding_bias_words has 2 entries but embedding_bias_weights 1"),
    ("ensemble-decoder-text", "ensemble",
     lambda: ensemble("Hi", 4, decoder_text_input=[["a decoder prompt"]]),
     "needs an encoder-decoder model"),
    ("core-no-input-lengths", "tensorrt_llm",
     lambda: tensors({"input_ids": [[1, 5]], "request_output_len": 4}, CORE_TYPES),
     "input_lengths is required"),
    ("core-no-output-len", "tensorrt_llm",
     lambda: tensors({"input_ids": [[1, 5]], "input_lengths": 2}, CORE_TYPES),
     "request_output_len (max_tokens) is required"),
    ("core-stop-without-id", "tensorrt_llm", lambda: core([1], 1, stop=True),
     "stop needs the request id"),
    ("core-beam-width-4", "tensorrt_llm", lambda: core([1, 5], 4, beam_width=4),
     "beam_width 4 is not supported"),
    ("core-lora", "tensorrt_llm", lambda: core([1, 5], 4, lora_task_id=1),
     "lora_task_id asks for a LoRA adapter"),
    ("core-guided", "tensorrt_llm",
     lambda: core([1, 5], 4, guided_decoding_guide_type=[["json"]]), "asks for guided decoding"),
    ("core-context-logits", "tensorrt_llm", lambda: core([1, 5], 4, return_context_logits=True),
     "asks for context logits outputs"),
    ("core-bad-offsets", "tensorrt_llm",
     lambda: core([1, 5], 4, stop_words_list=[[[5, 6], [2, 1]]]),
     "is not an increasing end offset"),
    ("core-batch-mismatch", "tensorrt_llm",
     lambda: tensors({"input_ids": [[1, 5], [1, 6]], "input_lengths": [[2], [2], [2]],
                      "request_output_len": [[4], [4]]}, CORE_TYPES),
     "input 'input_lengths' batch size does not match other inputs"),  # Triton's own check
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "make", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_get_their_error_and_the_server_keeps_serving(
    served, reference: Reference, model: str, make: Any, message: str
) -> None:  # type: ignore[no-untyped-def]
    got = Stream(served.grpc_url, model, make()).wait()
    assert got.error is not None and message in got.error, got.error
    ok = Stream(served.grpc_url, "tensorrt_llm", core([1, 5, 6], 6, end_id=-1)).wait()
    assert ok.error is None and ok.tokens == reference.greedy([1, 5, 6], 6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 4}, "text_input is required"),
        ({"text_input": "Hi"}, "max_tokens is required"),
    ],
    ids=["no-text-input", "no-max-tokens"],
)
def test_missing_required_inputs_are_errors_over_every_protocol(
    served, body: dict[str, Any], message: str
) -> None:  # type: ignore[no-untyped-def]
    """Triton 2.51 checks required inputs by count only: with `stream` counted, a request missing
    text_input or max_tokens used to pass, and the ensemble answered with an empty success."""
    for endpoint in ("generate", "generate_stream"):
        status, text = _http(served, f"/v2/models/ensemble/{endpoint}", {**body, "stream": True})
        assert status == 400 and message in text, (endpoint, status, text)
    grpc = Stream(served.grpc_url, "ensemble", tensors({**body, "stream": True}, CLIENT_TYPES))
    assert message in (grpc.wait().error or "")
    if "text_input" in body:
        body = {**body, "text_input": [["Hi"]]}
    bls = tensors({**body, "stop_words": [["zzz"]]}, CLIENT_TYPES)  # two inputs pass the count
    client = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(Exception, match=message):
        client.infer("tensorrt_llm_bls", bls)
    client.close()
    # and trtbuild's client turns them into user errors
    spec = InferSpec(prompt="", url=served.http_url, protocol="http")
    with (
        pytest.raises(InvalidRequest, match="text_input is empty"),
        Client(spec.url, spec.protocol) as c,
    ):
        c.generate(spec)


def test_many_poisons_at_once_leave_the_batch_intact(served, reference: Reference) -> None:  # type: ignore[no-untyped-def]
    """Poisons of every kind mixed into a running batch together (the old failure: one request
    with top_k 5 and presence_penalty -inf killed 15 innocent streams)."""
    streams, greedy = _innocents(served, reference)
    poisons = [Stream(served.grpc_url, model, make()) for _, model, make, _ in POISONS[:12]]
    time.sleep(0.05)
    for p in poisons:
        p.wait()
    for stream, want in zip(streams, greedy, strict=True):
        assert stream.wait().tokens == want
