"""``trtbuild-engine.json``: what an engine directory was built from, for, and with.

TensorRT-LLM records neither the GPU nor a version gate in an engine, so trtbuild writes this
manifest beside every engine it makes and ``check_compatible`` refuses an engine whose SM or
TensorRT-LLM/TensorRT version differs from the runtime's. ``serve`` and ``repo`` call:

    manifest = read_manifest(engine_dir)
    warnings = check_compatible(manifest, runtime=detect_host(), force=force)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from trtbuild import vocab
from trtbuild.builder import _trtllm
from trtbuild.builder.settings import BuildSettings
from trtbuild.errors import IncompatibleArtifact, SpecError, first_error
from trtbuild.files._json import load_json, refuse_newer_format
from trtbuild.gpus import detect_gpus
from trtbuild.specs import Limits, Runtime

MANIFEST = "trtbuild-engine.json"
FORMAT = 1


class _Record(BaseModel):
    # Manifests are read back by later trtbuild versions: unknown keys are tolerated, not an error.
    model_config = ConfigDict(extra="ignore", frozen=True)


class GpuRecord(_Record):
    name: str
    sm: int
    compute_capability: str
    source: Literal["named", "detected"]


class SoftwareRecord(_Record):
    trtbuild: str
    tensorrt_llm: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    container: str | None = None
    # the portable runtime (--runtime torch): the versions its engine directory was prepared with
    # (written only when known, so other runtimes' manifests do not grow empty keys)
    torch: str | None = None
    transformers: str | None = None

    @model_serializer(mode="wrap")
    def _known_portable_versions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("torch", "transformers"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ParallelRecord(_Record):
    tp: int = 1
    pp: int = 1
    world_size: int = 1


class QuantRecord(_Record):
    weights: str | None = None  # fp8 | int8-sq | int4-awq | pre-quantized algo
    kv_cache: str | None = None  # fp8 | int8
    quant_algo: str | None = None  # TensorRT-LLM / ModelOpt names (FP8, W4A16_AWQ, ...)
    kv_cache_quant_algo: str | None = None
    prequantized: bool = False


class FeatureRecord(_Record):
    """Build-time switches that decide which runtime features an engine can use."""

    paged_kv_cache: bool = True
    paged_context_fmha: bool = True  # needed for KV-cache reuse and chunked context
    fp8_context_fmha: bool = False

    @property
    def kv_cache_reuse(self) -> bool:
        return self.paged_context_fmha


class SourceRecord(_Record):
    path: str
    repo_id: str | None = None
    revision: str | None = None
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256


class PhaseTiming(_Record):
    phase: str
    rank: int | None = None
    seconds: float


HASH: Literal["sha256"] = (
    "sha256"  # the algorithm of every digest in a manifest (files, source.files, cache_key)
)


class Manifest(_Record):
    format: int = FORMAT
    # names the digest algorithm of ``files`` and ``source.files``; manifests written before this
    # field existed used sha256 too, so it is also the default when reading them
    hash: Literal["sha256"] = HASH
    runtime: Runtime
    created: str
    gpu: GpuRecord | None = None
    software: SoftwareRecord
    parallel: ParallelRecord = ParallelRecord()
    dtype: str
    quantization: QuantRecord = QuantRecord()
    limits: Limits
    features: FeatureRecord | None = None
    tokenizer_dir: str = "."  # relative to the engine directory
    llm_args: dict[str, Any] | None = None  # --runtime llmapi: keyword arguments for LLM(...)
    source: SourceRecord
    files: dict[str, str] = Field(default_factory=dict)  # output file -> sha256
    timings: list[PhaseTiming] = Field(default_factory=list)
    commands: list[list[str]] = Field(default_factory=list)
    cache_key: str | None = None
    settings: BuildSettings
    spec: dict[str, Any] = Field(default_factory=dict)  # the EngineSpec as given


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(engine_dir: Path) -> Manifest:
    """The manifest of ``engine_dir``; a missing or foreign one is a user error naming the fix."""
    path = Path(engine_dir) / MANIFEST
    if not path.is_file():
        raise SpecError(
            f"{engine_dir} has no {MANIFEST}; build it with 'trtbuild engine' so trtbuild knows "
            "which GPU and TensorRT-LLM it is for"
        )
    data = load_json(path, fix="rebuild the engine")
    refuse_newer_format(path, data, FORMAT)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: invalid {first_error(exc)}; rebuild the engine") from exc


# -- the compatibility gate ------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingHost:
    """Where an engine is about to run. ``None`` fields are unknown and not checked."""

    sm: int | None = None
    gpu_name: str | None = None
    trtllm_version: str | None = None
    tensorrt_version: str | None = None


def detect_host() -> ServingHost:
    """This machine: its first GPU and the TensorRT-LLM/TensorRT installed in this Python."""

    gpus = detect_gpus()
    first = gpus[0] if gpus else None
    return ServingHost(
        sm=first.sm if first else None,
        gpu_name=(first.spec.name if first.spec else first.name) if first else None,
        trtllm_version=_trtllm.installed_version("tensorrt_llm"),
        tensorrt_version=_trtllm.tensorrt_version(),
    )


def incompatibilities(manifest: Manifest, runtime: ServingHost) -> list[str]:
    """Each way ``manifest``'s engine cannot run on ``runtime``, naming both sides."""
    problems: list[str] = []
    here = f"{runtime.gpu_name} (SM {runtime.sm})" if runtime.gpu_name else f"SM {runtime.sm}"
    if manifest.runtime == "tensorrtllm":
        built = manifest.gpu
        if built is not None and runtime.sm is not None and built.sm != runtime.sm:
            problems.append(f"built for {built.name} (SM {built.sm}) but this GPU is {here}")
        sw = manifest.software
        if sw.tensorrt_llm and runtime.trtllm_version and sw.tensorrt_llm != runtime.trtllm_version:
            problems.append(
                f"built with TensorRT-LLM {sw.tensorrt_llm} but the runtime has "
                f"{runtime.trtllm_version}"
            )
        if sw.tensorrt and runtime.tensorrt_version and sw.tensorrt != runtime.tensorrt_version:
            problems.append(
                f"built with TensorRT {sw.tensorrt} but the runtime has {runtime.tensorrt_version}"
            )
    elif manifest.runtime == "llmapi" and runtime.sm is not None:
        need = _min_sm(manifest.quantization)
        if need is not None and runtime.sm < need[0]:
            problems.append(f"needs SM >= {need[0]} for {need[1]} but this GPU is {here}")
    return problems


def _min_sm(q: QuantRecord) -> tuple[int, str] | None:
    algo = (q.quant_algo or "").upper()
    if algo.startswith("NVFP4"):
        return vocab.SM_NVFP4, "NVFP4 weights"
    if algo.startswith("FP8"):
        return vocab.SM_FP8, "FP8 weights"
    if (q.kv_cache or "").lower() == "fp8" or (q.kv_cache_quant_algo or "").upper() == "FP8":
        return vocab.SM_FP8, "an FP8 KV cache"
    return None


def check_compatible(
    manifest: Manifest, runtime: ServingHost, *, force: bool = False, where: Path | None = None
) -> list[str]:
    """Raise ``IncompatibleArtifact`` unless ``manifest`` can run on ``runtime``.

    With ``force`` the problems are returned instead (the caller prints them as warnings); an empty
    list means compatible. The portable runtime (``torch``) runs anywhere.
    """
    problems = incompatibilities(manifest, runtime)
    if problems and not force:
        label = f"engine {where}" if where else "the engine"
        raise IncompatibleArtifact(
            f"{label}: {'; '.join(problems)}. Rebuild it with 'trtbuild engine' on the serving "
            "GPU and container, or pass --force to try anyway"
        )
    return problems


def check_engine_dir(
    engine_dir: Path, *, runtime: ServingHost | None = None, force: bool = False
) -> tuple[Manifest, list[str]]:
    """``read_manifest`` + ``check_compatible`` against this machine (or ``runtime``): the one call
    ``serve`` and ``repo`` need. Returns the manifest and the problems ``force`` let through."""
    manifest = read_manifest(engine_dir)
    if manifest.runtime == "torch":  # the portable runtime runs anywhere: nothing to detect
        return manifest, []
    found = runtime if runtime is not None else detect_host()
    return manifest, check_compatible(manifest, found, force=force, where=Path(engine_dir))
