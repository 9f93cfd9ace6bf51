"""trtbuild postprocessing: token ids in, text out.

When the core model sends ``OUTPUT_TEXT`` (trtbuild's portable runtime detokenizes incrementally,
where the per-request state lives), it is passed through unchanged: streamed pieces then add up to
the full decode, multi-byte characters and leading spaces included. Otherwise (TensorRT-LLM's C++
backend) the ids of each response are decoded here.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trtbuild_detok import Text  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.skip_special = params.get("skip_special_tokens", "true").lower() in ("1", "true")
        self.text = None
        self.tokenizer_dir = params["tokenizer_dir"]

    def _decode(self, tokens, lengths):
        if self.text is None:  # loaded on first use: the portable path never needs it
            self.text = Text(self.tokenizer_dir)
        return [
            [
                self.text.decode(list(beam[:n]), self.skip_special).encode("utf-8")
                for beam, n in zip(batch, lens, strict=True)
            ]
            for batch, lens in zip(tokens, lengths, strict=True)
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "OUTPUT_TEXT")
            if text is not None:
                out = text.as_numpy()
            else:
                tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
                lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
                out = np.array(self._decode(tokens, lengths), dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
