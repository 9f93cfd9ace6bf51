"""The consistency rules, written once, over one small view of a deployment.

A ``RepoView`` is built either from a ``RepoSpec`` (render time: ``trtbuild repo`` refuses to write
a repository that breaks a rule) or from a repository's parsed configs and the engine directory
they point at (``trtbuild check``). Every rule reads only the view and returns ``Finding`` objects;
the fix names the place to change (the spec or plan, or the config.pbtxt files). The engine's own
facts (``EngineInfo``) come from ``trtbuild.engine_info``, so a spec and a hand-written repository
over the same engine get the same verdicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trtbuild.ensembles.upstream import version_tuple
from trtbuild.findings import REPOSITORY, Finding
from trtbuild.specs import EngineInfo, RepoSpec, Runtime

KV_NAMES = {"FP8": "fp8", "INT8": "int8"}


def engine_kv_dtype(kv_cache_quant_algo: str | None) -> str:
    """TensorRT-LLM/ModelOpt ``kv_cache_quant_algo`` -> ``fp8``/``int8``/``auto``."""
    return KV_NAMES.get((kv_cache_quant_algo or "").upper(), "auto")


@dataclass(frozen=True)
class RepoView:
    """What the rules look at. ``None``: not known from this source (that rule is skipped)."""

    source: Literal["spec", "configs"]
    runtime: Runtime | None
    core: str = "tensorrt_llm"
    core_decoupled: bool | None = None
    bls_decoupled: dict[str, bool] = field(default_factory=dict)  # BLS -> decoupled, same core
    target_version: str | None = None  # the TensorRT-LLM the repository is for
    tp: int | None = None
    pp: int | None = None
    gpu_device_ids: tuple[tuple[int, ...], ...] = ()
    core_instances: int | None = None
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_beam_width: int | None = None
    kv_cache_dtype: str | None = None  # auto | fp8 | int8
    kv_cache_reuse: bool | None = None
    chunked_context: bool | None = None
    engine: EngineInfo | None = None
    engine_dir: Path | None = None

    @property
    def world(self) -> int | None:
        if self.tp is not None and self.pp is not None:
            return self.tp * self.pp
        return self.engine.world_size if self.engine is not None else None

    @property
    def model(self) -> str:
        """Where a finding about the deployment is reported."""
        return REPOSITORY if self.source == "spec" else self.core

    def lower(self, key: str, ceiling: int) -> str:
        if self.source == "spec":
            return f"lower {key} to <= {ceiling} in the plan or spec and re-render"
        return f"set {key} <= {ceiling} in the config.pbtxt files"


def view_from_spec(spec: RepoSpec) -> RepoView:
    has_bls = spec.runtime != "llmapi"  # the llmapi flavor's BLS is never decoupled
    return RepoView(
        source="spec",
        runtime=spec.runtime,
        core_decoupled=spec.streaming,
        bls_decoupled={"tensorrt_llm_bls": spec.bls_decoupled} if has_bls else {},
        target_version=spec.trtllm_version if spec.runtime == "tensorrtllm" else None,
        tp=spec.tp,
        pp=spec.pp,
        gpu_device_ids=tuple(tuple(g) for g in spec.gpu_device_ids),
        core_instances=max(1, len(spec.gpu_device_ids) or spec.instances),
        max_batch_size=spec.limits.max_batch_size,
        max_input_len=spec.limits.max_input_len,
        max_seq_len=spec.limits.max_seq_len,
        max_beam_width=spec.max_beam_width,
        kv_cache_dtype=spec.kv_cache_dtype,
        kv_cache_reuse=spec.enable_kv_cache_reuse,
        chunked_context=spec.enable_chunked_context,
        engine=spec.engine,
    )


def findings(view: RepoView) -> list[Finding]:
    """Every rule, in order."""
    return [f for rule in RULES for f in rule(view)]


# -- the rules ------------------------------------------------------------------------------------------
def _decoupled(view: RepoView) -> Iterator[Finding]:
    if view.core_decoupled is not False:
        return
    for bls, decoupled in view.bls_decoupled.items():
        if decoupled:
            yield Finding(
                bls if view.source == "configs" else REPOSITORY,
                f"{'' if view.source == 'configs' else bls + ' '}streams (decoupled: true) but "
                f"{view.core} is not decoupled: every "
                f"streamed request fails in {view.core} ('Streaming is only supported if model "
                "is deployed using decoupled mode')",
                "render with 'trtbuild repo --streaming' (it makes both decoupled), or drop "
                "--bls-decoupled"
                if view.source == "spec"
                else f"set model_transaction_policy {{ decoupled: true }} in {view.core} too "
                "(trtbuild repo --streaming sets both)",
            )


def _parallel(view: RepoView) -> Iterator[Finding]:
    e, world = view.engine, view.world
    if e is not None and e.runtime != view.runtime and view.runtime is not None:
        return  # _runtime reports it
    if world is not None and e is not None and e.world_size is not None and world != e.world_size:
        yield Finding(
            view.model,
            f"TP x PP = {view.tp} x {view.pp} = {world} but the engine was built for TP {e.tp} x "
            f"PP {e.pp} = {e.world_size} GPU(s)",
            f"set tp={e.tp} pp={e.pp}, or rebuild with "
            f"'trtbuild engine --tp {view.tp} --pp {view.pp}'",
        )
    if view.runtime == "torch" and (view.pp or 1) > 1:
        yield Finding(view.model, "the portable runtime has no pipeline parallelism", "set pp to 1")
    if view.runtime == "torch" and (view.tp or 1) > 1 and (view.core_instances or 1) > 1:
        yield Finding(
            view.model,
            f"a portable engine split {view.tp} ways is one rank group: it serves as one "
            f"instance, not {view.core_instances}",
            "render it with --instances 1 (replicas: one repository per rank group)",
        )
    groups = view.gpu_device_ids
    if groups and view.core_instances is not None and view.core_instances != len(groups):
        yield Finding(
            view.model,
            f"gpu_device_ids lists {len(groups)} instance(s) but instance_group has "
            f"{view.core_instances}",
            f"set instance_group count to {len(groups)} (one GPU set per instance)",
        )
    seen: set[int] = set()
    for index, group in enumerate(groups):
        if world is not None and len(group) != world:
            yield Finding(
                view.model,
                f"gpu_device_ids[{index}] lists {len(group)} GPU(s) but each tensorrt_llm "
                f"instance needs TP x PP = {world}",
                f'list {world} GPU(s) per instance, e.g. "{",".join(map(str, range(world)))}"',
            )
        if seen & set(group):
            yield Finding(
                view.model,
                f"gpu_device_ids[{index}] reuses GPU(s) {sorted(seen & set(group))}",
                "give each instance its own GPUs",
            )
        seen |= set(group)


def _runtime(view: RepoView) -> Iterator[Finding]:
    e = view.engine
    if e is not None and view.runtime is not None and e.runtime != view.runtime:
        yield Finding(
            view.model,
            f"the engine directory is for --runtime {e.runtime}",
            f"render it with --runtime {e.runtime} or rebuild it with "
            f"'trtbuild engine --runtime {view.runtime}'",
        )


def _compiled(view: RepoView) -> Iterator[Finding]:
    """Limits and features compiled into a TensorRT-LLM engine are ceilings."""
    e = view.engine
    if view.runtime != "tensorrtllm" or e is None or e.runtime != "tensorrtllm":
        return
    if e.rank_files is not None and e.world_size is not None and e.rank_files != e.world_size:
        where = f" ({view.engine_dir})" if view.engine_dir is not None else ""
        yield Finding(
            view.model,
            f"the engine is TP {e.tp} x PP {e.pp} (world size {e.world_size}) but its directory"
            f"{where} holds {e.rank_files} rank engine file(s); MPI world size, TP x PP and "
            "rank{N}.engine must all agree",
            "rebuild the engine completely ('trtbuild engine'), and launch one MPI rank per "
            "engine file ('trtbuild serve' does)",
        )
    flags = {"max_batch_size": "--max-batch-size", "max_input_len": "--max-input-len",
             "max_seq_len": "--max-seq-len"}  # fmt: skip
    for key, flag in flags.items():
        ceiling, asked = getattr(e, key), getattr(view, key)
        if ceiling is not None and asked is not None and asked > ceiling:
            yield Finding(
                view.model,
                f"{key} {asked} exceeds the engine's {ceiling} (build_config.{key})",
                f"{view.lower(key, ceiling)}, or rebuild with 'trtbuild engine {flag} {asked}'",
            )
    if view.max_beam_width is not None and view.max_beam_width > e.max_beam_width:
        yield Finding(
            view.model,
            f"max_beam_width {view.max_beam_width} exceeds the engine's {e.max_beam_width}",
            f"{view.lower('max_beam_width', e.max_beam_width)}, or rebuild the engine with "
            f"max_beam_width {view.max_beam_width}",
        )
    if e.trtllm_version and view.target_version and e.trtllm_version != view.target_version:
        fix = (
            f"set trtllm_version {e.trtllm_version} and serve in the container with that "
            "TensorRT-LLM"
            if view.source == "spec"
            else "re-render the repository with 'trtbuild repo' for this engine"
        )
        yield Finding(
            view.model,
            f"the engine is TensorRT-LLM {e.trtllm_version} but the repository targets "
            f"{view.target_version}",
            fix,
        )
    if e.paged_context_fmha is False:
        for key, asked in (
            ("enable_kv_cache_reuse", view.kv_cache_reuse),
            ("enable_chunked_context", view.chunked_context),
        ):
            if asked:
                yield Finding(
                    view.model,
                    f"{key} needs an engine built with paged context FMHA (use_paged_context_fmha)",
                    "set it false, or rebuild with paged context FMHA (TensorRT-LLM drops it for "
                    "an INT8 KV cache and for an FP8 KV cache without --quant fp8)",
                )


def _kv_and_context(view: RepoView) -> Iterator[Finding]:
    e = view.engine
    if e is None or (view.runtime is not None and e.runtime != view.runtime):
        return
    engine_kv = engine_kv_dtype(e.kv_cache_quant_algo)
    asked = view.kv_cache_dtype
    if asked not in (None, "auto") and asked != engine_kv:
        built = f"an {engine_kv.upper()}" if engine_kv != "auto" else "no quantized"
        yield Finding(
            view.model,
            f"kv_cache_dtype {asked} but the engine was built with {built} KV cache",
            f"use kv_cache_dtype {engine_kv}, or rebuild with "
            f"'trtbuild engine --kv-cache-dtype {asked}'",
        )
    if (
        e.max_position_embeddings
        and view.max_seq_len
        and view.max_seq_len > e.max_position_embeddings
    ):
        yield Finding(
            view.model,
            f"max_seq_len {view.max_seq_len} exceeds the model's max_position_embeddings "
            f"{e.max_position_embeddings}",
            view.lower("max_seq_len", e.max_position_embeddings),
        )


RULES = (_runtime, _decoupled, _parallel, _compiled, _kv_and_context)


# -- what only a spec can get wrong ------------------------------------------------------------------------
def spec_only_findings(spec: RepoSpec) -> list[Finding]:
    """A spec's own values (the configs rendered from it carry them verbatim)."""
    found = []
    if spec.end_id < 0:
        found.append(
            Finding(
                REPOSITORY,
                f"end_id {spec.end_id} never matches a token, so generation never stops",
                "set it to the tokenizer's end token (trtbuild repo reads it from "
                "generation_config.json)",
            )
        )
    if spec.pad_id < 0:
        found.append(
            Finding(
                REPOSITORY, f"pad_id {spec.pad_id} is not a token id", "use the pad (or end) token"
            )
        )
    if spec.runtime == "tensorrtllm" and version_tuple(spec.trtllm_version) >= (1, 3):
        found.append(
            Finding(
                REPOSITORY,
                f"TensorRT-LLM {spec.trtllm_version} has no engine (C++) backend",
                "serve with --runtime llmapi, or target TensorRT-LLM 1.2.x "
                "(Triton 26.07-trtllm-python-py3)",
            )
        )
    return found


def common_findings(spec: RepoSpec) -> list[Finding]:
    """Every rule a spec must pass, whatever its ensemble kind."""
    return spec_only_findings(spec) + findings(view_from_spec(spec))


__all__ = [
    "RULES",
    "RepoView",
    "common_findings",
    "engine_kv_dtype",
    "findings",
    "spec_only_findings",
    "view_from_spec",
]
