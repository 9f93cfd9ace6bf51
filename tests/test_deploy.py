"""trtbuild deploy k8s / slurm: what is rendered, that every object validates offline, and goldens.

Validation: built-in kinds against Kubernetes' OpenAPI schemas as kubernetes-validate bundles them
(strict: an unknown field fails, as kubectl's server-side field validation does), for the oldest
and newest versions we state (K8S_VERSIONS); the LeaderWorkerSet, ServiceMonitor and
PrometheusRule against their CRDs' openAPIV3Schema (tests/data/crds, SOURCE.md says where from)
with jsonschema, made strict the same way; the pod templates inside a LeaderWorkerSet as Pods.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.goldens import check_golden
from tests.repo_fakes import write_llama3_tokenizer, write_trtllm_engine
from trtbuild.builder.manifest import ServingHost
from trtbuild.cli import main
from trtbuild.deploy import deploy
from trtbuild.files.plan_file import write_plan
from trtbuild.plan import plan_from_spec
from trtbuild.repo import make_repository
from trtbuild.specs import DeploySpec, PlanRequest, PlanSpec, RepoOptions

K8S_VERSIONS = ("1.30.0", "1.37.0")
CRDS = Path(__file__).parent / "data" / "crds"
GOLDEN = Path(__file__).parent / "golden" / "deploy"
CRD_KINDS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.x-k8s.io_v1_LeaderWorkerSet",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule",
}  # fmt: skip
ROOT = "/models"  # goldens show the storage root as /models (the test's is a temp dir)


# -- validators ------------------------------------------------------------------------------------
def _strict(node: Any) -> Any:
    """A CRD schema as the API server applies it with field validation Strict: an object with
    declared properties takes no others (unless it preserves unknown fields)."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(stem: str) -> dict[str, Any]:
    document = json.loads((CRDS / f"{stem}.json").read_text())
    schema: dict[str, Any] = _strict(document["openAPIV3Schema"])
    return schema


def validate(obj: dict[str, Any]) -> None:
    import jsonschema
    import kubernetes_validate

    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_KINDS:
        jsonschema.Draft7Validator(crd_schema(CRD_KINDS[key])).validate(obj)
        _metadata(obj)
        if obj["kind"] == "LeaderWorkerSet":  # its pod templates are Pods: validate them as such
            template = obj["spec"]["leaderWorkerTemplate"]
            for part in ("leaderTemplate", "workerTemplate"):
                pod = {"apiVersion": "v1", "kind": "Pod", **template[part]}
                pod["metadata"] = {"name": "pod", **pod.get("metadata", {})}
                for version in K8S_VERSIONS:
                    kubernetes_validate.validate(pod, version, strict=True)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def _metadata(obj: dict[str, Any]) -> None:
    """What the CRD schema leaves to the API server: ObjectMeta (checked as a ConfigMap's)."""
    import kubernetes_validate

    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    kubernetes_validate.validate(probe, K8S_VERSIONS[-1], strict=True)


# -- the cases -------------------------------------------------------------------------------------
def _plan(path: Path, model: str, gpu: str, gpus: int, nodes: int = 1) -> Path:
    request = PlanRequest(gpus_per_node=gpus, nodes=nodes)
    write_plan(path, plan_from_spec(PlanSpec(model=model, gpu=gpu, request=request)))
    return path


def _render(root: Path, case: str, tiny_model: Path) -> tuple[Path, list[str]]:
    """The repository of ``case`` under ``root`` and the extra deploy options it is tested with."""
    from trtbuild.builder.engine import prepare_portable_engine

    info = ServingHost()
    if case.startswith("portable"):
        engine = prepare_portable_engine(tiny_model, root / "engine")
        options = RepoOptions(engine_dir=engine, out=root / "repository", instances=2, device="cpu")
        make_repository(options, host=info, gpu_count=0)
        extra = ["--min-replicas", "2", "--max-replicas", "6", "--namespace", "llm"]
        if case == "portable-download":
            extra = ["--storage", "download", "--init-image", "registry.example/trtbuild:0.1.0",
                     "--source", "TinyOrg/tiny-llama@0123abcd"]  # fmt: skip
        return root / "repository", extra
    tok = write_llama3_tokenizer(root / "tokenizer")
    if case.startswith("tensorrtllm-tp2"):
        engine = write_trtllm_engine(root / "engine", tp=2, tokenizer=tok)
        plan = _plan(root / "plan.json", "meta-llama/Llama-3.1-70B", "h100-sxm", 8)
        instances = 4 if case.endswith("4x") else 1
        options = RepoOptions(
            engine_dir=engine, out=root / "repository", plan=plan, instances=instances
        )
    else:  # one replica over two nodes
        engine = write_trtllm_engine(root / "engine", tp=8, pp=2, max_batch_size=256, tokenizer=tok)
        plan = _plan(root / "plan.json", "meta-llama/Llama-3.1-70B", "l4", 8, nodes=2)
        options = RepoOptions(engine_dir=engine, out=root / "repository", plan=plan)
    make_repository(options, host=info, gpu_count=8)
    return root / "repository", ["--plan", str(plan)]


CASES = ["portable-cpu-2x", "portable-download", "tensorrtllm-tp2", "tensorrtllm-tp2-4x",
         "tensorrtllm-tp8-pp2-lws"]  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = {}
    for case in CASES:
        root = tmp_path_factory.mktemp(case)
        repo, extra = _render(root, case, tiny_model)
        k8s = root / "k8s"
        _run(["deploy", "k8s", str(repo), "--out", str(k8s), *extra])
        out[case] = (root, repo, k8s)
    return out


def _run(argv: list[str], code: int = 0) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code


def _objects(k8s: Path) -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    return {name: yaml.safe_load((k8s / name).read_text()) for name in kustomization["resources"]}


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_every_manifest_validates_against_its_schema(rendered: dict[str, Any], case: str) -> None:
    _, _, k8s = rendered[case]
    objects = _objects(k8s)
    for name, obj in objects.items():
        try:
            validate(obj)
        except Exception as exc:  # noqa: BLE001 - name the file
            raise AssertionError(f"{case}/{name}: {exc}") from exc
    kinds = {obj["kind"] for obj in objects.values()}
    workload = "LeaderWorkerSet" if case.endswith("lws") else "Deployment"
    assert {workload, "Service", "ServiceMonitor", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "PrometheusRule", "ConfigMap"} <= kinds  # fmt: skip


def test_the_kustomization_lists_every_manifest_and_nothing_else(rendered: dict[str, Any]) -> None:
    for root, _, k8s in rendered.values():
        kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert kustomization["kind"] == "Kustomization"
        manifests = {p.name for p in k8s.glob("*.yaml")} - {
            "kustomization.yaml",
            "prometheus-adapter-values.yaml",
        }
        assert set(kustomization["resources"]) == manifests, root


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(bogus=1), "bogus"),
        (lambda d: d["spec"].update(replicas="two"), "two"),
    ],
)
def test_the_validator_refuses_a_broken_deployment(
    rendered: dict[str, Any], mutate: Any, message: str
) -> None:
    _, _, k8s = rendered["tensorrtllm-tp2"]
    broken = copy.deepcopy(yaml.safe_load((k8s / "deployment.yaml").read_text()))
    mutate(broken)
    with pytest.raises(Exception, match=message):
        validate(broken)


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("leaderworkerset.yaml",
         lambda d: d["spec"]["leaderWorkerTemplate"].update(sizee=2), "sizee"),
        ("leaderworkerset.yaml",
         lambda d: d["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
         .update(imagee="x"), "imagee"),
        ("servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(port=8002), "8002"),
        ("prometheusrule.yaml", lambda d: d["spec"]["groups"][0].update(rulez=[]), "rulez"),
    ],
)  # fmt: skip
def test_the_crd_validators_refuse_broken_objects(
    rendered: dict[str, Any], name: str, mutate: Any, message: str
) -> None:
    _, _, k8s = rendered["tensorrtllm-tp8-pp2-lws"]
    broken = copy.deepcopy(yaml.safe_load((k8s / name).read_text()))
    mutate(broken)
    with pytest.raises(Exception, match=message):
        validate(broken)


# -- what is in them ---------------------------------------------------------------------------------
def test_a_replica_gets_tp_x_pp_gpus_and_the_serve_command(rendered: dict[str, Any]) -> None:
    _, repo, k8s = rendered["tensorrtllm-tp2"]
    pod = _objects(k8s)["deployment.yaml"]["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    command = triton["command"]
    assert command[:5] == [
        "mpirun",
        "--allow-run-as-root",
        "-n",
        "1",
        "/opt/tritonserver/bin/tritonserver",
    ]
    assert f"--model-repository={repo.resolve()}" in command and "--http-address=0.0.0.0" in command
    assert command.count(":") == 1 and "--load-model=tensorrt_llm" in command  # rank 1: core only
    assert "--metrics-config=histogram_latencies=true" in command
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"].endswith("Mi")
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_the_autoscaler_comes_from_the_plan(rendered: dict[str, Any]) -> None:
    root, _, k8s = rendered["tensorrtllm-tp2"]
    plan = json.loads((root / "plan.json").read_text())
    hpa = _objects(k8s)["horizontalpodautoscaler.yaml"]["spec"]
    capacity = min(plan["max_batch_size"], plan["max_concurrent_sequences"])  # 22 sequences
    assert hpa["maxReplicas"] == plan["replicas"] == 4
    assert hpa["minReplicas"] == -(-plan["concurrency"] // capacity) == 3
    metric = hpa["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "trtbuild_inflight_requests"
    assert metric["target"]["averageValue"] == str(int(capacity * 0.8))
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600
    adapter = yaml.safe_load((k8s / "prometheus-adapter-values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["name"]["as"] == "trtbuild_inflight_requests"
    assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_instances_on_one_host_are_one_pod_in_orchestrator_mode(rendered: dict[str, Any]) -> None:
    _, _, k8s = rendered["tensorrtllm-tp2-4x"]
    deployment = _objects(k8s)["deployment.yaml"]
    triton = deployment["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert {"name": "TRTLLM_ORCHESTRATOR", "value": "1"} in triton["env"]
    hpa = _objects(k8s)["horizontalpodautoscaler.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 1)  # the plan's 8 GPUs are this pod


def test_a_replica_across_nodes_is_a_leaderworkerset(rendered: dict[str, Any]) -> None:
    _, _, k8s = rendered["tensorrtllm-tp8-pp2-lws"]
    objects = _objects(k8s)
    lws = objects["leaderworkerset.yaml"]["spec"]["leaderWorkerTemplate"]
    assert lws["size"] == 2
    leader = lws["leaderTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    command = leader["command"]
    hosts = command[command.index("--host") + 1]
    assert (
        hosts
        == "$(LWS_LEADER_ADDRESS):8,trtbuild-llama-3-1-70b-$(LWS_GROUP_INDEX)-1.trtbuild-llama-3-1-70b:8"
    )
    assert command.count(":") == 15  # 16 ranks
    assert (
        objects["service.yaml"]["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"]
        == "0"
    )
    target = objects["horizontalpodautoscaler.yaml"]["spec"]["scaleTargetRef"]
    assert target["kind"] == "LeaderWorkerSet"


def test_portable_runtime_on_cpu_requests_no_gpu_and_memory_for_the_weights(
    rendered: dict[str, Any],
) -> None:
    _, _, k8s = rendered["portable-cpu-2x"]
    objects = _objects(k8s)
    triton = objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert (
        "limits" not in triton["resources"]
        and "nvidia.com/gpu" not in triton["resources"]["requests"]
    )
    assert triton["command"][0] == "/opt/tritonserver/bin/tritonserver"  # one process, 2 instances
    assert all(obj["metadata"]["namespace"] == "llm" for obj in objects.values())
    hpa = objects["horizontalpodautoscaler.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)


def test_download_storage_runs_trtbuild_download_in_an_init_container(
    rendered: dict[str, Any],
) -> None:
    root, repo, k8s = rendered["portable-download"]
    objects = _objects(k8s)
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["image"] == "registry.example/trtbuild:0.1.0"
    script = init["command"][2]
    assert script.startswith(f"trtbuild download TinyOrg/tiny-llama --local-dir {root}/")
    assert "--revision 0123abcd" in script and f"--out {repo.resolve()}" in script
    assert "persistentvolumeclaim.yaml" not in objects
    spec = json.loads(objects["configmap-repo-spec.yaml"]["data"]["trtbuild-repo.json"])
    assert spec["spec"]["instances"] == 2


def test_dashboard_and_alerts_cover_what_the_issue_names(rendered: dict[str, Any]) -> None:
    _, _, k8s = rendered["tensorrtllm-tp2"]
    dashboard = json.loads((k8s / "grafana-dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Time to first token", "Queue time per request", "Output tokens/s", "KV-cache use",
            "GPU memory used", "GPU utilisation", "Errors"} <= titles  # fmt: skip
    rules = _objects(k8s)["prometheusrule.yaml"]["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules}
    assert {"TrtbuildTTFTp99OverSLA", "TrtbuildQueueGrowing", "TrtbuildReplicaNotReady"} <= set(
        alerts
    )
    assert alerts["TrtbuildTTFTp99OverSLA"]["expr"].endswith("> 1000")
    for expr in [r["expr"] for r in rules] + [
        t["expr"] for p in dashboard["panels"] for t in p["targets"]
    ]:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


@pytest.mark.server
def test_the_metrics_the_portable_runtime_exports_are_the_ones_the_autoscaler_reads(
    served: Any,
) -> None:
    """The HPA's series (through the adapter rule) exists on a served portable runtime, with the
    labels the rule keeps (one series per instance, summed per pod)."""
    import urllib.request

    from trtbuild._observability import INFLIGHT_SERIES

    with urllib.request.urlopen(served.metrics_url, timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    series = re.findall(rf"^{INFLIGHT_SERIES}\{{([^}}]*)\}}", text, re.M)
    kinds = {re.search(r'request_type="(\w+)"', s).group(1) for s in series}  # type: ignore[union-attr]
    assert {"active", "waiting", "max"} <= kinds
    assert all('model="tensorrt_llm"' in s and "model_instance=" in s for s in series)
    for family in ("nv_inference_queue_duration_us", "nv_inference_request_success",
                   "nv_inference_request_failure"):  # fmt: skip
        assert re.search(rf'^{family}\{{[^}}]*model="ensemble"', text, re.M), family


# -- errors ----------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_fix_and_nothing_written(
    rendered: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, repo, k8s = rendered["tensorrtllm-tp2"]
    out = tmp_path / "out"
    cases = [
        (["--min-replicas", "5", "--max-replicas", "2"], "--min-replicas 5 is above --max-replicas 2"),
        (["--storage", "download"], "pass --init-image"),
        (["--name", "Bad_Name"], "name"),
        (["--plan", str(_plan(tmp_path / "p.json", "meta-llama/Llama-3.1-8B", "h100-sxm", 1))],
         "plans TP 1 x PP 1 but"),
    ]  # fmt: skip
    for extra, message in cases:
        _run(["deploy", "k8s", str(repo), "--out", str(out), *extra], code=2)
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    _run(["deploy", "k8s", str(repo), "--out", str(k8s)], code=2)  # exists: --force
    assert "pass --force" in capsys.readouterr().err
    _run(["deploy", "k8s", str(root / "engine"), "--out", str(out)], code=2)
    assert "rendered by 'trtbuild repo'" in capsys.readouterr().err


def test_deploy_refuses_a_repository_whose_files_share_no_directory(
    rendered: dict[str, Any], tmp_path: Path
) -> None:
    from trtbuild.errors import SpecError
    from trtbuild.files.repo_spec import read_repo_spec, write_repo_spec

    _, repo, _ = rendered["tensorrtllm-tp2"]
    moved = tmp_path / "repo"
    shutil.copytree(repo, moved)
    spec = read_repo_spec(moved).model_copy(update={"engine_dir": Path("/opt/engine")})
    write_repo_spec(moved, spec, "inflight_batcher_llm")
    with pytest.raises(SpecError, match="share no directory but /"):
        deploy(DeploySpec(target="k8s", repo=moved, out=tmp_path / "k8s"))


# -- slurm --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "nodes"), [("tensorrtllm-tp8-pp2-lws", 4), ("tensorrtllm-tp2", 2),
                                             ("portable-cpu-2x", 1)])  # fmt: skip
def test_golden_slurm_script(
    rendered: dict[str, Any], case: str, nodes: int, update_golden: bool
) -> None:
    root, repo, _ = rendered[case]
    out = root / f"serve-{nodes}.sbatch"
    plan = ["--plan", str(root / "plan.json")] if (root / "plan.json").is_file() else []
    _run(["deploy", "slurm", str(repo), "--out", str(out), "--nodes", str(nodes), *plan,
          "--force"])  # fmt: skip
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(out)], check=True)  # it parses
    text = out.read_text().replace(str(root), ROOT)
    check_golden(GOLDEN / "slurm" / f"{case}.sbatch", text, update_golden)


def test_slurm_refuses_nodes_that_do_not_hold_whole_replicas(
    rendered: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, repo, _ = rendered["tensorrtllm-tp8-pp2-lws"]
    out = tmp_path / "x.sbatch"
    _run(["deploy", "slurm", str(repo), "--out", str(out), "--nodes", "3", "--plan",
          str(root / "plan.json")], code=2)  # fmt: skip
    assert "--nodes 3 does not hold whole replicas of 2 node(s)" in capsys.readouterr().err
    assert not out.exists()


# -- goldens -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_golden_manifests(rendered: dict[str, Any], case: str, update_golden: bool) -> None:
    root, _, k8s = rendered[case]
    names = sorted(p.name for p in k8s.iterdir())
    golden = GOLDEN / case
    if update_golden and golden.exists():
        shutil.rmtree(golden)
    for name in names:
        text = (k8s / name).read_text().replace(str(root), ROOT)
        check_golden(golden / name, text, update_golden)
    assert sorted(p.name for p in golden.iterdir()) == names
