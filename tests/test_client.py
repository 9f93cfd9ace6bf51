"""trtbuild's client: how server errors become trtbuild errors, and where `stop` goes."""

from __future__ import annotations

import pytest

from trtbuild.client import INVALID, RETRYABLE, Client, ServerBusy, _classify
from trtbuild.errors import InferenceError, InvalidRequest, RuntimeFailure, UserError
from trtbuild.runtime import requests


def test_the_client_and_the_runtime_agree_on_the_marks() -> None:
    assert RETRYABLE == requests.RETRYABLE
    assert INVALID == requests.INVALID


def test_the_invalid_mark_is_added_once() -> None:
    marked = requests.marked_invalid("max_tokens must be >= 1")
    assert marked == f"max_tokens must be >= 1 {INVALID}"
    assert requests.marked_invalid(f"preprocessing: {marked}") == f"preprocessing: {marked}"


@pytest.mark.parametrize(
    ("message", "code", "kind"),
    [
        # the runtime's mark wins over whatever code survived (gRPC streams carry none, HTTP
        # generate says 400 for every error, a BLS sees INTERNAL)
        (f"the queue is full; retry later {RETRYABLE}", None, ServerBusy),
        (f"in ensemble 'ensemble', at capacity {RETRYABLE}", 400, ServerBusy),
        (f"tensorrt_llm: at capacity {RETRYABLE}", "StatusCode.INTERNAL", ServerBusy),
        ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", ServerBusy),  # Triton's own
        ("Service Unavailable", 503, ServerBusy),
        ("failed to connect to all addresses", "StatusCode.UNAVAILABLE", InferenceError),
        ("max_tokens must be >= 1", "StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("max_tokens must be >= 1", 400, InvalidRequest),
        # what a decoupled ensemble's gRPC stream delivers: the message, no code
        (
            f"in ensemble 'ensemble', preprocessing: text_input is empty {INVALID}",
            None,
            InvalidRequest,
        ),
        (f"tensorrt_llm: max_tokens must be >= 1 {INVALID}", "StatusCode.INTERNAL", InvalidRequest),
        (f"at capacity {RETRYABLE}; {INVALID}", None, ServerBusy),  # retry wins
        ("boom", "StatusCode.INTERNAL", InferenceError),
    ],
)
def test_server_errors_are_classified(message: str, code: object, kind: type) -> None:
    error = _classify("ensemble", message, code)  # type: ignore[arg-type]
    assert type(error) is kind
    assert str(error).startswith(f"ensemble: {message}")


def test_busy_says_to_retry_and_exits_1() -> None:
    error = _classify("ensemble", f"at capacity {RETRYABLE}", None)
    assert isinstance(error, RuntimeFailure) and not isinstance(error, UserError)
    assert error.exit_code == 1 and str(error).endswith("retry the request later")
    assert _classify("ensemble", "bad", 400).exit_code == 2


@pytest.mark.server
def test_stop_goes_to_the_model_that_takes_it(served) -> None:  # type: ignore[no-untyped-def]
    with Client(served.grpc_url) as client:
        assert client.model_io("ensemble").stop_model == "tensorrt_llm"
        assert client.model_io("tensorrt_llm").stop_model == "tensorrt_llm"
        assert client.model_io("tensorrt_llm_bls").stop_model is None
        assert client.stop("ensemble", "nothing-runs-under-this-id")  # answered, nothing to stop
        assert not client.stop("tensorrt_llm_bls", "x")
    with Client(served.http_url, "http") as client:
        assert client.stop("ensemble", "nothing-runs-under-this-id")
