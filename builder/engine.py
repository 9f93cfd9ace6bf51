"""``trtbuild engine``: validate everything, then build one engine directory, or take it from the cache.

``build_engine(spec)`` is the library entry point for all three runtimes:

- ``tensorrtllm``: TensorRT-LLM 1.2.x engines. Phases (``commands.plan_phases``) run as child
  processes through ``trtbuild.proc``; a failure names the phase, the rank and the log tail.
- ``llmapi``: no compile; the checkpoint (pre-quantized FP8/NVFP4 recognised) is validated and
  linked into the output with a manifest carrying the ``LLM(...)`` arguments.
- ``torch``: trtbuild's portable runtime (dtype cast, safetensors, normalised tokenizer).

Every output directory is written atomically and carries ``trtbuild-engine.json``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trtbuild import __version__, proc
from trtbuild._atomic import atomic_dir, check_writable
from trtbuild.builder import _trtllm, cache
from trtbuild.builder._files import copy_tokenizer
from trtbuild.builder.checkpoint import (
    CheckpointFacts,
    SourceInfo,
    file_sha256,
    hash_tree,
    read_checkpoint,
    source_info,
)
from trtbuild.builder.commands import CHECKPOINT_SUBDIR, DISPLAY_TOOLS, Phase, plan_phases
from trtbuild.builder.docker import docker_command
from trtbuild.builder.layout import verify_checkpoint, verify_engine
from trtbuild.builder.llmapi import llm_args, write_llmapi
from trtbuild.builder.manifest import (
    FeatureRecord,
    GpuRecord,
    Manifest,
    ParallelRecord,
    PhaseTiming,
    QuantRecord,
    SoftwareRecord,
    SourceRecord,
    write_manifest,
)
from trtbuild.builder.portable import check_portable, portable_software, write_portable
from trtbuild.builder.settings import BuildSettings, resolve
from trtbuild.builder.validate import (
    Target,
    fp8_context_fmha,
    paged_context_fmha,
    resolve_target,
    validate,
)
from trtbuild.errors import ProcessFailed, SpecError, ToolNotFound
from trtbuild.files.plan_file import read_plan
from trtbuild.files.trtllm import missing_ranks
from trtbuild.gpus import DetectedGpu, detect_gpus, known_gpus
from trtbuild.paths import home
from trtbuild.specs import EngineSpec

WORK_SUBDIR = ".trtbuild-work"
LOG_SUBDIR = "logs"
TOKENIZER_SUBDIR = "tokenizer"


@dataclass(frozen=True)
class BuildEnv:
    """What this machine offers: its GPUs and, for TensorRT-LLM builds, the installed toolchain."""

    gpus: list[DetectedGpu]
    toolchain: _trtllm.Toolchain | None


def detect_env(runtime: str) -> BuildEnv:
    toolchain = _trtllm.detect_toolchain() if runtime == "tensorrtllm" else None
    return BuildEnv(gpus=detect_gpus(), toolchain=toolchain)


@dataclass(frozen=True)
class EngineResult:
    out_dir: Path
    settings: BuildSettings
    target: Target | None
    manifest: Manifest | None  # None for a dry run
    cache_hit: bool = False
    dry_run: bool = False
    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """The line(s) ``trtbuild engine`` prints on stdout."""
        s = self.settings
        what = [s.runtime]
        if self.target is not None:
            what.append(f"{self.target.name} (SM {self.target.sm})")
        if self.manifest is not None and self.manifest.software.tensorrt_llm:
            what.append(f"TensorRT-LLM {self.manifest.software.tensorrt_llm}")
        what.append(f"TP {s.tp} x PP {s.pp}")
        what.append(s.dtype)
        if s.quant:
            what.append(f"{s.quant} weights")
        if s.kv_cache_dtype:
            what.append(f"{s.kv_cache_dtype} KV cache")
        desc = ", ".join(what)
        if self.dry_run:
            lines = [f"# plan for {self.out_dir}: {desc}"]
            lines += [proc.format_command(argv) for argv in self.commands]
            if not self.commands:
                lines.append("# no commands: this runtime has no compile step")
            lines.append(f"# then: verify, write {self.out_dir}/trtbuild-engine.json")
            return "\n".join(lines)
        source = "cache hit" if self.cache_hit else "built"
        return f"Engine ready: {self.out_dir} ({desc}; {source} in {self.seconds:.1f} s)"


def build_engine(spec: EngineSpec, *, env: BuildEnv | None = None) -> EngineResult:
    """Validate ``spec`` against the checkpoint and the target GPU, then build or restore."""
    started = time.monotonic()
    facts = read_checkpoint(spec.checkpoint)
    plan = read_plan(spec.plan) if spec.plan else None
    env = env if env is not None else detect_env(spec.runtime)
    target = resolve_target(spec.gpu or (plan.gpu if plan else None), env.gpus)
    settings = resolve(spec, facts, plan=plan, sm=target.sm if target else None)
    notes = validate(settings, facts, target)
    if spec.runtime == "torch":
        check_portable(facts)
    elif not facts.has_tokenizer:
        notes.append(f"{spec.checkpoint} has no tokenizer; pass a tokenizer to 'trtbuild repo'")
    if not spec.dry_run:
        check_writable(spec.out, force=spec.force)
    run = _Run(spec, facts, settings, target, env, notes, started)
    if spec.runtime == "tensorrtllm":
        return run.tensorrtllm()
    return run.llmapi() if spec.runtime == "llmapi" else run.torch()


@dataclass
class _Run:
    spec: EngineSpec
    facts: CheckpointFacts
    settings: BuildSettings
    target: Target | None
    env: BuildEnv
    notes: list[str]
    started: float

    # -- TensorRT-LLM -------------------------------------------------------------------------
    def tensorrtllm(self) -> EngineResult:
        spec, settings, toolchain = self.spec, self.settings, self.env.toolchain
        if self.target is None:
            if toolchain is None and not spec.dry_run:
                raise self._missing_trtllm()
            raise SpecError(
                "no NVIDIA GPU detected and no --gpu given; name the target GPU with --gpu "
                f"(known: {', '.join(known_gpus())})"
            )
        target = self.target
        version = toolchain.trtllm_version if toolchain else _trtllm.PINNED_TRTLLM
        out = Path(os.path.abspath(spec.out))
        shown = plan_phases(
            settings,
            checkpoint=Path(os.path.abspath(spec.checkpoint)),
            work_dir=out / WORK_SUBDIR,
            engine_dir=out,
            tools=toolchain.tools if toolchain else DISPLAY_TOOLS,
        )
        if spec.dry_run:
            return self._result(None, commands=[list(p.argv) for p in shown], dry_run=True)
        source = source_info(spec.checkpoint)
        key = cache.cache_key(
            source_files=source.files, settings=settings, sm=target.sm, trtllm_version=version
        )
        if spec.use_cache and cache.lookup(key):
            return self._result(cache.restore(key, spec.out, force=spec.force), cache_hit=True)
        if toolchain is None:
            raise self._missing_trtllm()
        if not target.here:
            here = ", ".join(sorted({f"{g.name} (SM {g.sm})" for g in self.env.gpus})) or "no GPU"
            raise SpecError(
                f"engines are built on the GPU they run on: {target.name} (SM {target.sm}) is "
                f"not on this machine ({here}); build on a {target.name}, or use --dry-run"
            )
        with atomic_dir(spec.out, force=spec.force) as tmp:
            work = tmp / WORK_SUBDIR
            logs = tmp / LOG_SUBDIR
            logs.mkdir(parents=True)
            phases = plan_phases(
                settings,
                checkpoint=source.path,
                work_dir=work,
                engine_dir=tmp,
                tools=toolchain.tools,
            )
            timings = [_run_phase(phase, logs, tmp) for phase in phases]
            tick = time.monotonic()
            verify_checkpoint(work / CHECKPOINT_SUBDIR, settings)
            engine = verify_engine(tmp, settings)
            timings.append(PhaseTiming(phase="verify", seconds=round(time.monotonic() - tick, 3)))
            shutil.rmtree(work)
            copy_tokenizer(source.path, tmp / TOKENIZER_SUBDIR)
            manifest = Manifest(
                runtime="tensorrtllm",
                created=_now(),
                gpu=_gpu_record(target),
                software=SoftwareRecord(
                    trtbuild=__version__,
                    tensorrt_llm=engine.version or version,
                    tensorrt=toolchain.tensorrt_version,
                    cuda=toolchain.cuda_version,
                    container=toolchain.container,
                ),
                parallel=ParallelRecord(tp=engine.tp, pp=engine.pp, world_size=engine.world_size),
                dtype=settings.dtype,
                quantization=QuantRecord(
                    weights=settings.quant,
                    kv_cache=settings.kv_cache_dtype,
                    quant_algo=engine.quant_algo,
                    kv_cache_quant_algo=engine.kv_cache_quant_algo,
                ),
                limits=engine.limits,
                features=FeatureRecord(
                    paged_kv_cache=True,
                    paged_context_fmha=paged_context_fmha(settings),
                    fp8_context_fmha=fp8_context_fmha(settings),
                ),
                tokenizer_dir=TOKENIZER_SUBDIR,
                source=_source_record(source),
                files=hash_tree(tmp, skip=(LOG_SUBDIR,)),
                timings=timings,
                commands=[list(p.argv) for p in shown],
                cache_key=key,
                settings=settings,
                spec=spec.model_dump(mode="json"),
            )
            write_manifest(tmp, manifest)
        if spec.use_cache:
            cache.store(spec.out, key)
        return self._result(manifest)

    def _missing_trtllm(self) -> ToolNotFound:

        exc = ToolNotFound(
            "TensorRT-LLM",
            f"Engines are built inside {_trtllm.CONTAINER} (TensorRT-LLM {_trtllm.PINNED_TRTLLM}) "
            "on a machine with the target GPU; run this there:",
        )
        exc.details = shlex.join(docker_command(self.spec, self.settings, self.target))
        return exc

    # -- LLM API ------------------------------------------------------------------------------------
    def llmapi(self) -> EngineResult:
        spec, settings, pre = self.spec, self.settings, self.facts.prequant
        if spec.dry_run:
            return self._result(None, dry_run=True)
        source = source_info(spec.checkpoint)
        with atomic_dir(spec.out, force=spec.force) as tmp:
            tick = time.monotonic()
            write_llmapi(source.path, tmp)
            manifest = Manifest(
                runtime="llmapi",
                created=_now(),
                gpu=_gpu_record(self.target),
                software=SoftwareRecord(
                    trtbuild=__version__,
                    tensorrt_llm=_trtllm.installed_version("tensorrt_llm"),
                    container=_trtllm.container_image(),
                ),
                parallel=ParallelRecord(
                    tp=settings.tp, pp=settings.pp, world_size=settings.world_size
                ),
                dtype=settings.dtype,
                quantization=QuantRecord(
                    weights=pre.quant_algo if pre else None,
                    kv_cache=settings.kv_cache_dtype
                    or (
                        pre.kv_cache_quant_algo.lower() if pre and pre.kv_cache_quant_algo else None
                    ),
                    quant_algo=pre.quant_algo if pre else None,
                    kv_cache_quant_algo=pre.kv_cache_quant_algo if pre else None,
                    prequantized=pre is not None,
                ),
                limits=settings.limits,
                llm_args=llm_args(settings),
                source=_source_record(source),
                files=_hash_outputs(tmp, source),
                timings=[PhaseTiming(phase="link", seconds=round(time.monotonic() - tick, 3))],
                settings=settings,
                spec=spec.model_dump(mode="json"),
            )
            write_manifest(tmp, manifest)
        return self._result(manifest)

    # -- portable runtime ---------------------------------------------------------------------------
    def torch(self) -> EngineResult:
        spec, settings = self.spec, self.settings
        if spec.dry_run:
            return self._result(None, dry_run=True)
        source = source_info(spec.checkpoint)
        key = cache.cache_key(
            source_files=source.files, settings=settings, sm=None, trtllm_version=None
        )
        if spec.use_cache and cache.lookup(key):
            return self._result(cache.restore(key, spec.out, force=spec.force), cache_hit=True)
        with atomic_dir(spec.out, force=spec.force) as tmp:
            tick = time.monotonic()
            write_portable(source.path, tmp, settings.dtype, tp=settings.tp)
            manifest = Manifest(
                runtime="torch",
                created=_now(),
                software=portable_software(),
                parallel=ParallelRecord(
                    tp=settings.tp, pp=settings.pp, world_size=settings.world_size
                ),
                dtype=settings.dtype,
                limits=settings.limits,
                source=_source_record(source),
                files=_hash_outputs(tmp, source),
                timings=[PhaseTiming(phase="write", seconds=round(time.monotonic() - tick, 3))],
                cache_key=key,
                settings=settings,
                spec=spec.model_dump(mode="json"),
            )
            write_manifest(tmp, manifest)
        if spec.use_cache:
            cache.store(spec.out, key)
        return self._result(manifest)

    def _result(
        self,
        manifest: Manifest | None,
        *,
        cache_hit: bool = False,
        dry_run: bool = False,
        commands: list[list[str]] | None = None,
    ) -> EngineResult:
        return EngineResult(
            out_dir=Path(self.spec.out),
            settings=self.settings,
            target=self.target,
            manifest=manifest,
            cache_hit=cache_hit,
            dry_run=dry_run,
            commands=commands or [],
            notes=self.notes,
            seconds=time.monotonic() - self.started,
        )


def _run_phase(phase: Phase, logs: Path, engine_dir: Path) -> PhaseTiming:
    """Run one phase; on failure raise with the phase, the rank and the tail of its log."""
    name = phase.name if phase.rank is None else f"{phase.name}-rank{phase.rank}"
    tick = time.monotonic()
    result = proc.run(phase.argv, check=False, what=phase.label)
    (logs / f"{name}.log").write_text(result.output)
    if result.returncode != 0:
        label = phase.label
        if phase.name == "build":  # one process builds every rank: the missing engines say which
            missing = missing_ranks(engine_dir, phase.world_size, ".engine")
            if 0 < len(missing) < phase.world_size:
                label = f"build (rank {', '.join(map(str, missing))} of {phase.world_size})"
        kept = _keep_log(name, result.output)
        raise ProcessFailed(
            phase.argv,
            result.returncode,
            f"{proc.tail(result.output)}\nfull log: {kept}",
            what=label,
        )
    return PhaseTiming(phase=phase.name, rank=phase.rank, seconds=round(time.monotonic() - tick, 3))


def _keep_log(name: str, output: str) -> Path:
    """The output directory is discarded on failure; the full log of the failed phase is not."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = home() / "logs" / f"engine-{stamp}-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(output)
    return path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _gpu_record(target: Target | None) -> GpuRecord | None:
    if target is None:
        return None
    return GpuRecord(
        name=target.name,
        sm=target.sm,
        compute_capability=target.compute_capability,
        source=target.source,
    )


def _source_record(source: SourceInfo) -> SourceRecord:
    return SourceRecord(
        path=str(source.path), repo_id=source.repo_id, revision=source.revision, files=source.files
    )


def _hash_outputs(out: Path, source: SourceInfo) -> dict[str, str]:
    """Output hashes; files hard-linked from the checkpoint reuse its hashes instead of re-reading."""
    hashes = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel.startswith("."):
            continue
        src = source.path / rel
        same = rel in source.files and src.exists() and os.path.samefile(src, path)
        hashes[rel] = source.files[rel] if same else file_sha256(path)
    return hashes


def prepare_portable_engine(
    checkpoint: Path, out_dir: Path, *, dtype: str = "auto", force: bool = False
) -> Path:
    """Write a portable-runtime engine directory for ``checkpoint`` into ``out_dir``."""
    spec = EngineSpec(checkpoint=checkpoint, out=out_dir, runtime="torch", dtype=dtype, force=force)
    return build_engine(spec).out_dir
