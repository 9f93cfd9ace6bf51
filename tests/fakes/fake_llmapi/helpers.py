"""FAKE llmapi helpers (the real model imports its sibling helpers.py the same way)."""

import numpy as np
import triton_python_backend_utils as pb_utils

NAMES = (
    "text_input", "streaming", "sampling_param_temperature", "sampling_param_top_k",
    "sampling_param_top_p", "sampling_param_frequency_penalty", "sampling_param_presence_penalty",
    "sampling_param_max_tokens", "sampling_param_stop", "sampling_param_seed",
    "sampling_param_exclude_input_from_output", "sampling_param_return_perf_metrics",
    "return_finish_reason",
)  # fmt: skip


def received(request):
    """Every known input of the request as plain JSON values (lists for tensors of size > 1)."""
    out = {}
    for name in NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        values = [
            v.decode("utf-8") if isinstance(v, bytes) else np.asarray(v).item()
            for v in tensor.as_numpy().reshape(-1)
        ]
        out[name] = values if name in ("sampling_param_stop",) else values[0]
    return out
