"""The one module that touches TensorRT-LLM (1.2.x, the last line with the engine builder).

NOT EXECUTED IN CI: TensorRT-LLM needs an NVIDIA GPU and the NGC container, so this module is
written against TensorRT-LLM 1.2.x's documented APIs and exercised only by ``make test-gpu``
inside ``nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3`` (see docs/engine.md). Everything
around it is tested with ``fake_`` executables that write the same files.

Two parts:

- ``detect_toolchain`` reads installed versions from package metadata (no TensorRT-LLM import).
- ``main`` is a child-process entry point, ``python -m trtbuild.builder._trtllm convert|quantize``,
  so a crash in TensorRT-LLM (or CUDA) fails one phase with its log, never the trtbuild process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtbuild.errors import SpecError, ToolNotFound
from trtbuild.files.hf import read_hf_config

if TYPE_CHECKING:  # the child-process entry point below stays light: no pydantic import
    from trtbuild.builder.commands import Tools

# The newest Triton container with the engine builder (server docs/introduction/compatibility.md).
CONTAINER = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
PINNED_TRTLLM = "1.2.1"
_TENSORRT_DISTS = (
    "tensorrt",
    "tensorrt_cu13",
    "tensorrt_cu12",
    "tensorrt_cu13_libs",
    "tensorrt_cu12_libs",
)


@dataclass(frozen=True)
class Toolchain:
    """The TensorRT-LLM install a build runs with, and how to invoke its tools."""

    trtllm_version: str
    tensorrt_version: str | None
    cuda_version: str | None
    container: str | None
    tools: Tools


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    return next((v for d in _TENSORRT_DISTS if (v := installed_version(d))), None)


def container_image() -> str | None:
    """NGC Triton containers set ``NVIDIA_TRITON_SERVER_VERSION`` (e.g. ``26.07``)."""
    version = os.environ.get("NVIDIA_TRITON_SERVER_VERSION")
    if not version:
        return None
    flavor = "-trtllm-python-py3" if installed_version("tensorrt_llm") else "-py3"
    return f"nvcr.io/nvidia/tritonserver:{version}{flavor}"


def cuda_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def has_engine_builder(version: str) -> bool:
    """TensorRT-LLM 1.3 removed trtllm-build and the TensorRT model classes."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return tuple(parts) < (1, 3)


def detect_toolchain() -> Toolchain | None:
    """The installed TensorRT-LLM, or None when it is not installed in this Python."""
    from trtbuild.builder.commands import Tools

    version = installed_version("tensorrt_llm")
    if version is None:
        return None
    if not has_engine_builder(version):
        raise SpecError(
            f"TensorRT-LLM {version} has no engine builder (removed in 1.3); build in {CONTAINER} "
            f"(TensorRT-LLM {PINNED_TRTLLM}) or use --runtime llmapi"
        )
    build = shutil.which("trtllm-build")
    if build is None:
        raise ToolNotFound(
            "trtllm-build", f"TensorRT-LLM {version} is installed but its CLI is not on PATH."
        )
    return Toolchain(
        trtllm_version=version,
        tensorrt_version=tensorrt_version(),
        cuda_version=cuda_version(),
        container=container_image(),
        tools=Tools(convert=(sys.executable, "-m", __name__), trtllm_build=(build,)),
    )


# -- child-process entry point -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argv contract of the convert/quantize phases (the fake executables parse it too)."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("convert", "quantize"):
        p = sub.add_parser(name)
        p.add_argument("--model_dir", required=True, type=Path)
        p.add_argument("--output_dir", required=True, type=Path)
        p.add_argument("--dtype", required=True, choices=["bfloat16", "float16", "float32"])
        p.add_argument("--tp_size", type=int, default=1)
        p.add_argument("--pp_size", type=int, default=1)
        if name == "convert":
            p.add_argument("--rank", type=int, required=True)
        else:
            p.add_argument(
                "--qformat", required=True, choices=["fp8", "int8_sq", "int4_awq", "full_prec"]
            )
            p.add_argument("--kv_cache_dtype", choices=["fp8", "int8"])
            p.add_argument("--calib_size", type=int, default=512)
            p.add_argument("--calib_dataset", default="cnn_dailymail")
    return parser


def convert(args: argparse.Namespace) -> None:
    """One rank of an HF -> TensorRT-LLM checkpoint conversion (the model class does the work)."""
    from tensorrt_llm.mapping import Mapping
    from tensorrt_llm.models import MODEL_MAP

    config = read_hf_config(args.model_dir)
    arch = (config.get("architectures") or ["?"])[0]
    model_cls = MODEL_MAP.get(arch)
    if model_cls is None or not hasattr(model_cls, "from_hugging_face"):
        raise SystemExit(
            f"TensorRT-LLM cannot convert {arch} checkpoints to engines; use --runtime llmapi"
        )
    world_size = args.tp_size * args.pp_size
    mapping = Mapping(
        world_size=world_size, rank=args.rank, tp_size=args.tp_size, pp_size=args.pp_size
    )
    model = model_cls.from_hugging_face(str(args.model_dir), args.dtype, mapping=mapping)
    model.save_checkpoint(str(args.output_dir), save_config=(args.rank == 0))


def quantize(args: argparse.Namespace) -> None:
    """ModelOpt quantization + export of all ranks, as examples/quantization/quantize.py does."""
    from tensorrt_llm.quantization import quantize_and_export

    wanted = {
        "model_dir": str(args.model_dir),
        "device": "cuda",
        "calib_dataset": args.calib_dataset,
        "dtype": args.dtype,
        "qformat": args.qformat,
        "kv_cache_dtype": args.kv_cache_dtype,
        "calib_size": args.calib_size,
        "batch_size": 1,
        "calib_max_seq_length": 512,
        "awq_block_size": 128,
        "output_dir": str(args.output_dir),
        "tp_size": args.tp_size,
        "pp_size": args.pp_size,
        "cp_size": 1,
        "seed": 1234,
        "tokenizer_max_seq_length": 2048,
    }
    accepted = inspect.signature(quantize_and_export).parameters
    if "tp_size" not in accepted and args.tp_size * args.pp_size > 1:
        raise SystemExit("this TensorRT-LLM's quantize_and_export cannot write a TP/PP checkpoint")
    quantize_and_export(**{k: v for k, v in wanted.items() if k in accepted})


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (convert if args.command == "convert" else quantize)(args)


if __name__ == "__main__":
    main()
