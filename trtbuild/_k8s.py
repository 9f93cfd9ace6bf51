"""The Kubernetes objects of ``trtbuild deploy k8s``, built as Python objects and dumped by PyYAML.

One file per object and a ``kustomization.yaml`` listing them. API versions: apps/v1, v1,
policy/v1, autoscaling/v2 (Kubernetes >= 1.23), leaderworkerset.x-k8s.io/v1 (LeaderWorkerSet,
kubernetes-sigs/lws >= 0.3), monitoring.coreos.com/v1 (prometheus-operator's ServiceMonitor and
PrometheusRule). tests/test_deploy.py validates every object against Kubernetes' OpenAPI schemas
(kubernetes-validate) and the CRDs' own schemas (tests/data/crds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from trtbuild import _observability as obs
from trtbuild._deploy_layout import (
    EXIT_TIMEOUT_S,
    PORTS,
    GiB,
    Layout,
    serve_command,
)
from trtbuild.ensembles import kind_for
from trtbuild.files.repo_spec import SPEC_FILE, repo_spec_text
from trtbuild.specs import DeploySpec, RepoSpec

SPEC_MOUNT = "/etc/trtbuild"
SSH_PORT = 2222
LWS_GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
KUSTOMIZATION = "kustomization.yaml"
DASHBOARD_JSON = "grafana-dashboard.json"
ADAPTER_VALUES = "prometheus-adapter-values.yaml"
DEPLOY_JSON = "trtbuild-deploy.json"


def _labels(layout: Layout) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": layout.name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "trtbuild",
    }


def _selector(layout: Layout) -> dict[str, str]:
    selector = {"app.kubernetes.io/name": layout.name, "app.kubernetes.io/component": "inference"}
    if layout.multi_node:  # only leaders (MPI rank 0) serve and export metrics
        selector[LWS_WORKER_INDEX] = "0"
    return selector


def _meta(name: str, layout: Layout, namespace: str | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**_labels(layout), **extra}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(round(value * 1000))}m"


def _gi(nbytes: float) -> str:
    return f"{max(1, math.ceil(nbytes / GiB))}Gi"


def _mi(nbytes: float) -> str:
    return f"{max(1, math.ceil(nbytes / 2**20))}Mi"


# -- the pod -----------------------------------------------------------------------------------------
def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _resources(layout: Layout) -> dict[str, Any]:
    gpus = layout.gpus_per_pod
    memory = layout.shm_bytes + 8 * GiB
    if gpus == 0:  # the portable runtime on CPU holds the weights in host memory
        memory += layout.weight_bytes
    requests: dict[str, str] = {"cpu": str(max(2, 2 * gpus)), "memory": _gi(memory)}
    resources: dict[str, Any] = {"requests": requests}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    return resources


def _volumes(
    spec: DeploySpec, layout: Layout, *, download: bool, ssh: bool
) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _mi(layout.shm_bytes)}}
    ]
    if download:
        size = _gi(layout.storage_bytes * 2.5 + GiB)  # checkpoint + engine copy + cache
        volumes.append({"name": "model-store", "emptyDir": {"sizeLimit": size}})
        volumes.append({"name": "repo-spec", "configMap": {"name": f"{layout.name}-repo-spec"}})
    else:
        claim = spec.pvc or f"{layout.name}-models"
        volumes.append(
            {
                "name": "model-store",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
    if ssh:
        volumes.append(
            {
                "name": "mpi-ssh",
                "secret": {"secretName": f"{layout.name}-mpi-ssh", "defaultMode": 0o600},
            }
        )
    return volumes


def _mounts(root: Path, *, ssh: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "model-store", "mountPath": str(root), "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if ssh:
        mounts.append({"name": "mpi-ssh", "mountPath": "/root/.ssh", "readOnly": True})
    return mounts


def _triton_container(repo_dir: Path, repo: RepoSpec, layout: Layout, root: Path) -> dict[str, Any]:
    mpirun_args: tuple[str, ...] = ()
    env: list[dict[str, Any]] = []
    if layout.multi_node:
        slots = layout.gpus_per_pod
        hosts = [f"$(LWS_LEADER_ADDRESS):{slots}"] + [
            f"{layout.name}-$(LWS_GROUP_INDEX)-{w}.{layout.name}:{slots}"
            for w in range(1, layout.pods_per_replica)
        ]
        mpirun_args = (
            "--host",
            ",".join(hosts),
            "--mca",
            "plm_rsh_args",
            f"-p {SSH_PORT} -o StrictHostKeyChecking=no",
        )
        env.append(
            {
                "name": "LWS_GROUP_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{LWS_GROUP_INDEX}']"}},
            }
        )
    argv, launch_env = serve_command(repo_dir, mpirun_args=mpirun_args)
    env += [{"name": k, "value": v} for k, v in sorted(launch_env.items())]
    budget_checks = max(1, math.ceil(layout.startup_budget_s / 10))
    container: dict[str, Any] = {
        "name": "triton",
        "image": layout.image,
        "imagePullPolicy": "IfNotPresent",
        "command": argv,
        "ports": [
            {"name": port, "containerPort": number, "protocol": "TCP"}
            for port, number in PORTS.items()
        ],
        "resources": _resources(layout),
        "volumeMounts": _mounts(root, ssh=layout.multi_node),
        # ready = every model loaded (Triton's strict readiness); the budget covers the load
        "startupProbe": _probe("/v2/health/ready", 10, budget_checks, 5),
        "readinessProbe": _probe("/v2/health/ready", 5, 3, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6, 5),
    }
    if env:
        container["env"] = env
    return container


def _init_container(
    image: str,
    repo_dir: Path,
    repo: RepoSpec,
    layout: Layout,
    root: Path,
    source: tuple[str, str | None],
) -> dict[str, Any]:
    """``trtbuild download`` (then the portable/LLM-API engine directory and the repository,
    from the saved spec) into the pod's volume, at the paths the configs name."""
    repo_id, revision = source
    checkpoint = root / ".trtbuild-checkpoint"
    download = ["trtbuild", "download", repo_id, "--local-dir", str(checkpoint)]
    if revision:
        download += ["--revision", revision]
    steps = [
        download,
        ["trtbuild", "engine", str(checkpoint), "--out", str(repo.engine_dir), "--runtime",
         repo.runtime, "--force"],
        ["trtbuild", "repo", "--spec", f"{SPEC_MOUNT}/trtbuild-repo.json", "--out",
         str(Path(repo_dir).resolve()), "--force"],
    ]  # fmt: skip
    return {
        "name": "trtbuild-download",
        "image": image,
        "command": ["/bin/sh", "-c", " && ".join(shlex.join(step) for step in steps)],
        "env": [
            {"name": "HF_HOME", "value": str(root / ".cache" / "huggingface")},
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": f"{layout.name}-hf-token",
                        "key": "token",
                        "optional": True,
                    }
                },
            },
        ],
        "volumeMounts": [
            {"name": "model-store", "mountPath": str(root)},
            {"name": "repo-spec", "mountPath": SPEC_MOUNT, "readOnly": True},
        ],
    }


def _pod_spec(
    spec: DeploySpec,
    repo_dir: Path,
    repo: RepoSpec,
    layout: Layout,
    root: Path,
    source: tuple[str, str | None] | None,
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": EXIT_TIMEOUT_S + 15,
        "containers": [_triton_container(repo_dir, repo, layout, root)],
        "volumes": _volumes(spec, layout, download=source is not None, ssh=layout.multi_node),
    }
    if source is not None:
        assert spec.init_image is not None  # deploy checked it
        pod["initContainers"] = [
            _init_container(spec.init_image, repo_dir, repo, layout, root, source)
        ]
    if layout.gpus_per_pod:
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return pod


def _worker_pod_spec(spec: DeploySpec, layout: Layout, root: Path) -> dict[str, Any]:
    """MPI ranks on the other nodes of a replica: sshd, which the leader's mpirun reaches."""
    worker = {
        "name": "mpi-worker",
        "image": layout.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/sbin/sshd", "-D", "-e", "-p", str(SSH_PORT)],
        "ports": [{"name": "ssh", "containerPort": SSH_PORT, "protocol": "TCP"}],
        "resources": _resources(layout),
        "volumeMounts": _mounts(root, ssh=True),
        "readinessProbe": {"tcpSocket": {"port": "ssh"}, "periodSeconds": 5},
    }
    return {
        "terminationGracePeriodSeconds": EXIT_TIMEOUT_S + 15,
        "containers": [worker],
        "volumes": _volumes(spec, layout, download=False, ssh=True),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


# -- the objects ---------------------------------------------------------------------------------------
def manifests(
    spec: DeploySpec,
    repo_dir: Path,
    repo: RepoSpec,
    layout: Layout,
    root: Path,
    source: tuple[str, str | None] | None,
) -> dict[str, dict[str, Any]]:
    """File name -> object, in the order the kustomization lists them."""
    ns, name = spec.namespace, layout.name
    pod_labels = _labels(layout)
    docs: dict[str, dict[str, Any]] = {}
    if source is None and spec.pvc is None:
        pvc_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteMany"],
            "resources": {
                "requests": {"storage": spec.pvc_size or _gi(layout.storage_bytes * 1.2)}
            },
        }
        if spec.storage_class:
            pvc_spec["storageClassName"] = spec.storage_class
        docs["persistentvolumeclaim.yaml"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(f"{name}-models", layout, ns),
            "spec": pvc_spec,
        }
    if source is not None:
        docs["configmap-repo-spec.yaml"] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{name}-repo-spec", layout, ns),
            "data": {SPEC_FILE: repo_spec_text(repo, kind_for(repo).KIND)},
        }
    pod = _pod_spec(spec, repo_dir, repo, layout, root, source)
    if layout.multi_node:
        workload = {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": _meta(name, layout, ns),
            "spec": {
                "replicas": layout.min_replicas,
                "startupPolicy": "LeaderCreated",
                "leaderWorkerTemplate": {
                    "size": layout.pods_per_replica,
                    "restartPolicy": "RecreateGroupOnPodRestart",
                    "leaderTemplate": {"metadata": {"labels": pod_labels}, "spec": pod},
                    "workerTemplate": {
                        "metadata": {"labels": pod_labels},
                        "spec": _worker_pod_spec(spec, layout, root),
                    },
                },
            },
        }
        docs["leaderworkerset.yaml"] = workload
        target = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet"}
    else:
        docs["deployment.yaml"] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, layout, ns),
            "spec": {
                "replicas": layout.min_replicas,
                "selector": {"matchLabels": _selector(layout)},
                # a new pod loads before an old one goes: no capacity lost, one spare pod's GPUs
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "progressDeadlineSeconds": layout.startup_budget_s + 300,
                "template": {"metadata": {"labels": pod_labels}, "spec": pod},
            },
        }
        target = {"apiVersion": "apps/v1", "kind": "Deployment"}
    docs["service.yaml"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, layout, ns),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(layout),
            "ports": [
                {"name": port, "port": number, "targetPort": port, "protocol": "TCP"}
                for port, number in PORTS.items()
            ],
        },
    }
    docs["servicemonitor.yaml"] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name, layout, ns),
        "spec": {
            "selector": {"matchLabels": _labels(layout)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }
    docs["poddisruptionbudget.yaml"] = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, layout, ns),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(layout)}},
    }
    down_window = max(600, 2 * layout.startup_budget_s)
    docs["horizontalpodautoscaler.yaml"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, layout, ns),
        "spec": {
            "scaleTargetRef": {**target, "name": name},
            "minReplicas": layout.min_replicas,
            "maxReplicas": layout.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": obs.INFLIGHT_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(layout.target_inflight),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": 1, "periodSeconds": 60},
                        {"type": "Percent", "value": 50, "periodSeconds": 60},
                    ],
                },
                # capacity is slow to come back (a new replica loads for minutes): hold it
                "scaleDown": {
                    "stabilizationWindowSeconds": down_window,
                    "selectPolicy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
        },
    }
    docs["prometheusrule.yaml"] = obs.prometheus_rule(
        name, ns, _labels(layout), layout.sla_ttft_ms, layout.startup_budget_s
    )
    docs["configmap-grafana-dashboard.yaml"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{name}-dashboard", layout, ns, grafana_dashboard="1"),
        "data": {f"{name}.json": json.dumps(obs.dashboard(name, layout.sla_ttft_ms), indent=2)},
    }
    return docs


class _Dumper(yaml.SafeDumper):
    """Plain YAML: an object used twice is written twice, never as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


def write(
    directory: Path, docs: dict[str, dict[str, Any]], layout: Layout, spec: DeploySpec
) -> list[str]:
    """Write the objects, the kustomization, the dashboard JSON, the adapter values and the
    layout record into ``directory``; returns the file names."""
    directory = Path(directory)
    for filename, obj in docs.items():
        (directory / filename).write_text(dump(obj))
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(docs),
    }
    (directory / KUSTOMIZATION).write_text(dump(kustomization))
    (directory / DASHBOARD_JSON).write_text(
        json.dumps(obs.dashboard(layout.name, layout.sla_ttft_ms), indent=2) + "\n"
    )
    values = {"rules": {"default": False, "custom": [obs.adapter_rule(layout.name)]}}
    (directory / ADAPTER_VALUES).write_text(dump(values))
    (directory / DEPLOY_JSON).write_text(
        json.dumps(
            {"spec": spec.model_dump(mode="json"), "layout": dataclasses.asdict(layout)}, indent=2
        )
        + "\n"
    )
    return [*docs, KUSTOMIZATION, DASHBOARD_JSON, ADAPTER_VALUES, DEPLOY_JSON]
