"""trtbuild BLS front for the LLM-API flavor: whole responses for plain HTTP/gRPC ``/infer`` clients.

An ensemble with a decoupled (streaming) step is itself decoupled, so Triton's HTTP ``/infer``
refuses it. This model is not decoupled: it sends the request to the ensemble with
``stream=false`` and answers once with the ensemble's final response.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_requests import error_response  # noqa: E402

# outputs the llmapi model sends only when asked: output -> the request flag that asks for it
ON_REQUEST = {
    "finish_reason": "return_finish_reason",
    "stop_reason": "return_stop_reason",
    "cumulative_logprob": "return_cumulative_logprob",
}


def _flag(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor is not None and bool(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.target = params.get("ensemble_model_name", "ensemble")
        self.decoupled = params.get("ensemble_decoupled", "false").lower() == "true"
        self.inputs = [i["name"] for i in config["input"]]

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            return pb_utils.InferenceResponse(self._generate(request))
        except ValueError as exc:  # the request's fault: INVALID_ARGUMENT, marked
            return error_response(pb_utils, str(exc))
        except Exception as exc:  # noqa: BLE001 - report, do not take the model down
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

    def _generate(self, request):
        if _flag(request, "stream"):
            raise ValueError(
                "tensorrt_llm_bls answers whole responses; to stream, use the ensemble over gRPC "
                "streaming or POST /v2/models/ensemble/generate_stream"
            )
        inputs = [pb_utils.Tensor("stream", np.array([False], dtype=bool))]
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None and name != "stream":
                inputs.append(pb_utils.Tensor(name, tensor.as_numpy()))
        wanted = ["text_output"] + [o for o, flag in ON_REQUEST.items() if _flag(request, flag)]
        call = pb_utils.InferenceRequest(
            model_name=self.target, inputs=inputs, requested_output_names=wanted
        )
        responses = call.exec(decoupled=True) if self.decoupled else [call.exec()]
        last = None
        for response in responses:
            if response.has_error():
                raise RuntimeError(f"{self.target}: {response.error().message()}")
            if response.output_tensors():
                last = response
        if last is None:
            raise RuntimeError(f"{self.target} returned no output")
        outputs = []
        for name in wanted:
            tensor = pb_utils.get_output_tensor_by_name(last, name)
            if tensor is not None:
                outputs.append(pb_utils.Tensor(name, tensor.as_numpy()))
        return outputs
