"""trtbuild preprocessing: text in, TensorRT-LLM core-model inputs out (every flavor).

Emits what upstream's preprocessing emits for a text-only request, with the same names, dtypes,
shapes and defaults, so any TensorRT-LLM core model (C++ backend or trtbuild's portable runtime)
receives exactly what it would from upstream:

- ``INPUT_ID`` ``[B, L]`` (right-padded with the pad id) and ``REQUEST_INPUT_LEN`` ``[B, 1]``;
  ``QUERY`` may hold B prompts (``[B, 1]``), like upstream's.
- ``DECODER_INPUT_ID`` (the pad id, length 1) and ``REQUEST_DECODER_INPUT_LEN`` (1) unless
  ``DECODER_QUERY`` is given (then its tokens).
- ``STOP_WORDS_IDS`` / ``BAD_WORDS_IDS`` ``[B, 2, N]`` (empty ``[B, 2, 0]`` without words); the
  model's other end tokens (e.g. a chat end token) are added as stop words, so generation stops on
  every one of them, unless end_id is -1.
- ``EMBEDDING_BIAS`` ``[B, 0]``, or ``[B, vocab]`` built from ``EMBEDDING_BIAS_WORDS`` /
  ``EMBEDDING_BIAS_WEIGHTS`` as upstream builds it (each word's weight added to every id its
  default encoding gives, special tokens included).
- ``OUT_END_ID`` / ``OUT_PAD_ID`` ``[B, 1]`` (the tokenizer's when the request omits them),
  ``REQUEST_OUTPUT_LEN`` ``[B, 1]``, and ``OUT_PROMPT_TABLE_EXTRA_IDS`` when
  ``PROMPT_TABLE_EXTRA_ID`` is given.

Every input is validated by ``_trtbuild_requests`` (shared with the portable runtime): missing
prompt or max_tokens, max_tokens past the limits, end/pad ids outside the vocabulary, NaN or +inf
bias weights. The prompt is bounded in bytes before it is tokenized, so an oversized prompt is
refused at once instead of occupying the tokenizer.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text  # noqa: E402
from _trtbuild_requests import (  # noqa: E402
    InvalidInput,
    PreLimits,
    check_prompt_tokens,
    embedding_bias_array,
    empty_word_list,
    error_response,
    parse_preprocessing,
    word_list_array,
)


def _invalid(message):
    """An INVALID_ARGUMENT (HTTP 400) error response, marked: the client's fault."""
    return error_response(pb_utils, message)


def _padded(rows, pad_id):
    """Token lists -> ``[B, max_len]`` INT32 right-padded with ``pad_id``, and ``[B, 1]`` lengths."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, np.array([[len(r)] for r in rows], dtype=np.int32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        add_special = params.get("add_special_tokens", "true").lower() in ("1", "true")
        self.text = Text(params["tokenizer_dir"], add_special_tokens=add_special)
        self.end_id = int(params["end_id"])
        self.pad_id = int(params["pad_id"])
        extra = params.get("stop_token_ids", "")
        self.stop_token_ids = [int(x) for x in extra.split(",") if x.strip()]
        self.limits = PreLimits(
            vocab_size=self.text.vocab_size,
            max_input_len=int(params.get("max_input_len", "0")) or None,
            max_seq_len=int(params.get("max_seq_len", "0")) or None,
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._process(request)))
            except (InvalidInput, ValueError) as exc:
                responses.append(_invalid(str(exc)))
        return responses

    def _process(self, request):
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        rows = parse_preprocessing(inputs, self.limits)  # bounds every text in bytes first
        batch = len(rows)
        prompts = []
        for i, row in enumerate(rows):
            ids = self.text.encode(row.prompt)
            check_prompt_tokens(
                len(ids), row.max_tokens, self.limits, sequence=i if batch > 1 else None
            )
            prompts.append(ids)
        input_id, input_len = _padded(prompts, self.pad_id)
        end_ids = [self.end_id if r.end_id is None else r.end_id for r in rows]
        pad_ids = [self.pad_id if r.pad_id is None else r.pad_id for r in rows]
        if "DECODER_QUERY" in inputs:
            decoder = [self.text.encode(r.decoder_prompt or "") for r in rows]
            decoder_id, decoder_len = _padded(
                [d or [p] for d, p in zip(decoder, pad_ids, strict=True)], self.pad_id
            )
        else:
            decoder_id = np.array([[p] for p in pad_ids], dtype=np.int32)
            decoder_len = np.ones((batch, 1), dtype=np.int32)
        stop_rows = [[self.text.encode_plain(w) for w in r.stop_words] for r in rows]
        for words, end_id in zip(stop_rows, end_ids, strict=True):
            if end_id >= 0:  # end_id -1 means "ignore end tokens" (benchmarks): skip these too
                words += [[t] for t in self.stop_token_ids if t != end_id]
        has_stop = "STOP_WORDS_DICT" in inputs or any(stop_rows)
        stop_words = word_list_array(stop_rows) if has_stop else empty_word_list(batch)
        bad_words = (
            word_list_array([[self.text.encode_plain(w) for w in r.bad_words] for r in rows])
            if "BAD_WORDS_DICT" in inputs
            else empty_word_list(batch)
        )
        bias_rows = None
        if all(r.bias is not None for r in rows):
            bias_rows = [
                [
                    (ids, weight)
                    for word, weight in r.bias
                    if (ids := self.text.encode_default(word))
                ]
                for r in rows
            ]
        outputs = [
            pb_utils.Tensor("INPUT_ID", input_id),
            pb_utils.Tensor("REQUEST_INPUT_LEN", input_len),
            pb_utils.Tensor("DECODER_INPUT_ID", decoder_id),
            pb_utils.Tensor("REQUEST_DECODER_INPUT_LEN", decoder_len),
            pb_utils.Tensor("BAD_WORDS_IDS", bad_words),
            pb_utils.Tensor("STOP_WORDS_IDS", stop_words),
            pb_utils.Tensor(
                "EMBEDDING_BIAS", embedding_bias_array(bias_rows, self.text.vocab_size, batch)
            ),
            pb_utils.Tensor(
                "REQUEST_OUTPUT_LEN", np.array([[r.max_tokens] for r in rows], dtype=np.int32)
            ),
            pb_utils.Tensor("OUT_END_ID", np.array([[e] for e in end_ids], dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.array([[p] for p in pad_ids], dtype=np.int32)),
        ]
        extra = inputs.get("PROMPT_TABLE_EXTRA_ID")
        if extra is not None:  # upstream: the extra id on every prompt-table (>= vocab) position
            extra = np.asarray(extra, dtype=np.uint64).reshape(-1)
            per_row = extra if extra.size == batch else np.repeat(extra[:1], batch)
            extra_ids = np.where(
                input_id >= self.text.vocab_size, per_row[:, np.newaxis], 0
            ).astype(np.uint64)
            outputs.append(pb_utils.Tensor("OUT_PROMPT_TABLE_EXTRA_IDS", extra_ids))
        return outputs
