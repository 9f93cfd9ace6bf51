"""trtbuild BLS front: whole (non-streamed) responses for plain HTTP and gRPC ``/infer`` clients.

An ensemble whose core model is decoupled is itself decoupled, so Triton's HTTP ``/infer``
refuses it. This model is not decoupled: it calls ``preprocessing`` and the core model from
Python, collects the tokens, and answers once. Requests that arrive together (dynamic batching)
run concurrently on a thread pool. Streaming goes through the ``ensemble`` instead.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

# client name -> preprocessing input
TO_PRE = {
    "text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID",
}  # fmt: skip
# preprocessing output -> core input
PRE_TO_CORE = {
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len", "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id",
    "STOP_WORDS_IDS": "stop_words_list", "BAD_WORDS_IDS": "bad_words_list",
}  # fmt: skip
# client name -> core input, for everything the core model reads straight from the client
RENAMES = {"top_k": "runtime_top_k", "top_p": "runtime_top_p", "length_penalty": "len_penalty"}
PASSTHROUGH = (
    "cum_log_probs", "output_log_probs", "batch_index", "sequence_index", "arrival_time_ns",
    "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns", "num_input_tokens",
    "num_output_tokens",
)  # fmt: skip


class _Failed(Exception):
    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def _check(response, what, invalid=False):
    """Raise for an error response. BLS calls lose the error code, so preprocessing's errors
    (it only ever rejects bad input) are marked INVALID_ARG here."""
    if response.has_error():
        error = response.error()
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
        raise _Failed(f"{what}: {error.message()}", code)
    return response


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.core = params.get("tensorrt_llm_model_name", "tensorrt_llm")
        self.core_text = params.get("core_text_output", "false").lower() == "true"
        self.client_inputs = [i["name"] for i in config["input"]]
        # the outputs this TensorRT-LLM version declares (<= 0.19 has no num_*_tokens)
        declared = {o["name"] for o in config["output"]}
        self.passthrough = [name for name in PASSTHROUGH if name in declared]
        self.pool = ThreadPoolExecutor(max_workers=int(params.get("max_concurrency", "16")))

    def execute(self, requests):
        futures = [self.pool.submit(self._one, r) for r in requests]
        return [f.result() for f in futures]

    def _one(self, request):
        try:
            return pb_utils.InferenceResponse(self._generate(request))
        except _Failed as exc:
            error = (
                pb_utils.TritonError(str(exc), exc.code)
                if exc.code is not None
                else pb_utils.TritonError(str(exc))
            )
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # noqa: BLE001 - report, do not take the model down
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"tensorrt_llm_bls: {exc}")
            )

    def _generate(self, request):
        given = {}
        for name in self.client_inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                given[name] = tensor.as_numpy()
        if "stream" in given and bool(given["stream"].reshape(-1)[0]):
            raise _Failed(
                "tensorrt_llm_bls answers whole responses; to stream, use the ensemble over gRPC "
                "streaming or POST /v2/models/ensemble/generate_stream",
                getattr(pb_utils.TritonError, "INVALID_ARG", None),
            )
        pre_inputs = [pb_utils.Tensor(TO_PRE[n], v) for n, v in given.items() if n in TO_PRE]
        pre = _check(
            pb_utils.InferenceRequest(
                model_name="preprocessing",
                inputs=pre_inputs,
                requested_output_names=list(PRE_TO_CORE),
            ).exec(),
            "preprocessing",
            invalid=True,
        )
        core_inputs = []
        for pre_name, core_name in PRE_TO_CORE.items():
            tensor = pb_utils.get_output_tensor_by_name(pre, pre_name)
            if tensor is not None:
                core_inputs.append(pb_utils.Tensor(core_name, tensor.as_numpy()))
        for name, value in given.items():
            if name not in TO_PRE and name != "stream":
                core_inputs.append(pb_utils.Tensor(RENAMES.get(name, name), value))
        core_inputs.append(pb_utils.Tensor("streaming", np.array([[False]], dtype=bool)))
        wanted = ["output_ids", "sequence_length", *self.passthrough]
        if self.core_text:
            wanted.append("output_text")
        last = None
        for response in pb_utils.InferenceRequest(
            model_name=self.core, inputs=core_inputs, requested_output_names=wanted
        ).exec(decoupled=True):
            _check(response, self.core)
            if response.output_tensors():
                last = response
        if last is None:
            raise _Failed(f"{self.core} returned no output")
        text = pb_utils.get_output_tensor_by_name(last, "output_text") if self.core_text else None
        if text is None:
            post = _check(
                pb_utils.InferenceRequest(
                    model_name="postprocessing",
                    inputs=[
                        pb_utils.Tensor(
                            "TOKENS_BATCH",
                            pb_utils.get_output_tensor_by_name(last, "output_ids").as_numpy(),
                        ),
                        pb_utils.Tensor(
                            "SEQUENCE_LENGTH",
                            pb_utils.get_output_tensor_by_name(last, "sequence_length").as_numpy(),
                        ),
                    ],
                    requested_output_names=["OUTPUT"],
                ).exec(),
                "postprocessing",
            )
            text = pb_utils.get_output_tensor_by_name(post, "OUTPUT")
        outputs = [pb_utils.Tensor("text_output", text.as_numpy())]
        for name in self.passthrough:
            tensor = pb_utils.get_output_tensor_by_name(last, name)
            if tensor is not None:
                outputs.append(pb_utils.Tensor(name, tensor.as_numpy()))
        return outputs

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
