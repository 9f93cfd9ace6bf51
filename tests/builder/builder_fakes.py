"""Helpers shared by the builder tests: fake TensorRT-LLM tools and fake GPUs (see tests/fakes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trtbuild.builder._trtllm import Toolchain
from trtbuild.builder.commands import Tools
from trtbuild.gpus import DetectedGpu, find_gpu

FAKES = Path(__file__).resolve().parent.parent / "fakes"
DRIVER_NAMES = {
    "h100-sxm": "NVIDIA H100 80GB HBM3",
    "a100-80gb": "NVIDIA A100-SXM4-80GB",
    "l40s": "NVIDIA L40S",
    "b200": "NVIDIA B200",
    "a10": "NVIDIA A10",
}
SM = {"h100-sxm": 90, "a100-80gb": 80, "l40s": 89, "b200": 100, "a10": 86}

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}


def gpus(name: str, count: int = 1) -> list[DetectedGpu]:
    driver = DRIVER_NAMES[name]
    return [DetectedGpu(i, driver, SM[name], 81559, find_gpu(driver)) for i in range(count)]


FAKE_TOOLS = Tools(
    convert=(sys.executable, str(FAKES / "fake_trtllm_convert")),
    trtllm_build=(sys.executable, str(FAKES / "fake_trtllm-build")),
)
FAKE_TOOLCHAIN = Toolchain(
    trtllm_version="1.2.1",
    tensorrt_version="10.14.1.48",
    cuda_version="13.1",
    container="nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
    tools=FAKE_TOOLS,
)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def trtbuild_main(ctx: click.Context) -> None:
    """``trtbuild.cli.main`` (the one error handler) as a command CliRunner can invoke."""
    from trtbuild.cli import main

    main(list(ctx.args))
