"""Request validation shared by the portable runtime and preprocessing (no Triton, no model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trtbuild.runtime.requests import (
    BYTES_PER_TOKEN,
    CoreLimits,
    InvalidInput,
    PreLimits,
    check_embedding_bias,
    check_prompt_tokens,
    embedding_bias_array,
    empty_word_list,
    parse_core,
    parse_preprocessing,
    parse_word_list,
    word_list_array,
)

LIMITS = CoreLimits(vocab_size=100, max_seq_len=64, max_input_len=32, max_num_tokens=64)


def i32(*values: Any) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def f32(*values: Any) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np.float32)


def core(ids: list[int] | None = None, out: int = 4, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """A core request as Triton hands it over (scalars reshaped to one value per row)."""
    ids = [1, 5, 6] if ids is None else ids
    base = {
        "input_ids": np.array([ids], dtype=np.int32),
        "input_lengths": i32(len(ids)),
        "request_output_len": i32(out),
    }
    return {**base, **extra}


def test_what_upstream_preprocessing_always_sends_is_accepted() -> None:
    """Text-only defaults of upstream's preprocessing + ensemble reach the core model unchanged."""
    pad = 3
    request = parse_core(
        core(
            end_id=i32(2),
            pad_id=i32(pad),
            decoder_input_ids=np.array([[pad]], dtype=np.int32),
            decoder_input_lengths=i32(1),
            embedding_bias=np.empty((1, 0), dtype=np.float32),
            stop_words_list=np.empty((1, 2, 0), dtype=np.int32),
            bad_words_list=np.empty((1, 2, 0), dtype=np.int32),
            prompt_table_extra_ids=np.zeros((1, 3), dtype=np.uint64),
            streaming=np.array([True]),
            len_penalty=f32(1.0),
            early_stopping=np.array([False]),
            beam_search_diversity_rate=f32(0.0),
            beam_width=i32(1),
            num_return_sequences=i32(1),
            runtime_top_p_min=f32(1e-6),
            runtime_top_p_decay=f32(1.0),
            runtime_top_p_reset_ids=i32(-1),
            prompt_embedding_table=np.empty((1, 0, 0), dtype=np.float16),
            prompt_vocab_size=i32(0),
            lora_weights=np.empty((1, 0, 0), dtype=np.float16),
            lora_config=np.empty((1, 0, 3), dtype=np.int32),
            guided_decoding_guide_type=np.array([b""], dtype=object),
            draft_input_ids=np.empty((1, 0), dtype=np.int32),
            encoder_input_features=np.empty((1, 0, 0), dtype=np.float16),
            return_context_logits=np.array([False]),
            return_generation_logits=np.array([False]),
        ),
        LIMITS,
    )
    (row,) = request.rows
    assert (row.prompt, row.max_new_tokens, row.end_id, row.pad_id) == ([1, 5, 6], 4, 2, pad)
    assert row.stop_words == row.bad_words == [] and row.embedding_bias is None
    assert request.streaming


@pytest.mark.parametrize(
    ("name", "value", "feature"),
    [
        ("decoder_input_ids", np.array([[3, 4]], dtype=np.int32), "needs an encoder-decoder"),
        ("beam_width", i32(2), "beam_width 2 is not supported"),
        ("num_return_sequences", i32(3), "num_return_sequences 3 is not supported"),
        ("runtime_top_p_decay", f32(0.9), "top-p decay"),
        ("runtime_top_p_reset_ids", i32(7), "top-p decay reset ids"),
        ("lora_task_id", np.array([0], dtype=np.uint64), "LoRA adapter"),
        ("lora_weights", np.ones((1, 2, 4), dtype=np.float16), "LoRA adapters"),
        ("prompt_embedding_table", np.ones((1, 2, 4), dtype=np.float16), "prompt tuning"),
        ("prompt_table_extra_ids", np.ones((1, 3), dtype=np.uint64), "prompt-table extra ids"),
        ("draft_input_ids", i32(5)[np.newaxis], "draft tokens"),
        ("guided_decoding_guide_type", np.array([b"json"], dtype=object), "guided decoding"),
        ("encoder_input_features", np.ones((1, 2, 2), dtype=np.float16), "encoder-decoder"),
        ("return_generation_logits", np.array([True]), "generation logits"),
    ],
)
def test_features_are_refused_only_for_values_that_ask_for_them(
    name: str, value: np.ndarray, feature: str
) -> None:
    with pytest.raises(InvalidInput, match=feature):
        parse_core(core(**{name: value}), LIMITS)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"temperature": f32(np.nan)}, r"temperature must be a finite number, got nan"),
        ({"temperature": f32(1e39)}, r"temperature must be a finite number, got inf"),
        ({"temperature": f32(-0.5)}, r"temperature must be >= 0"),
        ({"runtime_top_p": f32(np.inf)}, r"runtime_top_p \(top_p\) must be a finite"),
        ({"runtime_top_p": f32(1.01)}, r"runtime_top_p \(top_p\) must be in \[0, 1\]"),
        ({"runtime_top_k": i32(101)}, r"runtime_top_k \(top_k\) must be in \[0, 100\]"),
        ({"runtime_top_k": i32(-1)}, r"runtime_top_k \(top_k\) must be in \[0, 100\]"),
        ({"repetition_penalty": f32(0.0)}, "repetition_penalty must be > 0"),
        ({"presence_penalty": f32(-1e39)}, r"presence_penalty must be a finite number, got -inf"),
        ({"frequency_penalty": f32(np.nan)}, "frequency_penalty must be a finite"),
        ({"len_penalty": f32(np.inf)}, r"len_penalty \(length_penalty\) must be a finite"),
        ({"min_tokens": i32(65)}, r"min_tokens must be in \[0, 64\] \(max_seq_len\)"),
        ({"end_id": i32(100)}, r"end_id must be -1 or a token id in \[0, 100\)"),
        ({"end_id": i32(-2)}, r"end_id must be -1"),
        ({"pad_id": i32(10**6)}, r"pad_id must be -1 or a token id"),
        ({"input_lengths": i32(-2)}, r"input_lengths -2 is not in \[1, 3\]"),
        ({"input_lengths": i32(50)}, r"input_lengths 50 is not in \[1, 3\]"),
        ({"request_output_len": i32(0)}, r"request_output_len \(max_tokens\) must be >= 1"),
        ({"request_output_len": i32(62)}, r"exceeds max_seq_len 64; ask for at most 61"),
        ({"input_ids": i32(1, 100, 3)[np.newaxis]}, r"input_ids holds token id 100, outside"),
        ({"input_ids": i32(1, -5, 3)[np.newaxis]}, r"input_ids holds token id -5, outside"),
        (
            {"stop_words_list": np.array([[[5, 500], [2, -1]]], dtype=np.int32)},
            r"stop_words_list \(stop_words\) holds token id 500",
        ),
        (
            {"bad_words_list": np.array([[[5, 6], [1, 5]]], dtype=np.int32)},
            r"offset 5 at position 1 is not an increasing end offset in \[1, 2\]",
        ),
        (
            {"bad_words_list": np.array([[[5, 6], [-1, 2]]], dtype=np.int32)},
            "offsets after the first -1 must all be -1",
        ),
        (
            {"embedding_bias": np.zeros((1, 99), dtype=np.float32)},
            r"has 99 values; it must be empty or hold one value per vocabulary entry \(100\)",
        ),
        (
            {"embedding_bias": np.full((1, 100), np.nan, dtype=np.float32)},
            "holds NaN or \\+inf",
        ),
        ({"input_lengths": None}, r"input_lengths is required"),
    ],
)
def test_poisoned_values_are_refused_naming_the_input_and_the_fix(
    extra: dict[str, np.ndarray | None], message: str
) -> None:
    inputs = core(**{k: v for k, v in extra.items() if v is not None})
    for key in [k for k, v in extra.items() if v is None]:
        del inputs[key]
    with pytest.raises(InvalidInput, match=message):
        parse_core(inputs, LIMITS)


def test_word_lists_and_bias_are_parsed() -> None:
    arr = np.array([[5, 6, 7, 0], [2, 3, -1, -1]], dtype=np.int32)  # padding id 0 is not read
    assert parse_word_list("stop_words_list", arr, 100) == [[5, 6], [7]]
    assert parse_word_list("stop_words_list", np.empty((2, 0), dtype=np.int32), 100) == []
    bias = check_embedding_bias(np.r_[np.ones(90), np.full(10, -np.inf)], (100,))
    assert bias is not None and bias.dtype == np.float32 and np.isneginf(bias[95])
    assert check_embedding_bias(np.zeros(100), (100,)) is None  # no effect: dropped
    padded = check_embedding_bias(np.ones(80), (100, 80))  # tokenizer-sized: zero tail
    assert padded is not None and padded.shape == (100,) and padded[79] == 1 and padded[80] == 0


def test_a_batch_splits_into_rows_with_per_row_or_shared_values() -> None:
    ids = np.array([[1, 5, 6, 3], [1, 7, 3, 3]], dtype=np.int32)  # right-padded
    request = parse_core(
        {
            "input_ids": ids,
            "input_lengths": i32(4, 2),
            "request_output_len": i32(5, 6),
            "temperature": f32(0.0),  # one value for every row
            "runtime_top_k": i32(1, 2),
            "stop_words_list": np.array([[[9], [1]], [[8], [1]]], dtype=np.int32),
        },
        LIMITS,
    )
    assert [r.prompt for r in request.rows] == [[1, 5, 6, 3], [1, 7]]
    assert [r.max_new_tokens for r in request.rows] == [5, 6]
    assert [r.top_k for r in request.rows] == [1, 2]
    assert [r.temperature for r in request.rows] == [0.0, 0.0]
    assert [r.stop_words for r in request.rows] == [[[9]], [[8]]]
    with pytest.raises(InvalidInput, match="batch dimension 3 but the request holds 2 sequences"):
        parse_core({**core(), "input_ids": ids, "input_lengths": i32(4, 2, 1)}, LIMITS)
    with pytest.raises(InvalidInput, match=r"input_lengths 5 is not in \[1, 4\] .* row 1"):
        parse_core({**core(), "input_ids": ids, "input_lengths": i32(4, 5)}, LIMITS)


def test_word_list_layout_is_upstreams() -> None:
    """[B, 2, N]: ids padded with 0, cumulative ends padded with -1, N = max(1, longest row)."""
    out = word_list_array([[[5, 6], [7]], [[8]]])
    assert out.dtype == np.int32 and out.tolist() == [
        [[5, 6, 7], [2, 3, -1]],
        [[8, 0, 0], [1, -1, -1]],
    ]
    assert word_list_array([[]]).tolist() == [[[0], [-1]]]
    assert empty_word_list(2).shape == (2, 2, 0)
    for row, words in zip(out, ([[5, 6], [7]], [[8]]), strict=True):  # round trip
        assert parse_word_list("stop_words_list", row, 100) == words


def test_embedding_bias_array_adds_each_weight_to_every_id_of_its_word() -> None:
    out = embedding_bias_array([[([1, 7], 2.0), ([7], -0.5)], []], 10, 2)
    assert out.dtype == np.float32 and out.shape == (2, 10)
    assert out[0].tolist() == [0, 2.0, 0, 0, 0, 0, 0, 1.5, 0, 0] and not out[1].any()
    assert embedding_bias_array(None, 10, 3).shape == (3, 0)


# -- preprocessing ------------------------------------------------------------------------------------
PRE = PreLimits(vocab_size=100, max_input_len=16, max_seq_len=64)


def pre(**inputs: Any) -> dict[str, np.ndarray]:
    base = {
        "QUERY": np.array([[b"Hello"]], dtype=object),
        "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.int32),
    }
    return {**base, **{k: np.asarray(v) for k, v in inputs.items()}}


def test_preprocessing_inputs_are_validated() -> None:
    (row,) = parse_preprocessing(
        pre(END_ID=np.array([[-1]], dtype=np.int32), STOP_WORDS_DICT=np.array([[b"a", b""]])), PRE
    )
    assert (row.prompt, row.max_tokens, row.end_id, row.stop_words) == ("Hello", 4, -1, ["a"])
    for inputs, message in (
        (pre(END_ID=np.array([[100]], dtype=np.int32)), r"end_id must be -1 or a token id"),
        (pre(PAD_ID=np.array([[-7]], dtype=np.int32)), r"pad_id must be -1 or a token id"),
        (pre(REQUEST_OUTPUT_LEN=np.array([[0]], dtype=np.int32)), "max_tokens must be >= 1"),
        (pre(QUERY=np.array([[b""]], dtype=object)), "text_input is empty"),
        (
            pre(
                EMBEDDING_BIAS_WORDS=np.array([[b"a", b"b"]], dtype=object),
                EMBEDDING_BIAS_WEIGHTS=np.array([[1.0]], dtype=np.float32),
            ),
            "embedding_bias_words has 2 entries but embedding_bias_weights 1",
        ),
        (
            pre(
                EMBEDDING_BIAS_WORDS=np.array([[b"a"]], dtype=object),
                EMBEDDING_BIAS_WEIGHTS=np.array([[np.nan]], dtype=np.float32),
            ),
            "embedding_bias_weights holds NaN",
        ),
    ):
        with pytest.raises(InvalidInput, match=message):
            parse_preprocessing(inputs, PRE)
    missing = pre()
    del missing["QUERY"]
    with pytest.raises(InvalidInput, match="text_input is required"):
        parse_preprocessing(missing, PRE)
    missing = pre()
    del missing["REQUEST_OUTPUT_LEN"]
    with pytest.raises(InvalidInput, match="max_tokens is required"):
        parse_preprocessing(missing, PRE)


def test_prompts_are_bounded_in_bytes_before_tokenizing() -> None:
    limit = 16 * BYTES_PER_TOKEN
    huge = np.array([[b"x" * 5_000_000]], dtype=object)
    with pytest.raises(
        InvalidInput,
        match=rf"text_input has 5,000,000 bytes; this deployment accepts at most {limit:,} bytes "
        rf"before tokenizing \(max_input_len 16 tokens x {BYTES_PER_TOKEN} bytes per token\)",
    ):
        parse_preprocessing(pre(QUERY=huge), PRE)
    parse_preprocessing(pre(QUERY=np.array([[b"x" * limit]], dtype=object)), PRE)  # at the bound
    with pytest.raises(InvalidInput, match="the prompt has 17 tokens"):
        check_prompt_tokens(17, 4, PRE)
    with pytest.raises(InvalidInput, match="exceeds max_seq_len 64"):
        check_prompt_tokens(10, 60, PRE)


def test_a_batch_of_prompts_is_split_per_row() -> None:
    rows = parse_preprocessing(
        pre(
            QUERY=np.array([[b"one"], [b"two"]], dtype=object),
            REQUEST_OUTPUT_LEN=np.array([[3], [5]], dtype=np.int32),
            END_ID=np.array([[2]], dtype=np.int32),  # one for all rows
        ),
        PRE,
    )
    assert [(r.prompt, r.max_tokens, r.end_id) for r in rows] == [("one", 3, 2), ("two", 5, 2)]


class _StubUtils:
    """The two names ``error_response`` uses of the stub's triton_python_backend_utils, as a
    stub with error codes has them (``codes``) or as an old one without (``codes=False``)."""

    def __init__(self, codes: bool = True) -> None:
        class TritonError:
            def __init__(self, message: str, code: int | None = None) -> None:
                self.message, self.code = message, code

        if codes:
            TritonError.INVALID_ARG, TritonError.UNAVAILABLE = 3, 14  # type: ignore[attr-defined]
        self.TritonError = TritonError
        self.InferenceResponse = lambda error: {"error": error}


def test_error_responses_carry_their_code_and_invalid_ones_the_mark() -> None:
    from trtbuild.runtime.requests import INVALID, error_response

    invalid = error_response(_StubUtils(), "max_tokens must be >= 1")["error"]
    assert (invalid.message, invalid.code) == (f"max_tokens must be >= 1 {INVALID}", 3)
    busy = error_response(_StubUtils(), "the queue is full", "UNAVAILABLE")["error"]
    assert (busy.message, busy.code) == ("the queue is full", 14)
    old = error_response(_StubUtils(codes=False), "bad")["error"]
    assert (old.message, old.code) == (f"bad {INVALID}", None)
