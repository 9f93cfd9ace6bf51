"""trtbuild preprocessing: text in, TensorRT-LLM core-model inputs out.

Tokenizes ``QUERY`` with the fast tokenizer (no torch import, quick to load), turns stop/bad word
strings into TensorRT-LLM's ``[2, N]`` id lists, fills ``end_id``/``pad_id`` from the tokenizer
when the request omits them, and adds the model's other end tokens (e.g. a chat end token) as
stop words so generation stops on every one of them. Bad requests (empty prompt, max_tokens <= 0
or past the model's limits) get an error response naming the fix.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text, stop_words_tensor  # noqa: E402


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return [
        v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)
    ]


def _int(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy().reshape(-1)
    return int(arr[0]) if arr.size else None


def _invalid(message):
    """An error response that Triton reports as INVALID_ARGUMENT (HTTP 400): the client's fault."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = (
        pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    )
    return pb_utils.InferenceResponse(error=error)


def _words_array(words):
    return np.array([stop_words_tensor(words)], dtype=np.int32)


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
        self.max_input_len = int(params.get("max_input_len", "0")) or None
        self.max_seq_len = int(params.get("max_seq_len", "0")) or None

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._process(request)))
            except ValueError as exc:
                responses.append(_invalid(str(exc)))
        return responses

    def _process(self, request):
        max_tokens = _int(request, "REQUEST_OUTPUT_LEN")
        ids = self.text.prompt_ids(
            _strings(request, "QUERY"), max_tokens,
            max_input_len=self.max_input_len, max_seq_len=self.max_seq_len,
        )  # fmt: skip
        end_id = _int(request, "END_ID")
        end_id = self.end_id if end_id is None else end_id
        pad_id = _int(request, "PAD_ID")
        pad_id = self.pad_id if pad_id is None else pad_id
        stop_words = [
            self.text.encode_plain(w) for w in (_strings(request, "STOP_WORDS_DICT") or []) if w
        ]
        if end_id >= 0:  # end_id -1 means "ignore end tokens" (benchmarks): skip the extra ones too
            stop_words += [[t] for t in self.stop_token_ids if t != end_id]
        bad_words = [
            self.text.encode_plain(w) for w in (_strings(request, "BAD_WORDS_DICT") or []) if w
        ]
        outputs = [
            pb_utils.Tensor("INPUT_ID", np.array([ids], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(ids)]], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.array([[max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("OUT_END_ID", np.array([[end_id]], dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.array([[pad_id]], dtype=np.int32)),
        ]
        if stop_words:
            outputs.append(pb_utils.Tensor("STOP_WORDS_IDS", _words_array(stop_words)))
        if bad_words:
            outputs.append(pb_utils.Tensor("BAD_WORDS_IDS", _words_array(bad_words)))
        return outputs
