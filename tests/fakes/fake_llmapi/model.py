"""FAKE stand-in for TensorRT-LLM's llmapi Triton model (tests only; no TensorRT-LLM).

It is laid out like the real one (``triton_backend/all_models/llmapi/tensorrt_llm/1/model.py``):
it imports its sibling ``helpers`` module, reads ``model.yaml`` from ``pb_utils.get_model_dir()``
and takes ``triton_config.decoupled`` from it, and sends its responses through the response
sender. Instead of generating, it answers with what it received, as JSON in ``text_output``,
so a test can see exactly what trtbuild's preprocessing and ensemble handed to the real model.
Streaming requests get two responses: a first piece, then the JSON.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml
from helpers import received


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(pb_utils.get_model_dir(), "model.yaml")
        with open(path) as f:
            self.llm_args = yaml.safe_load(f)
        self.decoupled = bool(self.llm_args["triton_config"]["decoupled"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            got = received(request)
            answer = {"received": got, "model_yaml": self.llm_args}
            if got.get("streaming") and self.decoupled:
                sender.send(_response("fake piece; "))
            sender.send(
                _response(json.dumps(answer)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            )
        return None


def _response(text):
    return pb_utils.InferenceResponse(
        [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object))]
    )
