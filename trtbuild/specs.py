"""Typed specs: every command parses its options into one of these and hands it to the library.

All are pydantic models with ``extra="forbid"`` (a typo in a spec file fails loudly) and frozen.
The spec that produced an artifact is written next to it, so it can be rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Runtime = Literal["torch", "tensorrtllm", "llmapi"]
Protocol = Literal["http", "grpc"]
LOOPBACK = "127.0.0.1"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- serving limits (shared by the portable runtime, the repository and the engine) -------------
class RuntimeLimits(StrictModel):
    """Per-deployment limits. The portable runtime enforces all of them per request."""

    max_batch_size: int = Field(16, ge=1, le=4096, description="sequences decoded together")
    max_input_len: int = Field(1024, ge=1, description="longest prompt, in tokens")
    max_seq_len: int = Field(2048, ge=2, description="prompt + output, in tokens")
    max_num_tokens: int = Field(4096, ge=1, description="prefill tokens per scheduler step")
    max_queue_size: int = Field(256, ge=1, description="requests waiting before new ones are refused")

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeLimits:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be below max_seq_len "
                f"({self.max_seq_len}) to leave room for output"
            )
        if self.max_num_tokens < self.max_input_len:
            raise ValueError(
                f"max_num_tokens ({self.max_num_tokens}) must be >= max_input_len "
                f"({self.max_input_len}) so the longest prompt can be prefilled"
            )
        return self


# -- repository ------------------------------------------------------------------------------------
class RepoSpec(StrictModel):
    """Everything the inflight-batching templates need; saved beside the rendered repository."""

    runtime: Runtime = "torch"
    engine_dir: Path
    tokenizer_dir: Path
    streaming: bool = Field(True, description="decoupled tensorrt_llm model (token streaming)")
    limits: RuntimeLimits = RuntimeLimits()
    end_id: int = Field(description="generation stops at this token (tokenizer eos)")
    pad_id: int
    stop_token_ids: list[int] = Field(
        default_factory=list, description="more end tokens (e.g. a chat end token), sent as stop words"
    )
    exclude_input_in_output: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    preprocessing_instance_count: int = Field(1, ge=1)
    postprocessing_instance_count: int = Field(1, ge=1)
    bls_instance_count: int = Field(1, ge=1)
    max_queue_delay_microseconds: int = Field(0, ge=0)
    # portable runtime
    device: str = Field("auto", description="torch device for the portable runtime: auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    num_threads: int = Field(0, ge=0, description="torch threads (0: torch's default)")


# -- server and client --------------------------------------------------------------------------
class ServeSpec(StrictModel):
    repo: Path
    host: str = LOOPBACK
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    tritonserver: Path | None = None
    startup_timeout: float = Field(300.0, gt=0)
    log_verbose: int = Field(0, ge=0)
    log_file: Path | None = None


class SamplingSpec(StrictModel):
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)


class InferSpec(StrictModel):
    prompt: str
    url: str = f"{LOOPBACK}:8001"
    protocol: Protocol = "grpc"
    stream: bool = False
    max_tokens: int = Field(64, ge=1)
    model: str = "ensemble"
    sampling: SamplingSpec = SamplingSpec()
    stop_words: list[str] = Field(default_factory=list)
    end_id: int | None = None
    timeout: float = Field(120.0, gt=0)
