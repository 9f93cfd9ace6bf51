"""The sbatch script of ``trtbuild deploy slurm``: the same layout as the Kubernetes manifests.

A job of ``--nodes`` nodes holds ``nodes / nodes_per_replica`` replicas; each replica is one
``srun`` step over its own nodes (``--relative``), in the serving image through pyxis/enroot
(``--container-image``), with the storage root mounted at the same path. TP x PP > 1 (TensorRT-LLM's
leader mode, and the portable runtime's rank group) runs one tritonserver per Slurm task,
``--mpi=pmix`` giving them their MPI world, as TensorRT-LLM's own Slurm example does: task 0 loads every model and serves, the others load only
``tensorrt_llm``, each with its own Python-backend shared-memory prefix. Orchestrator and llmapi
modes run their single tritonserver under ``mpirun -n 1`` in one task. The portable runtime's
ranks read their rank from Slurm's environment and meet at their replica's first node
(``TRTBUILD_TP_ADDR``, ``TRTBUILD_TP_PORT``). Every argument is quoted with ``shlex``; only
``$SLURM_PROCID`` is left for the shell.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from trtbuild._deploy_layout import (
    PORTS,
    TRITONSERVER,
    Layout,
    deploy_serve_spec,
    serve_command,
)
from trtbuild.errors import SpecError
from trtbuild.server import RepoLaunch, TritonInstall, rank_argv, repo_launch
from trtbuild.specs import DeploySpec, RepoSpec
from trtbuild.vocab import TP_ADDR_ENV, TP_PORT_ENV, TP_SLURM_PORT


def _rank_script(repo_dir: Path) -> tuple[str, dict[str, str], int]:
    """(the bash the tasks of one replica run, environment, tasks per replica)."""

    launch: RepoLaunch = repo_launch(Path(repo_dir))
    if launch.mode != "leader":
        argv, env = serve_command(repo_dir)
        return f"exec {shlex.join(argv)}", env, 1
    serve = deploy_serve_spec(repo_dir)
    install = TritonInstall(TRITONSERVER, None, {})
    leader = shlex.join(rank_argv(serve, install, launch, 0))
    worker = shlex.join(rank_argv(serve, install, launch, 1))
    shm = '"--backend-config=python,shm-region-prefix-name=prefix${SLURM_PROCID}_"'
    script = f'if [ "$SLURM_PROCID" -eq 0 ]; then exec {leader} {shm}; else exec {worker} {shm}; fi'
    # the portable runtime's ranks meet at their replica's first node (set per replica below)
    env = {TP_PORT_ENV: str(TP_SLURM_PORT)} if launch.portable else {}
    return script, env, launch.world_size


def sbatch_script(
    spec: DeploySpec, repo_dir: Path, repo: RepoSpec, layout: Layout, root: Path
) -> str:
    gpn = layout.gpus_per_node
    per_replica_nodes = max(1, math.ceil(layout.world / gpn)) if layout.gpus_per_pod else 1
    nodes = spec.nodes or per_replica_nodes * layout.min_replicas
    if nodes % per_replica_nodes:
        raise SpecError(
            f"--nodes {nodes} does not hold whole replicas of {per_replica_nodes} node(s) "
            f"(TP {layout.tp} x PP {layout.pp} on {gpn} GPU(s) per node); pass --nodes "
            f"{per_replica_nodes * max(1, nodes // per_replica_nodes)}"
        )
    replicas = nodes // per_replica_nodes
    script, env, tasks = _rank_script(repo_dir)
    tasks_per_node = max(1, tasks // per_replica_nodes)
    gpus = layout.gpus_per_pod
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={layout.name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --time={spec.time_limit}",
        f"#SBATCH --output={layout.name}-%j.log",
    ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    lines += [
        "#",
        f"# trtbuild deploy slurm: {replicas} replica(s) of TP {layout.tp} x PP {layout.pp}, "
        f"{layout.instances} tensorrt_llm instance(s) each, {per_replica_nodes} node(s) per "
        "replica.",
        f"# Repository {Path(repo_dir).resolve()} (trtbuild-repo.json); the model files under "
        f"{root} must be on every node (a shared filesystem), at that path.",
        f"# Each replica serves on its first node: HTTP {PORTS['http']}, gRPC {PORTS['grpc']}, "
        f"metrics {PORTS['metrics']}.",
        "set -euo pipefail",
        "",
        f"IMAGE={shlex.quote(layout.image)}",
        f"MOUNTS={shlex.quote(f'{root}:{root}')}",
    ]
    for key, value in sorted(env.items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    first = f"${{HOSTS[$((replica * {per_replica_nodes}))]}}"
    lines += [
        "",
        'mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        f"for replica in $(seq 0 {replicas - 1}); do",
        f'  echo "replica $replica: http://{first}:{PORTS["http"]}"',
    ]
    if TP_PORT_ENV in env:  # the portable runtime's rendezvous: rank 0, on the replica's first node
        lines.append(f'  export {TP_ADDR_ENV}="{first}"')
    lines += [
        f"  srun --nodes={per_replica_nodes} --ntasks={tasks} "
        f"--ntasks-per-node={tasks_per_node} --relative=$((replica * {per_replica_nodes})) "
        '--mpi=pmix --container-image="$IMAGE" --container-mounts="$MOUNTS" '
        f"--kill-on-bad-exit=1 bash -c {shlex.quote(script)} &",
        "done",
        "wait",
        "",
    ]
    return "\n".join(lines)
