"""Tensor declarations as data: one source for templates, wiring checks and clients."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_* name without the prefix: INT32, FP32, BOOL, STRING ...
    dims: tuple[int, ...] = (1,)
    optional: bool = True
    scalar: bool = False  # dims [1] reshaped to [] (TensorRT-LLM's core-model scalars)
    ragged: bool = False

    @property
    def type_name(self) -> str:
        return f"TYPE_{self.dtype}"


def req(name: str, dtype: str, *dims: int, scalar: bool = False) -> Tensor:
    return Tensor(name, dtype, dims or (1,), optional=False, scalar=scalar)


def opt(name: str, dtype: str, *dims: int, scalar: bool = False, ragged: bool = False) -> Tensor:
    return Tensor(name, dtype, dims or (1,), optional=True, scalar=scalar, ragged=ragged)


def out(name: str, dtype: str, *dims: int) -> Tensor:
    return Tensor(name, dtype, dims or (1,), optional=False)


def scalars(dtype: str, *names: str) -> list[Tensor]:
    return [opt(n, dtype, scalar=True) for n in names]
