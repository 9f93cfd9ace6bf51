"""``trtbuild deploy k8s|slurm``: a rendered repository (and its plan) to what serves it on a cluster.

``deploy`` reads the repository's ``trtbuild-repo.json`` (the layout: runtime, TP x PP, instances
on one host), the plan (GPUs per node, replicas, capacity) and optionally a ``trtbuild perf``
result (measured capacity of one replica), works out a ``Layout`` (pure: ``plan_layout``), and
writes:

- ``k8s``: one YAML file per object, built as Python objects and dumped with PyYAML, and a
  ``kustomization.yaml`` listing them (``trtbuild._k8s``); the Grafana dashboard as JSON and the
  prometheus-adapter rule as Helm values beside them (``trtbuild._observability``).
- ``slurm``: one sbatch script (``trtbuild._slurm``).

Everything is written into a temp dir (or file) and renamed, so nothing is half-written; an
existing output is replaced only with ``force``.

The serving command is the one ``trtbuild serve`` runs (``server.launch_argv``: mpirun for
TP x PP > 1, orchestrator mode for TensorRT-LLM instances), with tritonserver at the NGC image's
path, bound to 0.0.0.0 (a pod's or node's address is how it is reached), and Triton's latency
histograms on (TTFT for the dashboard and alerts).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from trtbuild import _k8s, _slurm
from trtbuild._atomic import atomic_dir, check_writable
from trtbuild._deploy_layout import Layout, MiB, plan_layout, storage_root
from trtbuild._perf_results import PerfResults
from trtbuild.builder.manifest import MANIFEST, Manifest, read_manifest
from trtbuild.errors import SpecError
from trtbuild.files.plan_file import read_plan
from trtbuild.files.repo_spec import SPEC_FILE, read_repo_spec
from trtbuild.specs import DeploySpec, RepoSpec


@dataclass(frozen=True)
class DeployResult:
    path: Path
    files: list[str]
    layout: Layout

    def summary(self) -> str:
        lay = self.layout
        kind = "LeaderWorkerSet" if lay.multi_node else "Deployment"
        gpus = f"{lay.gpus_per_pod} GPU(s)" if lay.gpus_per_pod else "no GPU (CPU)"
        lines = [
            f"{self.path}",
            f"  layout    TP {lay.tp} x PP {lay.pp}, {lay.instances} instance(s) per pod, "
            f"{gpus} per pod"
            + (f", {lay.pods_per_replica} pods per replica ({kind})" if lay.multi_node else ""),
            f"  replicas  {lay.min_replicas}..{lay.max_replicas}; scale out above "
            f"{lay.target_inflight:g} requests in flight per pod ({lay.capacity_source})",
            f"  image     {lay.image}",
            f"  startup   {lay.startup_budget_s} s budget; /dev/shm {lay.shm_bytes // MiB} MiB",
        ]
        return "\n".join(lines + [f"  {f}" for f in self.files])


# -- the verb ------------------------------------------------------------------------------------------
def deploy(spec: DeploySpec) -> DeployResult:
    """``trtbuild deploy``: read the repository (and plan, perf results), write the manifests or
    the sbatch script atomically."""
    repo_dir = Path(spec.repo)
    if not (repo_dir / SPEC_FILE).is_file():
        raise SpecError(
            f"{repo_dir} has no {SPEC_FILE}; deploy a repository rendered by 'trtbuild repo'"
        )
    repo = read_repo_spec(repo_dir)
    plan = read_plan(spec.plan) if spec.plan is not None else None
    if plan is not None and (plan.tp, plan.pp) != (repo.tp, repo.pp) and repo.runtime != "torch":
        raise SpecError(
            f"{spec.plan} plans TP {plan.tp} x PP {plan.pp} but {repo_dir} serves TP {repo.tp} x "
            f"PP {repo.pp}; pass the plan the repository was rendered with"
        )
    perf = None
    if spec.perf is not None:
        perf = PerfResults.read(spec.perf)
    manifest = _engine_manifest(repo)
    root = storage_root(repo_dir, repo)
    storage = _tree_bytes(repo_dir, Path(repo.engine_dir), Path(repo.tokenizer_dir))
    storage = math.ceil(storage / MiB) * MiB  # an estimate: whole MiB
    layout = plan_layout(
        spec,
        repo,
        plan,
        perf=perf,
        storage_bytes=storage,
        engine_container=manifest.software.container if manifest is not None else None,
    )
    if spec.target == "slurm":
        return _write_slurm(spec, repo_dir, repo, layout, root)

    source = _download_source(spec, repo, manifest) if spec.storage == "download" else None
    documents = _k8s.manifests(spec, repo_dir, repo, layout, root, source)
    with atomic_dir(Path(spec.out), force=spec.force) as tmp:
        files = _k8s.write(tmp, documents, layout, spec)
    return DeployResult(Path(spec.out), files, layout)


def _tree_bytes(*dirs: Path) -> int:
    total, seen = 0, set()
    for top in dirs:
        for base, _, files in os.walk(top):
            for name in files:
                path = os.path.join(base, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def _engine_manifest(repo: RepoSpec) -> Manifest | None:
    engine = Path(repo.engine_dir)
    return read_manifest(engine) if (engine / MANIFEST).is_file() else None


def _download_source(
    spec: DeploySpec, repo: RepoSpec, manifest: Manifest | None
) -> tuple[str, str | None]:
    if spec.init_image is None:
        raise SpecError(
            "--storage download runs 'trtbuild download' in an init container: pass --init-image "
            "IMAGE (an image with trtbuild installed), or use --storage pvc"
        )
    if repo.runtime == "tensorrtllm":
        raise SpecError(
            "a TensorRT-LLM engine is built for one GPU and takes long to build: put it in a "
            "volume (--storage pvc), not a download"
        )
    if spec.source:
        repo_id, _, revision = spec.source.partition("@")
        return repo_id, revision or None
    if manifest is None or not manifest.source.repo_id:
        raise SpecError(
            f"{repo.engine_dir} does not say which Hub checkpoint it was made from; pass "
            "--source OWNER/NAME[@REVISION]"
        )
    return manifest.source.repo_id, manifest.source.revision


def _write_slurm(
    spec: DeploySpec, repo_dir: Path, repo: RepoSpec, layout: Layout, root: Path
) -> DeployResult:
    text = _slurm.sbatch_script(spec, repo_dir, repo, layout, root)
    out = Path(spec.out)
    if out.is_dir():
        raise SpecError(f"{out} is a directory; --out names the sbatch script to write")
    if out.exists() and not spec.force:
        check_writable(out, force=False)  # an existing file: OutputExists, "pass --force"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.trtbuild.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(out)
    return DeployResult(out, [out.name], layout)


__all__ = ["DeployResult", "deploy"]
