"""The layout ``trtbuild deploy`` decides (pure): how a repository's replicas map onto pods or
Slurm tasks, the serving image, the startup budget, /dev/shm, and the command each pod runs.

``trtbuild.deploy`` (the verb) reads the files and writes the output; ``trtbuild._k8s`` and
``trtbuild._slurm`` render a ``Layout`` into manifests or an sbatch script.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtbuild._observability import HEADROOM
from trtbuild.builder._trtllm import CONTAINER, PINNED_TRTLLM
from trtbuild.errors import SpecError
from trtbuild.plan import Plan
from trtbuild.server import TritonInstall, launch_argv, repo_launch
from trtbuild.specs import DEPLOY_HOST, DeploySpec, RepoSpec, ServeSpec

TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")  # in every NGC tritonserver image
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
EXIT_TIMEOUT_S = 30  # a stopping pod finishes its streams for this long (then SIGKILL at +15 s)
# startup budget: container start, CUDA and tritonserver init, then the weights at a rate a
# network volume sustains; twice that, so a slow node does not crash-loop (estimates, stated)
STARTUP_FIXED_S = 120
LOAD_BYTES_PER_S = 200e6
STARTUP_MARGIN = 2.0
DEFAULT_SLA_TTFT_MS = 1000.0
GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class Layout:
    """How the repository's replicas map onto pods or Slurm tasks (the decisions, and why)."""

    name: str
    runtime: str
    tp: int
    pp: int
    instances: int  # tensorrt_llm instances in one pod (replicas on one host)
    gpus_per_node: int
    gpus_per_pod: int  # 0: the portable runtime on CPU
    pods_per_replica: int  # > 1: one replica spans nodes (a LeaderWorkerSet)
    min_replicas: int
    max_replicas: int
    capacity: int  # requests in flight one pod serves within the SLA
    capacity_source: str
    target_inflight: float  # the autoscaler's target per pod
    sla_ttft_ms: float
    startup_budget_s: int
    shm_bytes: int
    weight_bytes: int
    storage_bytes: int
    image: str
    image_reason: str
    notes: list[str] = field(default_factory=list)

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def multi_node(self) -> bool:
        return self.pods_per_replica > 1


# -- the layout (pure) ---------------------------------------------------------------------------------
def image_for(spec: RepoSpec, engine_container: str | None) -> tuple[str, str]:
    """The serving image from the compatibility matrix, and why."""

    if spec.runtime == "tensorrtllm":
        if engine_container:
            return engine_container, "the container the engine was built in (trtbuild-engine.json)"
        if spec.trtllm_version == PINNED_TRTLLM:
            return CONTAINER, f"TensorRT-LLM {PINNED_TRTLLM}'s container (the compatibility matrix)"
        raise SpecError(
            f"the engine was built with TensorRT-LLM {spec.trtllm_version}, whose container "
            "trtbuild does not know; pass --image with the container it was built in"
        )
    if spec.runtime == "llmapi":
        return CONTAINER, f"TensorRT-LLM {PINNED_TRTLLM}'s LLM API is in {CONTAINER}"
    return CONTAINER, (
        "the portable runtime needs tritonserver with the Python backend plus torch, transformers "
        "and numpy in the stub's Python; the -trtllm-python-py3 image has all of them (the plain "
        "-py3 image has no torch, -pyt-python-py3 no transformers)"
    )


def perf_capacity(perf: Any, sla_ttft_ms: float) -> tuple[int | None, str]:
    """From a ``trtbuild perf`` run of one replica: the highest concurrency whose TTFT p99 met
    the SLA (streamed ensemble, else the first streamed series)."""
    if perf.workload.mode != "concurrency":
        return None, "the perf run swept request rates; capacity needs a --concurrency sweep"
    series = [s for s in perf.series if s.streamed]
    series.sort(key=lambda s: s.model != "ensemble")
    if not series:
        return None, "the perf run streamed nothing, so it has no TTFT"
    best = None
    for level in series[0].levels:
        m = level.metrics
        if m is None or m.ttft_ms is None:
            continue
        if m.ttft_ms.p99 <= sla_ttft_ms:
            best = max(best or 0, int(level.level))
    if best is None:
        return None, f"no level of the perf run met TTFT p99 <= {sla_ttft_ms:g} ms"
    return (
        best,
        f"perf: TTFT p99 <= {sla_ttft_ms:g} ms up to concurrency {best} ({series[0].model})",
    )


def plan_layout(
    spec: DeploySpec,
    repo: RepoSpec,
    plan: Plan | None,
    *,
    perf: Any = None,
    storage_bytes: int = 0,
    engine_container: str | None = None,
) -> Layout:
    notes: list[str] = []
    world = repo.tp * repo.pp
    groups = repo.gpu_device_ids
    instances = len(groups) or repo.instances
    if repo.runtime == "torch":
        on_gpu = bool(groups) or repo.device != "cpu"
        gpus_needed = len(groups) if groups else (world if on_gpu else 0)  # a rank per GPU
    else:
        gpus_needed = world * instances
    gpus_per_node = plan.gpus_per_node if plan is not None else max(gpus_needed, 1)
    pods_per_replica = 1
    gpus_per_pod = gpus_needed
    if gpus_needed > gpus_per_node:
        if instances > 1:
            raise SpecError(
                f"{instances} instances of {world} GPU(s) need {gpus_needed} GPUs on one host but "
                f"the plan's nodes have {gpus_per_node}; render the repository with fewer "
                "--instances"
            )
        if world % gpus_per_node:
            raise SpecError(
                f"TP {repo.tp} x PP {repo.pp} = {world} GPUs does not split into nodes of "
                f"{gpus_per_node}; plan with a layout whose TP x PP is a multiple of "
                "--gpus (TP inside a node, PP across nodes)"
            )
        pods_per_replica = world // gpus_per_node
        gpus_per_pod = gpus_per_node
        notes.append(
            f"one replica spans {pods_per_replica} nodes of {gpus_per_node} GPUs: a "
            "LeaderWorkerSet (leader = MPI rank 0, which serves)"
        )

    if spec.target == "slurm" and pods_per_replica == 1 and 0 < gpus_per_pod < gpus_per_node:
        fit = gpus_per_node // gpus_per_pod
        notes.append(
            f"a replica uses {gpus_per_pod} of a node's {gpus_per_node} GPUs and Slurm runs one "
            f"per node: render the repository with --instances {fit * instances} to serve "
            "the node's other GPUs too"
        )

    sla = spec.sla_ttft_ms
    if sla is None and perf is not None and perf.workload.sla_ttft_ms:
        sla = float(perf.workload.sla_ttft_ms)
    sla = sla or DEFAULT_SLA_TTFT_MS

    per_engine = repo.limits.max_batch_size
    source = f"repository: max_batch_size {per_engine} x {instances} instance(s)"
    if plan is not None:
        per_engine = max(1, min(plan.max_batch_size, plan.max_concurrent_sequences))
        source = (
            f"plan: min(max_batch_size {plan.max_batch_size}, KV-cache room for "
            f"{plan.max_concurrent_sequences} sequences) x {instances} instance(s)"
        )
    capacity = per_engine * instances
    if perf is not None:
        measured, why = perf_capacity(perf, sla)
        if measured is not None:
            capacity, source = measured, why
        else:
            notes.append(f"{why}: capacity from the {'plan' if plan else 'repository'} instead")
    target = float(max(1, math.floor(capacity * HEADROOM)))

    planned_pods = None
    if plan is not None:
        planned_pods = max(1, plan.replicas // (1 if pods_per_replica > 1 else instances))
    min_default = 1
    if plan is not None:
        min_default = max(1, math.ceil(plan.concurrency / max(capacity, 1)))
        min_default = min(min_default, planned_pods or min_default)
    lo = spec.min_replicas or min_default
    hi = spec.max_replicas or max(lo, planned_pods or 2 * lo)
    if spec.max_replicas is None and spec.min_replicas is not None:
        hi = max(hi, lo)
    if lo > hi:
        raise SpecError(
            f"--min-replicas {lo} is above the plan's {hi} replica(s); pass --max-replicas too"
        )
    if plan is None and spec.max_replicas is None:
        notes.append(f"no --plan: at most {hi} replicas (pass --max-replicas to change it)")

    weight_bytes = plan.weight_bytes if plan is not None else storage_bytes
    load_s = STARTUP_FIXED_S + weight_bytes / LOAD_BYTES_PER_S
    budget = int(math.ceil(load_s * STARTUP_MARGIN / 30) * 30)

    image, reason = (spec.image, "--image") if spec.image else image_for(repo, engine_container)
    name = spec.name or default_name(spec.repo, plan)
    return Layout(
        name=name,
        runtime=repo.runtime,
        tp=repo.tp,
        pp=repo.pp,
        instances=instances,
        gpus_per_node=gpus_per_node,
        gpus_per_pod=gpus_per_pod,
        pods_per_replica=pods_per_replica,
        min_replicas=lo,
        max_replicas=hi,
        capacity=capacity,
        capacity_source=source,
        target_inflight=target,
        sla_ttft_ms=sla,
        startup_budget_s=budget,
        shm_bytes=shm_bytes(repo),
        weight_bytes=weight_bytes,
        storage_bytes=storage_bytes,
        image=image,
        image_reason=reason,
        notes=notes,
    )


def shm_bytes(repo: RepoSpec) -> int:
    """/dev/shm for the Python backend: each stub (one per Python model instance) has its own
    region, 1 MiB at first, growing with the tensors it passes (ids in and out of a full batch,
    with copies); 64 MiB per stub plus 8 x that batch, at least 1 GiB (upstream's --shm-size=2g
    examples are for 4 stubs)."""
    stubs = repo.preprocessing_instance_count + repo.postprocessing_instance_count
    stubs += repo.bls_instance_count
    if repo.runtime == "torch":
        stubs += len(repo.gpu_device_ids) or repo.instances
    tensors = repo.limits.max_batch_size * repo.limits.max_seq_len * 4 * 8
    need = stubs * (64 * MiB + tensors)
    return max(GiB, int(math.ceil(need / (256 * MiB)) * 256 * MiB))


def default_name(repo: Path, plan: Plan | None) -> str:
    base = plan.model.rsplit("/", 1)[-1] if plan is not None else Path(repo).resolve().name
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "model"
    name = f"trtbuild-{slug}"[:40].rstrip("-")
    return name


def storage_root(repo_dir: Path, spec: RepoSpec) -> Path:
    """The one directory that holds the repository, the engine and the tokenizer: the volume is
    mounted there, at the same path, so the paths in the configs hold inside the pod."""
    paths = [Path(repo_dir).resolve(), Path(spec.engine_dir), Path(spec.tokenizer_dir)]
    root = Path(os.path.commonpath([str(p) for p in paths]))
    if root == Path(root.anchor):
        raise SpecError(
            f"the repository ({paths[0]}) and its engine ({paths[1]}) share no directory but "
            f"{root}; render both under one directory (e.g. /models/repository and "
            "/models/engine), so one volume holds them at the same paths"
        )
    return root


def deploy_serve_spec(repo_dir: Path) -> ServeSpec:
    """How a deployed server runs: listening on every interface (``DEPLOY_HOST``), the
    deployment's exit timeout, TTFT histograms on."""
    return ServeSpec(
        repo=Path(repo_dir).resolve(),
        host=DEPLOY_HOST,
        exit_timeout=EXIT_TIMEOUT_S,
        latency_histograms=True,
    )


def serve_command(
    repo_dir: Path, *, mpirun_args: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """What the container (or Slurm task) runs: ``trtbuild serve``'s command, with the NGC
    image's tritonserver (``deploy_serve_spec``)."""
    launch = repo_launch(Path(repo_dir))
    return launch_argv(
        deploy_serve_spec(repo_dir),
        TritonInstall(TRITONSERVER, None, {}),
        launch,
        mpirun_args=mpirun_args,
    )
