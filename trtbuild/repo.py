"""``trtbuild repo``: an engine directory, its tokenizer and a plan to a Triton model repository.

``build_repo_spec`` reads everything the repository must agree with and returns a ``RepoSpec``:

- the engine directory: TensorRT-LLM's ``config.json`` (``version``, ``pretrained_config.mapping``
  and ``quantization``, ``build_config`` limits and ``plugin_config``) and its ``rank{N}.engine``
  files; for the LLM-API flavor the checkpoint's ``config.json`` and ``hf_quant_config.json``
  (pre-quantized FP8/NVFP4 ModelOpt exports); trtbuild's ``trtbuild-engine.json`` when present;
- the tokenizer: the end token (``generation_config.json`` / ``tokenizer_config.json``), the pad
  token, and every other end token (Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``) as extra
  stop tokens;
- a ``trtbuild plan`` file: serving limits, KV-cache memory fraction, replicas.

The engine's facts travel in ``spec.engine`` so the consistency rules (``ensembles/_rules.py``)
run on the spec alone, at render time. ``make_repository`` then renders it atomically.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild._atomic import check_writable
from trtbuild._safepath import check_safe_path
from trtbuild.builder.manifest import (
    MANIFEST,
    Manifest,
    ServingHost,
    check_compatible,
    detect_host,
)
from trtbuild.builder.manifest import read_manifest as read_engine_manifest
from trtbuild.engine_info import checkpoint_info, layout_runtime, tensorrtllm_info
from trtbuild.ensembles import kind_for
from trtbuild.ensembles._rules import engine_kv_dtype
from trtbuild.errors import IncompatibleArtifact, SpecError, first_error
from trtbuild.files.hf import HF_QUANT_CONFIG
from trtbuild.files.plan_file import read_plan
from trtbuild.files.repo_spec import read_repo_spec, spec_path
from trtbuild.gpus import detect_gpus
from trtbuild.render import render_repository
from trtbuild.specs import EngineInfo, RepoOptions, RepoSpec, Runtime, ServingLimits
from trtbuild.tokens import find_tokenizer, tokenizer_ids


# -- the spec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoBuild:
    spec: RepoSpec
    notes: list[str]


def build_repo_spec(
    engine_dir: Path,
    *,
    runtime: Runtime | None = None,
    tokenizer: Path | None = None,
    streaming: bool = True,
    bls_decoupled: bool = False,
    plan: Path | None = None,
    force: bool = False,
    host: ServingHost | None = None,
) -> RepoBuild:
    """The ``RepoSpec`` for serving ``engine_dir``, and notes for the user.

    ``host`` (a ``builder.manifest.ServingHost``) is where the engine will run; by default
    this machine's GPU and TensorRT-LLM, each checked only when detected. An engine built for
    another GPU or TensorRT-LLM version is refused (``IncompatibleArtifact``) unless ``force``.
    """

    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise SpecError(f"{engine_dir} is not a directory; pass the engine directory to serve")
    notes: list[str] = []
    manifest = read_engine_manifest(engine_dir) if (engine_dir / MANIFEST).is_file() else None
    runtime = _pick_runtime(engine_dir, runtime, manifest)
    found: ServingHost = host if host is not None else detect_host()
    if manifest is not None:
        for problem in check_compatible(manifest, found, force=force, where=engine_dir):
            notes.append(f"warning (--force): {problem}")
        if runtime != "torch" and found.sm is None and found.trtllm_version is None:
            notes.append(
                "no GPU or TensorRT-LLM here: the engine's GPU and versions were not checked "
                "(run 'trtbuild repo' in the serving container to check them)"
            )
    if runtime == "tensorrtllm":
        info = tensorrtllm_info(engine_dir, manifest)
        if manifest is None:
            notes.append(f"{engine_dir} has no {MANIFEST}: the GPU it was built for is unknown")
            built, here = info.trtllm_version, found.trtllm_version
            if built and here and built != here:
                problem = f"built with TensorRT-LLM {built} but the runtime has {here}"
                if not force:
                    raise IncompatibleArtifact(
                        f"engine {engine_dir}: {problem}. Rebuild it in the serving container, "
                        "or pass --force to try anyway"
                    )
                notes.append(f"warning (--force): {problem}")
    else:
        info = checkpoint_info(engine_dir, runtime, manifest)
    tokenizer_dir = find_tokenizer(
        engine_dir, runtime, tokenizer, manifest.tokenizer_dir if manifest else None
    )
    ids = tokenizer_ids(tokenizer_dir, model_dir=engine_dir)
    notes.append(f"tokenizer {tokenizer_dir}: {ids.describe()}")

    values: dict[str, Any] = {
        "runtime": runtime,
        "engine_dir": engine_dir.resolve(),
        "tokenizer_dir": Path(tokenizer_dir).resolve(),
        "streaming": streaming,
        "bls_decoupled": bls_decoupled,
        "end_id": ids.end_id,
        "pad_id": ids.pad_id,
        "stop_token_ids": list(ids.stop_token_ids),
        "engine": info,
        "limits": _engine_limits(info, manifest, notes),
    }
    if info.tp is not None and info.pp is not None:
        values.update(tp=info.tp, pp=info.pp)
    if info.trtllm_version:
        values["trtllm_version"] = info.trtllm_version

    kv = engine_kv_dtype(info.kv_cache_quant_algo)
    if runtime != "torch":
        values["kv_cache_dtype"] = kv
    if runtime == "tensorrtllm":
        values["max_beam_width"] = info.max_beam_width
        paged = info.paged_context_fmha is not False
        values["enable_kv_cache_reuse"] = paged
        chunked = bool(manifest and manifest.settings.chunked_context)
        values["enable_chunked_context"] = paged and chunked
        if not paged:
            notes.append(
                "the engine has no paged context FMHA: KV-cache reuse and chunked context are off"
            )
    elif runtime == "llmapi":
        args = (manifest.llm_args if manifest else None) or {}
        values["enable_chunked_context"] = bool(args.get("enable_chunked_prefill", False))
        dtype = args.get("dtype") or (info.dtype if manifest else None)
        if dtype in ("float16", "bfloat16", "float32") and not info.prequantized:
            values["dtype"] = dtype
        if info.prequantized:
            notes.append(
                f"pre-quantized checkpoint ({HF_QUANT_CONFIG}): weights {info.quant_algo}, "
                f"KV cache {info.kv_cache_quant_algo or 'model dtype'}"
            )
    if plan is not None:
        _apply_plan(plan, values, info, runtime, notes)
    try:
        spec = RepoSpec(**values)
    except ValueError as exc:  # pydantic's ValidationError: one line naming the field
        raise SpecError(f"invalid repository settings: {first_error(exc)}") from exc
    return RepoBuild(spec=spec, notes=notes)


def _pick_runtime(engine_dir: Path, asked: Runtime | None, manifest: Manifest | None) -> Runtime:
    layout = layout_runtime(engine_dir)
    if manifest is not None:
        if asked is not None and asked != manifest.runtime:
            raise SpecError(
                f"{engine_dir} was built for --runtime {manifest.runtime} (trtbuild-engine.json); "
                f"render it with --runtime {manifest.runtime}, or rebuild it with 'trtbuild engine "
                f"--runtime {asked}'"
            )
        runtime: Runtime = manifest.runtime
        return runtime
    if asked is not None:
        if asked == "tensorrtllm" and layout is None:
            raise SpecError(
                f"{engine_dir} is not a TensorRT-LLM engine directory (config.json with "
                "pretrained_config and build_config, rank{N}.engine); build one with 'trtbuild "
                "engine', or use --runtime llmapi for a Hugging Face checkpoint"
            )
        if asked != "tensorrtllm" and layout is not None:
            raise SpecError(
                f"{engine_dir} holds a TensorRT-LLM engine; render it with --runtime tensorrtllm"
            )
        return asked
    if layout is not None:
        return layout
    raise SpecError(
        f"{engine_dir} has no trtbuild-engine.json and is not a TensorRT-LLM engine; say how to "
        "serve it: --runtime llmapi (TensorRT-LLM's PyTorch backend) or --runtime torch (portable)"
    )


def _engine_limits(info: EngineInfo, manifest: Manifest | None, notes: list[str]) -> ServingLimits:
    """Serving limits: the engine's compiled ones, else the manifest's, else trtbuild's defaults
    (capped by the model's context)."""
    if info.runtime == "tensorrtllm" and info.max_batch_size and info.max_seq_len:
        max_seq = info.max_seq_len
        max_input = min(info.max_input_len or max_seq - 1, max_seq - 1)
        if info.max_input_len and max_input < info.max_input_len:
            notes.append(
                f"the engine's max_input_len equals max_seq_len ({max_seq}): prompts are limited "
                f"to {max_input} tokens to leave room for output"
            )
        max_tokens = max(info.max_num_tokens or max_input, max_input)
        return ServingLimits(
            max_batch_size=info.max_batch_size,
            max_input_len=max_input,
            max_seq_len=max_seq,
            max_num_tokens=max_tokens,
        )
    if manifest is not None:
        lim = manifest.limits
        return ServingLimits(
            max_batch_size=lim.max_batch_size,
            max_input_len=lim.max_input_len,
            max_seq_len=lim.max_seq_len,
            max_num_tokens=max(lim.max_num_tokens, lim.max_input_len),
        )
    limits = ServingLimits()
    context = info.max_position_embeddings
    if context and context < limits.max_seq_len:
        limits = ServingLimits(
            max_batch_size=limits.max_batch_size,
            max_input_len=context // 2,
            max_seq_len=context,
            max_num_tokens=max(limits.max_num_tokens, context // 2),
        )
    return limits


def _apply_plan(
    path: Path, values: dict[str, Any], info: EngineInfo, runtime: Runtime, notes: list[str]
) -> None:

    plan = read_plan(path)
    if info.tp is not None and (plan.tp, plan.pp) != (info.tp, info.pp):
        raise SpecError(
            f"{path} plans TP {plan.tp} x PP {plan.pp} but the engine is TP {info.tp} x PP "
            f"{info.pp}; render with the plan the engine was built from, or rebuild the engine "
            f"with 'trtbuild engine --plan {path}'"
        )
    values["limits"] = plan.serving_limits()
    values["kv_cache_free_gpu_mem_fraction"] = plan.kv_cache_free_gpu_mem_fraction
    if runtime != "torch":
        values.update(tp=plan.tp, pp=plan.pp)
    world = plan.tp * plan.pp
    if plan.replicas > 1 and runtime in ("tensorrtllm", "llmapi"):
        if plan.nodes == 1 and plan.replicas * world <= plan.gpus_per_node:
            values["gpu_device_ids"] = [
                list(range(r * world, (r + 1) * world)) for r in range(plan.replicas)
            ]
            notes.append(
                f"{plan.replicas} replicas: {plan.replicas} tensorrt_llm instances on GPUs "
                + "; ".join(",".join(map(str, g)) for g in values["gpu_device_ids"])
            )
        else:
            notes.append(
                f"the plan has {plan.replicas} replicas across {plan.nodes} node(s): serve one "
                "copy of this repository per replica"
            )


# -- rendering ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoResult:
    path: Path
    spec: RepoSpec
    notes: list[str]

    def summary(self) -> str:
        models = ", ".join(sorted(kind_for(self.spec).MODELS))
        spec = self.spec
        lines = [
            f"{self.path}",
            f"  flavor     {spec.runtime} ({kind_for(spec).KIND}): {models}",
            f"  engine     {spec.engine_dir}",
            f"  tokenizer  {spec.tokenizer_dir}",
            f"  streaming  {'yes (decoupled)' if spec.streaming else 'no'}"
            f"{' (BLS too)' if spec.bls_decoupled else ''}; "
            f"max_batch_size {spec.limits.max_batch_size}, max_seq_len {spec.limits.max_seq_len}",
        ]
        if spec.runtime != "torch":
            lines.append(
                f"  parallel   TP {spec.tp} x PP {spec.pp}"
                + (f", {len(spec.gpu_device_ids)} instances" if spec.gpu_device_ids else "")
                + f"; TensorRT-LLM {spec.trtllm_version}"
            )
        elif spec.instances > 1:
            where = (
                "GPUs " + ", ".join(str(g[0]) for g in spec.gpu_device_ids)
                if spec.gpu_device_ids
                else "CPU"
            )
            lines.append(f"  instances  {spec.instances} tensorrt_llm engines ({where})")
        return "\n".join(lines)


def make_repository(
    options: RepoOptions, *, host: ServingHost | None = None, gpu_count: int | None = None
) -> RepoResult:
    """``trtbuild repo``: build the spec from the engine directory (or take a saved one and apply
    the options given), then render it atomically.

    ``gpu_count`` is how many GPUs the host that will serve has, for ``--instances``; None: the
    GPUs detected here (``CUDA_VISIBLE_DEVICES`` respected)."""
    # Triton's Python backend hands these paths to `bash -c` unquoted: refuse them up front
    check_safe_path(Path(options.out).resolve(), "--out")
    check_writable(Path(options.out), force=options.force)
    if options.spec is not None:
        built = respec(options)
    else:
        assert options.engine_dir is not None
        check_safe_path(Path(options.engine_dir).resolve(), "the engine directory")
        built = build_repo_spec(
            options.engine_dir,
            runtime=options.runtime,
            tokenizer=options.tokenizer,
            streaming=True if options.streaming is None else options.streaming,
            bls_decoupled=bool(options.bls_decoupled),
            plan=options.plan,
            force=options.force,
            host=host,
        )
    if options.instances is not None or options.device is not None:
        count = gpu_count if gpu_count is not None else _visible_gpus()
        built = RepoBuild(
            spec=place_instances(built.spec, options.instances, options.device, count, built.notes),
            notes=built.notes,
        )
    check_safe_path(built.spec.engine_dir, "the engine directory")
    check_safe_path(built.spec.tokenizer_dir, "the tokenizer directory")
    path = render_repository(built.spec, Path(options.out), force=options.force)
    return RepoResult(path=path, spec=built.spec, notes=built.notes)


def respec(options: RepoOptions) -> RepoBuild:
    """A saved spec (``trtbuild repo --spec``) with the options given applied. The engine's facts
    are the saved ones: the engine directory need not be on this machine."""
    assert options.spec is not None
    saved = read_repo_spec(options.spec)
    notes = [f"spec {spec_path(options.spec)}: {saved.runtime}, engine {saved.engine_dir}"]
    if options.runtime is not None and options.runtime != saved.runtime:
        raise SpecError(
            f"{options.spec} is a --runtime {saved.runtime} spec; drop --runtime, or render the "
            f"engine directory again with 'trtbuild repo ENGINE_DIR --runtime {options.runtime}'"
        )
    values: dict[str, Any] = {}
    if options.streaming is not None:
        values["streaming"] = options.streaming
    if options.bls_decoupled is not None:
        values["bls_decoupled"] = options.bls_decoupled
    if options.tokenizer is not None:
        tokenizer_dir = find_tokenizer(saved.engine_dir, saved.runtime, options.tokenizer, None)
        ids = tokenizer_ids(tokenizer_dir, model_dir=saved.engine_dir)
        notes.append(f"tokenizer {tokenizer_dir}: {ids.describe()}")
        values.update(
            tokenizer_dir=Path(tokenizer_dir).resolve(),
            end_id=ids.end_id,
            pad_id=ids.pad_id,
            stop_token_ids=list(ids.stop_token_ids),
        )
    if options.plan is not None:
        info = saved.engine or EngineInfo(runtime=saved.runtime)
        _apply_plan(options.plan, values, info, saved.runtime, notes)
    spec = RepoSpec.model_validate({**saved.model_dump(), **values})
    return RepoBuild(spec=spec, notes=notes)


# -- replicas on one host (--instances) ------------------------------------------------------------
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _visible_gpus() -> int:
    """GPUs this process can use: the driver's, narrowed by ``CUDA_VISIBLE_DEVICES``."""

    count = len(detect_gpus())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count


def place_instances(
    spec: RepoSpec, instances: int | None, device: str | None, gpu_count: int, notes: list[str]
) -> RepoSpec:
    """``spec`` with ``instances`` tensorrt_llm instances placed on a host with ``gpu_count`` GPUs
    (0: none found here), each with its own engine.

    - TensorRT-LLM (C++ backend, llmapi): instance ``i`` gets GPUs ``i*W .. i*W+W-1`` (W = TP x PP)
      through ``gpu_device_ids``, as upstream's orchestrator mode expects.
    - The portable runtime: on GPUs, one instance per GPU (a ``KIND_GPU`` instance group each, so
      Triton hands each its device); on CPU, ``instances`` CPU instances that split the cores.
    """
    if device is not None:
        if spec.runtime != "torch":
            raise SpecError(
                f"--device is for the portable runtime (--runtime torch); the {spec.runtime} "
                "flavor places instances on GPUs by --instances"
            )
        if not _DEVICE.match(device):
            raise SpecError(f"--device {device!r} is not a device; pass auto, cpu, cuda or cuda:N")
    n = instances if instances is not None else spec.instances
    device = device if device is not None else spec.device
    update: dict[str, Any] = {"instances": n, "gpu_device_ids": []}
    if spec.runtime != "torch":
        world = spec.tp * spec.pp
        if n > 1:
            need = n * world
            if gpu_count and need > gpu_count:
                raise SpecError(
                    f"--instances {n} of TP {spec.tp} x PP {spec.pp} needs {need} GPUs but this "
                    f"host has {gpu_count}; pass --instances {max(1, gpu_count // world)}"
                )
            groups = [list(range(i * world, (i + 1) * world)) for i in range(n)]
            update["gpu_device_ids"] = groups
            notes.append(
                f"{n} tensorrt_llm instances on GPUs "
                + "; ".join(",".join(map(str, g)) for g in groups)
                + ("" if gpu_count else " (no GPU here: not checked against the serving host)")
            )
        return _updated(spec, update)
    update["device"] = device
    if device.startswith("cuda:") and n > 1:
        raise SpecError(
            f"--device {device} puts every instance on one GPU; pass --device cuda to give each "
            "instance its own GPU, or --device cpu"
        )
    on_gpu = device == "cuda" or (device == "auto" and gpu_count > 0)
    if on_gpu and n > 1:
        if gpu_count and n > gpu_count:
            raise SpecError(
                f"--instances {n} needs {n} GPUs (one engine per GPU) but this host has "
                f"{gpu_count}; pass --instances {gpu_count}, or --device cpu"
            )
        update.update(device="cuda", gpu_device_ids=[[i] for i in range(n)])
        notes.append(
            f"{n} portable-runtime instances, one per GPU (0-{n - 1})"
            + ("" if gpu_count else ": no GPU here, not checked against the serving host")
        )
    elif n > 1:
        notes.append(
            f"{n} portable-runtime instances on CPU, each with its share of the cores"
            + (
                " (--device auto: on a GPU host they would share cuda:0; render there, or pass "
                "--device cuda)"
                if device == "auto"
                else ""
            )
        )
    return _updated(spec, update)


def _updated(spec: RepoSpec, update: dict[str, Any]) -> RepoSpec:
    try:
        return RepoSpec.model_validate({**spec.model_dump(), **update})
    except ValueError as exc:
        raise SpecError(f"invalid repository settings: {first_error(exc)}") from exc
