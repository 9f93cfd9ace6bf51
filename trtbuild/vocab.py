"""One vocabulary: the names every command shares (dtypes, weight quantization, KV-cache dtypes),
GPU generations and what each supports, trtbuild's default limits, what a tokenizer is made of.

Each command accepts the canonical name and its common spellings (``bf16`` or ``bfloat16``,
``int8`` or ``int8-sq``) and prints only the canonical one. Specs validate through the same
tables, so a spec file written with an alias reads back canonical.

| canonical  | also accepted                          | meaning                                   |
|------------|----------------------------------------|-------------------------------------------|
| bfloat16   | bf16                                   | 16-bit brain float (SM >= 80)             |
| float16    | fp16                                   | IEEE half                                 |
| float32    | fp32                                   | only for the portable runtime             |
| none       | (none)                                 | unquantized weights                       |
| fp8        | (none)                                 | FP8 weights, ModelOpt (SM >= 89)          |
| int8-sq    | int8, int8_sq                          | INT8 SmoothQuant weights and activations  |
| int4-awq   | awq, int4_awq                          | INT4 AWQ weights                          |
| auto (KV)  | bf16, fp16, bfloat16, float16          | the KV cache in the model's 16-bit dtype  |
| fp8 (KV)   |                                        | FP8 KV cache                              |
| int8 (KV)  |                                        | INT8 KV cache                             |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from trtbuild.runtime import parallel as _parallel  # stdlib only at import

DTYPES = ("bfloat16", "float16", "float32")
DTYPE_ALIASES: Mapping[str, str] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
}
QUANTS = ("none", "fp8", "int8-sq", "int4-awq")
QUANT_ALIASES: Mapping[str, str] = {
    "int8": "int8-sq",
    "int8_sq": "int8-sq",
    "awq": "int4-awq",
    "int4_awq": "int4-awq",
}
KV_DTYPES = ("auto", "fp8", "int8")
KV_ALIASES: Mapping[str, str] = {
    "bf16": "auto",
    "fp16": "auto",
    "bfloat16": "auto",
    "float16": "auto",
}

# Which alias table serves which option; the CLI and the specs both use these.
ALIASES: Mapping[str, Mapping[str, str]] = {
    "dtype": DTYPE_ALIASES,
    "quant": QUANT_ALIASES,
    "kv_cache_dtype": KV_ALIASES,
}


def canonical(kind: str, value: Any) -> Any:
    """``canonical("dtype", "BF16") == "bfloat16"``; values that are not strings pass through."""
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    return ALIASES[kind].get(lowered, lowered)


def _validator(kind: str) -> BeforeValidator:
    return BeforeValidator(lambda value: canonical(kind, value))


# pydantic field types: an alias is accepted and stored canonical.
DType = Annotated[Literal["bfloat16", "float16", "float32"], _validator("dtype")]
DType16 = Annotated[Literal["bfloat16", "float16"], _validator("dtype")]
AutoDType = Annotated[Literal["auto", "bfloat16", "float16", "float32"], _validator("dtype")]
AutoDType16 = Annotated[Literal["auto", "bfloat16", "float16"], _validator("dtype")]
Quant = Annotated[Literal["none", "fp8", "int8-sq", "int4-awq"], _validator("quant")]
WeightQuant = Annotated[Literal["fp8", "int8-sq", "int4-awq"], _validator("quant")]
AutoQuant = Annotated[Literal["auto", "none", "fp8", "int8-sq", "int4-awq"], _validator("quant")]
KvDType = Annotated[Literal["auto", "fp8", "int8"], _validator("kv_cache_dtype")]
KvQuant = Annotated[Literal["fp8", "int8"], _validator("kv_cache_dtype")]


# -- GPU generations: the compute capability (SM) each feature needs -----------------------------
SM_BF16 = 80  # Ampere
SM_FP8 = 89  # Ada Lovelace, Hopper (90)
SM_NVFP4 = 100  # Blackwell
# TensorRT-LLM 1.2's builder refuses INT8/INT4 weight quantization on these (tensorrt_llm/builder.py)
SM_NO_INT8_WEIGHTS = range(100, 120)
GENERATIONS = {70: "Volta", 75: "Turing", 80: "Ampere", 86: "Ampere", 89: "Ada", 90: "Hopper",
               100: "Blackwell", 120: "Blackwell"}  # fmt: skip


def supports_fp8(sm: int) -> bool:
    return sm >= SM_FP8


def supports_bf16(sm: int) -> bool:
    return sm >= SM_BF16


# -- trtbuild's default limits (the planner picks better ones for a model and GPU) ---------------
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_INPUT_LEN = 1024
DEFAULT_MAX_SEQ_LEN = 2048
DEFAULT_MAX_NUM_TOKENS = (
    8192  # prefill tokens per step: trtllm-build's default (at least max_input_len)
)
DEFAULT_MAX_QUEUE_SIZE = 256

# -- tokenizers -------------------------------------------------------------------------------------
# What a Hugging Face tokenizer is made of (names, or patterns such as *.tiktoken): downloaded,
# copied into engine directories.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "*.tiktoken",
)
# Any one of these holds a vocabulary (fast, SentencePiece, byte-level BPE).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


# -- the portable runtime's rank groups (names the runtime, copied into repositories, defines) -----
# the rendezvous environment trtbuild serve sets, the Slurm rendezvous port, the model types a
# rank group splits
TP_ADDR_ENV = _parallel.ADDR_ENV
TP_PORT_ENV = _parallel.PORT_ENV
TP_SLURM_PORT = _parallel.SLURM_PORT
SLOT_MODEL_TYPES = _parallel.SLOT_MODEL_TYPES


def accepted(kind: str, choices: tuple[str, ...]) -> list[str]:
    """Every spelling the CLI accepts for ``choices``: the names, then their aliases."""
    extra = [alias for alias, name in ALIASES[kind].items() if name in choices]
    return [*choices, *(a for a in extra if a not in choices)]


__all__ = [
    "ALIASES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_INPUT_LEN",
    "DEFAULT_MAX_NUM_TOKENS",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_MAX_SEQ_LEN",
    "GENERATIONS",
    "SM_BF16",
    "SM_FP8",
    "SM_NO_INT8_WEIGHTS",
    "SM_NVFP4",
    "SLOT_MODEL_TYPES",
    "TP_ADDR_ENV",
    "TP_PORT_ENV",
    "TP_SLURM_PORT",
    "TOKENIZER_FILES",
    "VOCABULARY_FILES",
    "supports_bf16",
    "supports_fp8",
    "AutoDType",
    "AutoDType16",
    "AutoQuant",
    "DType",
    "DType16",
    "DTYPES",
    "KV_DTYPES",
    "KvDType",
    "KvQuant",
    "QUANTS",
    "Quant",
    "WeightQuant",
    "accepted",
    "canonical",
]
