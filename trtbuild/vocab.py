"""One vocabulary for the names every command shares: dtypes, weight quantization, KV-cache dtypes.

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


def accepted(kind: str, choices: tuple[str, ...]) -> list[str]:
    """Every spelling the CLI accepts for ``choices``: the names, then their aliases."""
    extra = [alias for alias, name in ALIASES[kind].items() if name in choices]
    return [*choices, *(a for a in extra if a not in choices)]


__all__ = [
    "ALIASES",
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
