"""trtbuild preprocessing for the LLM-API flavor: client names in, llmapi-model inputs out.

TensorRT-LLM's llmapi model tokenizes by itself; this step makes each request right before it gets
there. It rejects a prompt or ``max_tokens`` beyond the deployment's limits with an error that
names the fix, asks the model not to echo the prompt unless the request says so (the llmapi model
defaults ``sampling_param_exclude_input_from_output`` to false), adds the model's other end tokens
(a chat end token such as ``<|eot_id|>``) as stop strings, and refuses ``stream`` when the
repository was rendered without streaming.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text  # noqa: E402
from _trtbuild_requests import error_response  # noqa: E402


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy().reshape(-1)
    return arr[0] if arr.size else None


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [
        v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)
    ]


def _invalid(message):
    """An INVALID_ARGUMENT (HTTP 400) error response, marked: the client's fault."""
    return error_response(pb_utils, message)


def _true(value):
    return str(value).lower() in ("1", "true")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.text = Text(
            params["tokenizer_dir"], add_special_tokens=_true(params.get("add_special_tokens", "1"))
        )
        self.max_input_len = int(params.get("max_input_len", "0")) or None
        self.max_seq_len = int(params.get("max_seq_len", "0")) or None
        self.exclude_input = _true(params.get("exclude_input_in_output", "true"))
        self.decoupled = _true(params.get("decoupled", "false"))
        end_id = int(params["end_id"])
        extra = [int(x) for x in params.get("stop_token_ids", "").split(",") if x.strip()]
        # LLM() stops at the tokenizer's end token; the others become stop strings (TensorRT-LLM
        # tokenizes stop strings, so a special token's text matches exactly that token)
        self.end_strings = []
        for token_id in extra:
            token = self.text.tokenizer.id_to_token(token_id)
            if token is not None and token_id != end_id:
                self.end_strings.append(token)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._process(request)))
            except ValueError as exc:
                responses.append(_invalid(str(exc)))
        return responses

    def _process(self, request):
        prompts = _strings(request, "text_input")
        max_tokens = _scalar(request, "max_tokens")
        max_tokens = None if max_tokens is None else int(max_tokens)
        self.text.prompt_ids(
            prompts, max_tokens, max_input_len=self.max_input_len, max_seq_len=self.max_seq_len
        )
        stream = _scalar(request, "stream")
        stream = bool(stream) if stream is not None else False
        if stream and not self.decoupled:
            raise ValueError(
                "this repository was rendered without streaming (decoupled false); send "
                "stream=false, or re-render with 'trtbuild repo --streaming'"
            )
        exclude = _scalar(request, "exclude_input_in_output")
        exclude = self.exclude_input if exclude is None else bool(exclude)
        stop = [w for w in _strings(request, "stop_words") if w] + self.end_strings
        outputs = [
            pb_utils.Tensor("prompt", np.array([prompts[0].encode("utf-8")], dtype=object)),
            pb_utils.Tensor("sampling_param_max_tokens", np.array([max_tokens], dtype=np.int32)),
            pb_utils.Tensor("streaming", np.array([stream], dtype=bool)),
            pb_utils.Tensor(
                "sampling_param_exclude_input_from_output", np.array([exclude], dtype=bool)
            ),
        ]
        if stop:
            outputs.append(
                pb_utils.Tensor(
                    "sampling_param_stop", np.array([w.encode("utf-8") for w in stop], dtype=object)
                )
            )
        return outputs
