"""trtbuild postprocessing: token ids in, text out (the TensorRT-LLM flavors' ensembles).

Each request is decoded on its own, so a streamed TensorRT-LLM C++ response holding part of a
multi-byte character decodes to a replacement character: upstream's limitation, kept because an
ensemble step cannot know when a stream ends (per-request state could never be freed). The
portable runtime does not go through this model: it sends incrementally detokenized text itself.
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
        self.text = Text(params["tokenizer_dir"])

    def _decode(self, tokens, lengths):
        """One string per (batch row, beam), flat: upstream's OUTPUT is 1-D ([1] for one
        sequence), and its clients index it as ``text_output[0]``."""
        return [
            self.text.decode(list(beam[:n]), self.skip_special).encode("utf-8")
            for batch, lens in zip(tokens, lengths, strict=True)
            for beam, n in zip(batch, lens, strict=True)
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            out = np.array(self._decode(tokens, lengths), dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
