"""Request validation for trtbuild's portable runtime and preprocessing: every input, one place.

Imports only the standard library and numpy, because ``trtbuild repo`` copies this file verbatim
next to the portable ``tensorrt_llm`` model (as ``_trtbuild_requests.py``) and next to
``preprocessing`` (both flavors). Both models turn their input tensors into plain Python values
here, and every value is checked for type, finiteness (after the cast to the tensor's dtype:
``-1e39`` sent as FP32 is ``-inf``) and range before any of it reaches the engine or the
tokenizer. Every refusal is an ``InvalidInput`` whose message names the input (the client's name
too, where the ensemble renames it) and the fix.

TensorRT-LLM's batch convention is kept: a request whose ``input_ids`` is ``[B, L]`` is B
sequences; every other input carries one value per row (``[B, ...]``) or one value for all rows.

The same module also builds the tensors preprocessing emits (word lists, embedding bias), in the
exact layout upstream's preprocessing uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BYTES_PER_TOKEN = 32  # generous: the longest tokens of byte-level BPE vocabularies are ~16 bytes
RETRYABLE = "(retryable)"  # marks a refusal the client should retry (the gRPC stream drops codes)
INVALID = "(invalid request)"  # marks a refusal that is the client's fault, for the same reason

# core input -> the name the ensemble's clients send, for messages
CLIENT_NAMES = {
    "runtime_top_k": "top_k",
    "runtime_top_p": "top_p",
    "len_penalty": "length_penalty",
    "request_output_len": "max_tokens",
    "streaming": "stream",
    "stop_words_list": "stop_words",
    "bad_words_list": "bad_words",
    "embedding_bias": "embedding_bias_words/embedding_bias_weights",
}


class InvalidInput(ValueError):
    """A request input that cannot be honoured; the message names the input and the fix."""


def marked_invalid(message: str) -> str:
    """``message`` ending in the ``INVALID`` mark, once. Every INVALID_ARG error a trtbuild model
    answers carries it: Triton 2.51's gRPC stream (a decoupled model or ensemble) delivers the
    message without its status code, and the mark is how a client still tells "fix the request"
    from "the server failed"."""
    return message if INVALID in message else f"{message} {INVALID}"


def error_response(pb_utils: Any, message: str, code_name: str = "INVALID_ARG") -> Any:
    """A Triton Python-backend error response (``pb_utils``: the stub's
    ``triton_python_backend_utils``): INVALID_ARG (HTTP 400) with the message marked, or another
    ``TritonError`` code by name (UNAVAILABLE: retry later, HTTP 503; INTERNAL: the server's
    fault, HTTP 500). A stub too old to know the code sends the message alone."""
    if code_name == "INVALID_ARG":
        message = marked_invalid(message)
    code = getattr(pb_utils.TritonError, code_name, None)
    error = (
        pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    )
    return pb_utils.InferenceResponse(error=error)


def label(name: str) -> str:
    """``runtime_top_k (top_k)``: the core name and what an ensemble client calls it."""
    client = CLIENT_NAMES.get(name)
    return f"{name} ({client})" if client else name


# -- scalars -------------------------------------------------------------------------------------
def finite(name: str, value: Any, dtype: Any = np.float32) -> float:
    """``value`` cast to ``dtype``, refused unless finite."""
    try:
        with np.errstate(all="ignore"):  # the overflow to inf is what we refuse below
            cast = dtype(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{label(name)} must be a number, got {value!r}") from exc
    result = float(cast)
    if not math.isfinite(result):
        raise InvalidInput(
            f"{label(name)} must be a finite number, got {result} (as {np.dtype(dtype).name}; "
            f"values beyond +-3.4e38 overflow FP32); send a finite value"
        )
    return result


def check_temperature(value: float) -> float:
    t = finite("temperature", value)
    if t < 0:
        raise InvalidInput(f"temperature must be >= 0, got {t}; send 0 for greedy decoding")
    return t


def check_top_k(value: int, vocab_size: int) -> int:
    if not 0 <= value <= vocab_size:
        raise InvalidInput(
            f"{label('runtime_top_k')} must be in [0, {vocab_size}] (the vocabulary size), got "
            f"{value}; send 0 for no top-k limit"
        )
    return int(value)


def check_top_p(value: float) -> float:
    p = finite("runtime_top_p", value)
    if not 0.0 <= p <= 1.0:
        raise InvalidInput(
            f"{label('runtime_top_p')} must be in [0, 1], got {p}; send 0 (or 1) for no top-p limit"
        )
    return p


def check_repetition_penalty(value: float) -> float:
    r = finite("repetition_penalty", value)
    if r <= 0:
        raise InvalidInput(f"repetition_penalty must be > 0, got {r}; send 1 for no penalty")
    return r


def check_min_tokens(name: str, value: int, max_seq_len: int) -> int:
    if not 0 <= value <= max_seq_len:
        raise InvalidInput(
            f"{name} must be in [0, {max_seq_len}] (max_seq_len), got {value}; send 0 for no minimum"
        )
    return int(value)


def check_special_id(name: str, value: int, vocab_size: int) -> int:
    """end_id / pad_id: -1 (end_id -1: never stop on an end token) or a token id."""
    if value != -1 and not 0 <= value < vocab_size:
        raise InvalidInput(
            f"{name} must be -1 or a token id in [0, {vocab_size}), got {value}; "
            + (
                "send -1 to ignore end tokens, or leave it out for the model's own"
                if name.startswith("end")
                else "leave it out for the model's own"
            )
        )
    return int(value)


def check_output_len(prompt_len: int, output_len: int, max_seq_len: int, name: str) -> int:
    if output_len < 1:
        raise InvalidInput(f"{name} must be >= 1, got {output_len}; ask for at least one token")
    if prompt_len + output_len > max_seq_len:
        raise InvalidInput(
            f"prompt ({prompt_len} tokens) + {name} ({output_len}) exceeds max_seq_len "
            f"{max_seq_len}; ask for at most {max(max_seq_len - prompt_len, 0)} new tokens"
        )
    return int(output_len)


def check_token_ids(name: str, ids: np.ndarray, vocab_size: int) -> None:
    """Every id in ``[0, vocab_size)`` (vectorised: one min and one max)."""
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise InvalidInput(
            f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size}); send ids the "
            "model's tokenizer produced"
        )


def prompt_byte_limit(max_input_len: int | None, max_seq_len: int | None) -> int | None:
    tokens = max_input_len or max_seq_len
    return tokens * BYTES_PER_TOKEN if tokens else None


def check_text_bytes(name: str, size: int, limit: int | None, max_tokens_hint: int | None) -> None:
    """Refuse text that cannot fit before paying for tokenizing it."""
    if limit is not None and size > limit:
        raise InvalidInput(
            f"{name} has {size:,} bytes; this deployment accepts at most {limit:,} bytes before "
            f"tokenizing (max_input_len {max_tokens_hint} tokens x {BYTES_PER_TOKEN} bytes per "
            "token); send a shorter prompt"
        )


# -- word lists ---------------------------------------------------------------------------------
def parse_word_list(name: str, arr: np.ndarray, vocab_size: int) -> list[list[int]]:
    """TensorRT-LLM's ``[2, N]`` word list (flat ids, then end offsets padded with -1) -> words.

    Offsets must be well formed as TensorRT-LLM checks them: at most N, increasing (only the first
    may be 0), and only -1 after the first -1. Ids inside words must be in the vocabulary; ids past
    the last offset are padding and are not read.
    """
    arr = np.asarray(arr)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise InvalidInput(
            f"{label(name)} must be shaped [2, N] per sequence (ids, then offsets), got "
            f"{list(arr.shape)}"
        )
    flat, offsets = arr[0], arr[1].tolist()
    n = len(flat)
    words: list[list[int]] = []
    start, ended = 0, False
    for i, end in enumerate(offsets):
        if end == -1:
            ended = True
            continue
        if ended:
            raise InvalidInput(f"{label(name)}: offsets after the first -1 must all be -1")
        if end < 0 or end > n or (i > 0 and end <= start):
            raise InvalidInput(
                f"{label(name)}: offset {end} at position {i} is not an increasing end offset in "
                f"[1, {n}]; offsets are the cumulative word lengths, padded with -1"
            )
        word = flat[start:end]
        check_token_ids(label(name), word, vocab_size)
        if word.size:
            words.append([int(x) for x in word])
        start = end
    return words


def word_list_array(rows: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Per-row word lists -> ``[B, 2, N]`` INT32 as upstream's preprocessing lays them out: flat ids
    padded with 0, cumulative end offsets padded with -1, N = max(1, longest row)."""
    flats: list[list[int]] = []
    offsets: list[list[int]] = []
    for words in rows:
        flat: list[int] = []
        ends: list[int] = []
        for word in words:
            if not word:
                continue
            flat.extend(int(t) for t in word)
            ends.append(len(flat))
        flats.append(flat)
        offsets.append(ends)
    width = max(1, *(len(f) for f in flats)) if flats else 1
    out = np.zeros((len(rows), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, (flat, ends) in enumerate(zip(flats, offsets, strict=True)):
        out[i, 0, : len(flat)] = flat
        out[i, 1, : len(ends)] = ends
    return out


def empty_word_list(batch: int) -> np.ndarray:
    """What upstream's preprocessing sends when a request has no such words: ``[B, 2, 0]``."""
    return np.empty((batch, 2, 0), dtype=np.int32)


# -- embedding bias -------------------------------------------------------------------------------
def check_embedding_bias(arr: np.ndarray, sizes: Sequence[int]) -> np.ndarray | None:
    """One row's bias: empty (none), or one FP32 value per vocabulary entry, no NaN and no +inf
    (-inf bans a token). ``sizes`` lists the accepted lengths; the first is the model's vocabulary
    and a shorter one (the tokenizer's, for a model whose embedding matrix is padded) is
    zero-extended. An all-zero bias changes nothing and is dropped (returns ``None``)."""
    bias = np.asarray(arr, dtype=np.float32).reshape(-1)
    if bias.size == 0:
        return None
    if bias.size not in sizes:
        raise InvalidInput(
            f"{label('embedding_bias')} has {bias.size} values; it must be empty or hold one "
            f"value per vocabulary entry ({' or '.join(str(s) for s in sizes)})"
        )
    if np.isnan(bias).any() or np.isposinf(bias).any():
        raise InvalidInput(
            f"{label('embedding_bias')} holds NaN or +inf; send finite values (-inf bans a token)"
        )
    if not bias.any():
        return None
    if bias.size < sizes[0]:
        bias = np.concatenate([bias, np.zeros(sizes[0] - bias.size, dtype=np.float32)])
    return bias


def embedding_bias_array(
    rows: Sequence[Sequence[tuple[list[int], float]]] | None, vocab_size: int, batch: int
) -> np.ndarray:
    """Upstream preprocessing's ``EMBEDDING_BIAS``: ``[B, 0]`` without bias words, else per row a
    zero vector of the tokenizer's vocabulary size where each word's weight is added to every id
    the tokenizer gives that word (``rows``: per row, (ids, weight) pairs)."""
    if rows is None:
        return np.empty((batch, 0), dtype=np.float32)
    out = np.zeros((batch, vocab_size), dtype=np.float32)
    for i, pairs in enumerate(rows):
        for ids, weight in pairs:
            for token in ids:
                out[i, token] += weight
    return out


# -- batch handling -------------------------------------------------------------------------------
def per_row(name: str, arr: np.ndarray, batch: int) -> list[np.ndarray]:
    """Split ``arr`` along its batch dimension: one entry per row, or one for all rows."""
    if arr.ndim == 0:
        return [arr.reshape(1)] * batch
    if arr.shape[0] == batch:
        return [arr[i] for i in range(batch)]
    if arr.shape[0] == 1:
        return [arr[0]] * batch
    raise InvalidInput(
        f"{label(name)} has batch dimension {arr.shape[0]} but the request holds {batch} "
        "sequences; send one value per sequence (or one for all)"
    )


def first(arr: np.ndarray | None) -> Any:
    """The first element of a per-row value, as a Python scalar (``None`` when empty)."""
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size == 0:
        return None
    value = flat[0]
    return value.item() if hasattr(value, "item") else value


def flag(arr: np.ndarray | None, default: bool = False) -> bool:
    value = first(arr)
    return default if value is None else bool(value)


def _strings(arr: np.ndarray | None) -> list[str]:
    if arr is None:
        return []
    return [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for v in np.asarray(arr).reshape(-1)
    ]


# -- the core model (tensorrt_llm) ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CoreLimits:
    vocab_size: int
    max_seq_len: int
    max_input_len: int | None = None
    max_num_tokens: int | None = None
    bias_sizes: tuple[int, ...] = ()  # accepted embedding_bias lengths; default: (vocab_size,)


@dataclasses.dataclass
class CoreRow:
    """One sequence of a core-model request, validated."""

    prompt: list[int]
    max_new_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    stop_words: list[list[int]] = dataclasses.field(default_factory=list)
    bad_words: list[list[int]] = dataclasses.field(default_factory=list)
    embedding_bias: np.ndarray | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int | None = None


@dataclasses.dataclass
class CoreRequest:
    rows: list[CoreRow]
    streaming: bool = False
    exclude_input: bool | None = None  # None: the model's default
    return_log_probs: bool = False
    return_perf_metrics: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False


# Inputs TensorRT-LLM honours that a decoder-only, beam-width-1 runtime without adapters cannot.
# Each maps to a check that passes for the value upstream's preprocessing/ensemble sends by default
# (or that has no effect upstream either) and names the feature otherwise.
def _empty(arr: np.ndarray) -> bool:
    return np.asarray(arr).size == 0


def _zero(arr: np.ndarray) -> bool:
    a = np.asarray(arr)
    return a.size == 0 or not a.any()


def _blank(arr: np.ndarray) -> bool:
    return all(not s for s in _strings(arr))


UNSUPPORTED_UNLESS_DEFAULT: dict[str, tuple[Any, str]] = {
    "encoder_input_features": (_empty, "encoder-decoder models"),
    "encoder_output_lengths": (_zero, "encoder-decoder models"),
    "draft_input_ids": (_empty, "speculative decoding with draft tokens"),
    "draft_logits": (_empty, "speculative decoding with draft logits"),
    "prompt_embedding_table": (_empty, "prompt tuning (prompt_embedding_table)"),
    "prompt_vocab_size": (_zero, "prompt tuning (prompt_vocab_size)"),
    # upstream's preprocessing sends zeros for every id below the vocabulary (text-only prompts)
    "prompt_table_extra_ids": (_zero, "prompt-table extra ids (p-tuning KV reuse)"),
    "lora_weights": (_empty, "LoRA adapters (lora_weights)"),
    "lora_config": (_empty, "LoRA adapters (lora_config)"),
    "guided_decoding_guide_type": (_blank, "guided decoding"),
    "guided_decoding_guide": (_blank, "guided decoding"),
    "runtime_top_p_decay": (lambda a: first(a) in (None, 1.0), "top-p decay"),
    "runtime_top_p_reset_ids": (lambda a: first(a) in (None, -1), "top-p decay reset ids"),
    "return_context_logits": (lambda a: not flag(a), "context logits outputs"),
    "return_generation_logits": (lambda a: not flag(a), "generation logits outputs"),
}


def parse_core(inputs: Mapping[str, np.ndarray], limits: CoreLimits) -> CoreRequest:
    """Validate a core-model request (TensorRT-LLM's tensor names) and split it into rows.

    ``inputs`` holds the tensors as Triton delivers them (scalars reshaped to one value per row).
    ``stop`` is not handled here (the caller answers stop requests first).
    """
    for name, (is_default, feature) in UNSUPPORTED_UNLESS_DEFAULT.items():
        if name in inputs and not is_default(inputs[name]):
            raise InvalidInput(
                f"{name} asks for {feature}, which the portable runtime does not support; leave it "
                "out (or at its default), or serve this model with TensorRT-LLM"
            )
    if "lora_task_id" in inputs:
        raise InvalidInput(
            "lora_task_id asks for a LoRA adapter, which the portable runtime does not support; "
            "leave it out, or serve this model with TensorRT-LLM"
        )
    for name, fix in (
        ("input_lengths", "send each prompt's length in tokens"),
        ("request_output_len", "send the number of tokens to generate"),
    ):
        if name not in inputs:
            raise InvalidInput(f"{label(name)} is required; {fix}")
    ids = inputs.get("input_ids")
    if ids is None:
        raise InvalidInput("input_ids is required (a decoder-only model needs prompt tokens)")
    ids = np.asarray(ids)
    if ids.dtype != np.int32:
        raise InvalidInput(f"input_ids must be INT32, got {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[np.newaxis]
    if ids.ndim != 2:
        raise InvalidInput(f"input_ids must be shaped [batch, tokens], got {list(ids.shape)}")
    batch = ids.shape[0]
    if batch == 0:
        raise InvalidInput("input_ids holds no sequence; send at least one")
    rows_of = {name: per_row(name, np.asarray(arr), batch) for name, arr in inputs.items()}

    def value(name: str, i: int) -> Any:
        got = rows_of.get(name)
        return None if got is None else first(got[i])

    request = CoreRequest(
        rows=[],
        streaming=flag(inputs.get("streaming")),
        exclude_input=None
        if first(inputs.get("exclude_input_in_output")) is None
        else flag(inputs.get("exclude_input_in_output")),
        return_log_probs=flag(inputs.get("return_log_probs")),
        return_perf_metrics=flag(inputs.get("return_perf_metrics")),
        return_num_input_tokens=flag(inputs.get("return_num_input_tokens")),
        return_num_output_tokens=flag(inputs.get("return_num_output_tokens")),
    )
    vocab = limits.vocab_size
    bias_sizes = limits.bias_sizes or (vocab,)
    for i in range(batch):
        row_ids = ids[i]
        length = value("input_lengths", i)
        if length is None:
            raise InvalidInput(f"input_lengths is empty for sequence {i}; send its prompt length")
        length = int(length)
        if not 1 <= length <= row_ids.shape[0]:
            raise InvalidInput(
                f"input_lengths {length} is not in [1, {row_ids.shape[0]}] (the tokens sent in "
                f"input_ids{'' if batch == 1 else f' row {i}'}); send the prompt's length"
            )
        prompt_ids = row_ids[:length]
        check_token_ids("input_ids", prompt_ids, vocab)
        if limits.max_input_len and length > limits.max_input_len:
            raise InvalidInput(
                f"the prompt has {length} tokens; this deployment accepts at most "
                f"{limits.max_input_len} (max_input_len)"
            )
        if limits.max_num_tokens and length > limits.max_num_tokens:
            raise InvalidInput(
                f"the prompt has {length} tokens; max_num_tokens is {limits.max_num_tokens}"
            )
        out_len = value("request_output_len", i)
        if out_len is None:
            raise InvalidInput(f"{label('request_output_len')} is required")
        row = CoreRow(
            prompt=prompt_ids.tolist(),
            max_new_tokens=check_output_len(
                length, int(out_len), limits.max_seq_len, label("request_output_len")
            ),
        )
        for name in ("beam_width", "num_return_sequences"):
            n = value(name, i)
            if n is not None and int(n) != 1:
                raise InvalidInput(
                    f"{name} {n} is not supported: the portable runtime decodes one sequence per "
                    f"request (beam width 1); send {name} 1, or serve with TensorRT-LLM"
                )
        dec = rows_of.get("decoder_input_ids")
        if dec is not None and np.asarray(dec[i]).size > 1:
            raise InvalidInput(
                "decoder_input_ids with more than one token needs an encoder-decoder model; the "
                "portable runtime serves decoder-only models (leave decoder_text_input out)"
            )
        dec_len = value("decoder_input_lengths", i)
        if dec_len is not None and int(dec_len) > 1:
            raise InvalidInput(
                "decoder_input_lengths > 1 needs an encoder-decoder model; the portable runtime "
                "serves decoder-only models"
            )
        for name in ("end_id", "pad_id"):
            v = value(name, i)
            if v is not None:
                setattr(row, name, check_special_id(name, int(v), vocab))
        for name in ("stop_words_list", "bad_words_list"):
            got = rows_of.get(name)
            if got is not None:
                words = parse_word_list(name, got[i], vocab)
                setattr(row, "stop_words" if name.startswith("stop") else "bad_words", words)
        bias = rows_of.get("embedding_bias")
        if bias is not None:
            row.embedding_bias = check_embedding_bias(bias[i], bias_sizes)
        v = value("temperature", i)
        if v is not None:
            row.temperature = check_temperature(v)
        v = value("runtime_top_k", i)
        if v is not None:
            row.top_k = check_top_k(int(v), vocab)
        v = value("runtime_top_p", i)
        if v is not None:
            row.top_p = check_top_p(v)
        v = value("runtime_top_p_min", i)
        if v is not None and not 0.0 < finite("runtime_top_p_min", v) <= 1.0:
            raise InvalidInput(f"runtime_top_p_min must be in (0, 1], got {v}")
        v = value("repetition_penalty", i)
        if v is not None:
            row.repetition_penalty = check_repetition_penalty(v)
        for name in ("presence_penalty", "frequency_penalty"):
            v = value(name, i)
            if v is not None:
                setattr(row, name, finite(name, v))
        # len_penalty, early_stopping and beam_search_diversity_rate: accepted and without effect
        # at beam width 1 (as in TensorRT-LLM), where they only shape beam search; checked for
        # finiteness, never used. draft_acceptance_threshold has no effect without draft tokens.
        for name in ("len_penalty", "beam_search_diversity_rate", "draft_acceptance_threshold"):
            v = value(name, i)
            if v is not None:
                finite(name, v)
        for name in ("min_tokens", "min_length"):  # min_length: TensorRT-LLM <= 0.19
            v = value(name, i)
            if v is not None:
                row.min_tokens = max(
                    row.min_tokens, check_min_tokens(name, int(v), limits.max_seq_len)
                )
        for name in ("seed", "random_seed"):  # random_seed: TensorRT-LLM <= 0.19
            v = value(name, i)
            if v is not None and row.seed is None:
                row.seed = int(v)
        request.rows.append(row)
    return request


# -- preprocessing -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PreLimits:
    vocab_size: int  # the tokenizer's, with added tokens
    max_input_len: int | None = None
    max_seq_len: int | None = None

    @property
    def prompt_bytes(self) -> int | None:
        return prompt_byte_limit(self.max_input_len, self.max_seq_len)


@dataclasses.dataclass
class PreRow:
    prompt: str
    max_tokens: int
    end_id: int | None = None  # None: the tokenizer's
    pad_id: int | None = None
    stop_words: list[str] = dataclasses.field(default_factory=list)
    bad_words: list[str] = dataclasses.field(default_factory=list)
    bias: list[tuple[str, float]] | None = None
    decoder_prompt: str | None = None


def parse_preprocessing(inputs: Mapping[str, np.ndarray], limits: PreLimits) -> list[PreRow]:
    """Validate a preprocessing request (upstream's names; client names in messages) per row.

    The prompt is bounded in bytes here, before anything is tokenized; ``check_prompt_tokens``
    checks the token count afterwards.
    """
    query = inputs.get("QUERY")
    if query is None:
        raise InvalidInput("text_input is required; send the prompt as text_input")
    if inputs.get("REQUEST_OUTPUT_LEN") is None:
        raise InvalidInput("max_tokens is required; send the number of tokens to generate")
    query = np.asarray(query)
    if query.ndim == 0:
        query = query.reshape(1, 1)
    batch = query.shape[0]
    if batch == 0:
        raise InvalidInput("text_input holds no prompt; send one")
    limit = limits.prompt_bytes
    hint = limits.max_input_len or limits.max_seq_len
    rows_of = {name: per_row(name, np.asarray(arr), batch) for name, arr in inputs.items()}
    out: list[PreRow] = []
    for i in range(batch):
        cells = np.asarray(rows_of["QUERY"][i]).reshape(-1)
        if cells.size != 1:
            raise InvalidInput(
                f"text_input must hold exactly one string per sequence, got {cells.size}"
            )
        raw = cells[0]
        size = len(raw) if isinstance(raw, bytes | str) else len(str(raw))
        check_text_bytes("text_input", size, limit, hint)
        prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if not prompt:
            raise InvalidInput("text_input is empty; send a prompt")
        max_tokens = first(rows_of["REQUEST_OUTPUT_LEN"][i])
        if max_tokens is None or int(max_tokens) < 1:
            raise InvalidInput(f"max_tokens must be >= 1, got {max_tokens}")
        row = PreRow(prompt=prompt, max_tokens=int(max_tokens))
        for name, attr in (("END_ID", "end_id"), ("PAD_ID", "pad_id")):
            v = first(rows_of[name][i]) if name in rows_of else None
            if v is not None:
                client = attr
                setattr(row, attr, check_special_id(client, int(v), limits.vocab_size))
        for name, attr, client in (
            ("STOP_WORDS_DICT", "stop_words", "stop_words"),
            ("BAD_WORDS_DICT", "bad_words", "bad_words"),
        ):
            if name in rows_of:
                words = _strings(rows_of[name][i])
                check_text_bytes(client, sum(len(w.encode()) for w in words), limit, hint)
                setattr(row, attr, [w for w in words if w])
        decoder = rows_of.get("DECODER_QUERY")
        if decoder is not None:
            texts = _strings(decoder[i])
            check_text_bytes("decoder_text_input", sum(len(t.encode()) for t in texts), limit, hint)
            row.decoder_prompt = texts[0] if texts else None
        bias_words = rows_of.get("EMBEDDING_BIAS_WORDS")
        weights = rows_of.get("EMBEDDING_BIAS_WEIGHTS")
        if bias_words is not None and weights is not None:
            w_names = _strings(bias_words[i])
            w_values = np.asarray(weights[i], dtype=np.float32).reshape(-1)
            if len(w_names) != w_values.size:
                raise InvalidInput(
                    f"embedding_bias_words has {len(w_names)} entries but embedding_bias_weights "
                    f"{w_values.size}; send one weight per word"
                )
            check_text_bytes(
                "embedding_bias_words", sum(len(w.encode()) for w in w_names), limit, hint
            )
            if np.isnan(w_values).any() or np.isposinf(w_values).any():
                raise InvalidInput(
                    "embedding_bias_weights holds NaN or +inf; send finite weights (-inf bans a "
                    "word)"
                )
            row.bias = list(zip(w_names, (float(x) for x in w_values), strict=True))
        out.append(row)
    return out


def check_prompt_tokens(
    n_tokens: int, max_tokens: int, limits: PreLimits, *, sequence: int | None = None
) -> None:
    """After tokenizing: the prompt and prompt + max_tokens against the deployment's limits."""
    where = "" if sequence is None else f" (sequence {sequence})"
    if n_tokens == 0:
        raise InvalidInput(f"text_input tokenized to nothing{where}; send a non-empty prompt")
    if limits.max_input_len and n_tokens > limits.max_input_len:
        raise InvalidInput(
            f"the prompt has {n_tokens} tokens{where}; this deployment accepts at most "
            f"{limits.max_input_len} (max_input_len)"
        )
    if limits.max_seq_len:
        check_output_len(n_tokens, max_tokens, limits.max_seq_len, "max_tokens")
