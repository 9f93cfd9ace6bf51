"""The plan of a TensorRT-LLM engine build: one argv per child process, in order.

Pure: ``plan_phases`` turns settings and paths into ``Phase`` objects; nothing runs here. The
phases (TensorRT-LLM 1.2.x):

- ``convert`` (no quantization): one process per rank runs ``trtbuild.builder._trtllm convert``,
  which calls ``<ModelClass>.from_hugging_face(..., mapping=Mapping(world_size, rank, tp, pp))`` and
  ``save_checkpoint`` (config.json from rank 0), giving ``config.json`` + ``rank{N}.safetensors``.
- ``quantize`` (FP8/INT8-SQ/INT4-AWQ weights and/or an FP8/INT8 KV cache): one process runs
  ``trtbuild.builder._trtllm quantize`` (``quantize_and_export``, what examples/quantization/
  quantize.py does), which writes the checkpoint for all ranks.
- ``build``: ``trtllm-build`` with every flag that matters set explicitly (TensorRT-LLM's own
  defaults changed between releases), building ``rank{N}.engine`` for every rank with ``--workers``.

Then trtbuild verifies the engine directory in-process (``layout.verify_engine``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trtbuild.builder.settings import BuildSettings
from trtbuild.builder.validate import fp8_context_fmha, paged_context_fmha

ENTRY_MODULE = "trtbuild.builder._trtllm"
CHECKPOINT_SUBDIR = "checkpoint"
TOKENS_PER_BLOCK = 32  # paged KV block size (TensorRT-LLM's default, pinned)
QFORMAT = {"fp8": "fp8", "int8-sq": "int8_sq", "int4-awq": "int4_awq", None: "full_prec"}

PhaseName = Literal["convert", "quantize", "build"]


@dataclass(frozen=True)
class Tools:
    """argv prefixes of the two programs a build runs (tests swap in ``fake_`` executables)."""

    convert: tuple[str, ...] = (sys.executable, "-m", ENTRY_MODULE)
    trtllm_build: tuple[str, ...] = ("trtllm-build",)


# What ``--dry-run`` and the docs show (no interpreter path from this machine).
DISPLAY_TOOLS = Tools(convert=("python3", "-m", ENTRY_MODULE), trtllm_build=("trtllm-build",))


@dataclass(frozen=True)
class Phase:
    name: PhaseName
    argv: tuple[str, ...]
    rank: int | None  # None: one process for all ranks
    world_size: int

    @property
    def label(self) -> str:
        """``convert (rank 1 of 2)``, ``quantize (2 ranks)``, ``build (1 rank)``."""
        if self.rank is not None:
            return f"{self.name} (rank {self.rank} of {self.world_size})"
        return f"{self.name} ({self.world_size} rank{'s' if self.world_size != 1 else ''})"


def plan_phases(
    settings: BuildSettings, *, checkpoint: Path, work_dir: Path, engine_dir: Path, tools: Tools
) -> list[Phase]:
    """Every child process of a TensorRT-LLM build, in order."""
    trt_ckpt = work_dir / CHECKPOINT_SUBDIR
    phases = (
        [_quantize(settings, checkpoint, trt_ckpt, tools)]
        if settings.quantized
        else [
            _convert(settings, checkpoint, trt_ckpt, tools, rank)
            for rank in range(settings.world_size)
        ]
    )
    phases.append(_build(settings, trt_ckpt, engine_dir, work_dir, tools))
    return phases


def _convert(s: BuildSettings, src: Path, dst: Path, tools: Tools, rank: int) -> Phase:
    argv = (
        *tools.convert, "convert",
        "--model_dir", str(src),
        "--output_dir", str(dst),
        "--dtype", s.dtype,
        "--tp_size", str(s.tp),
        "--pp_size", str(s.pp),
        "--rank", str(rank),
    )  # fmt: skip
    return Phase("convert", argv, rank, s.world_size)


def _quantize(s: BuildSettings, src: Path, dst: Path, tools: Tools) -> Phase:
    kv = ("--kv_cache_dtype", s.kv_cache_dtype) if s.kv_cache_dtype else ()
    argv = (
        *tools.convert, "quantize",
        "--model_dir", str(src),
        "--output_dir", str(dst),
        "--dtype", s.dtype,
        "--qformat", QFORMAT[s.quant],
        *kv,
        "--calib_size", str(s.calib_size),
        "--calib_dataset", str(s.calib_dataset),
        "--tp_size", str(s.tp),
        "--pp_size", str(s.pp),
    )  # fmt: skip
    return Phase("quantize", argv, None, s.world_size)


def _flag(on: bool) -> str:
    return "enable" if on else "disable"


def _build(s: BuildSettings, ckpt: Path, out: Path, work: Path, tools: Tools) -> Phase:
    lim = s.limits
    argv = (
        *tools.trtllm_build,
        "--checkpoint_dir", str(ckpt),
        "--output_dir", str(out),
        "--max_batch_size", str(lim.max_batch_size),
        "--max_input_len", str(lim.max_input_len),
        "--max_seq_len", str(lim.max_seq_len),
        "--max_num_tokens", str(lim.max_num_tokens),
        "--max_beam_width", "1",
        "--kv_cache_type", "paged",
        "--tokens_per_block", str(TOKENS_PER_BLOCK),
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", _flag(paged_context_fmha(s)),
        "--use_fp8_context_fmha", _flag(fp8_context_fmha(s)),
        "--gpt_attention_plugin", "auto",
        "--gemm_plugin", "fp8" if s.quant == "fp8" else "auto",
        "--multiple_profiles", "enable",
        "--workers", str(s.world_size),
        "--output_timing_cache", str(work / "model.cache"),
        "--log_level", "info",
    )  # fmt: skip
    return Phase("build", argv, None, s.world_size)
