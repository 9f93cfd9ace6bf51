"""trtbuild shim for TensorRT-LLM's ``llmapi`` Triton model (TensorRT-LLM >= 1.0, PyTorch backend).

trtbuild does not ship TensorRT-LLM's model code. This file loads the one on the serving machine,
named by the ``llmapi_model_py`` parameter of config.pbtxt: by default
``/app/all_models/llmapi/tensorrt_llm/1/model.py``, where the NGC ``-trtllm-python-py3`` 1.x
containers keep it (TensorRT-LLM's source: ``triton_backend/all_models/llmapi/tensorrt_llm/1/``),
and hands every call to its ``TritonPythonModel``. That model reads ``model.yaml`` (the ``LLM()``
arguments trtbuild rendered) from this directory (``pb_utils.get_model_dir()``), or from
``$LLM_CONFIG_PATH``.
"""

import importlib.util
import json
import os
import sys


def _load(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"TensorRT-LLM's llmapi model {path} is missing: serve inside "
            "nvcr.io/nvidia/tritonserver:<25.09 or newer>-trtllm-python-py3, or re-render with "
            "llmapi_model_py set to triton_backend/all_models/llmapi/tensorrt_llm/1/model.py of "
            "the TensorRT-LLM you serve with"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)  # it imports its sibling helpers.py
    spec = importlib.util.spec_from_file_location("_tensorrt_llm_llmapi_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = config["parameters"]["llmapi_model_py"]["string_value"]
        self._model = _load(path).TritonPythonModel()
        return self._model.initialize(args)

    def execute(self, requests):
        return self._model.execute(requests)

    def finalize(self):
        finalize = getattr(getattr(self, "_model", None), "finalize", None)
        return finalize() if finalize is not None else None
