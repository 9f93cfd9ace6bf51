"""Replicas on one host (trtbuild repo --instances) and the launch commands at world sizes 1-8.

- Placement: TensorRT-LLM instances get TP x PP GPUs each (gpu_device_ids, orchestrator mode);
  the portable runtime one GPU each (a KIND_GPU instance group per GPU) or CPU instances.
- Served for real: a two-instance portable repository on CPU, where both instances take requests
  (each instance's iteration counter, from /metrics, grows under load).
- Goldens: the command `trtbuild serve` runs for repositories of world size 1, 2, 4 and 8 (TP / PP
  mixes, replicas, the llmapi flavor, a replica across two nodes), from rendered repositories.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.goldens import check_golden
from tests.repo_fakes import write_hf_checkpoint, write_llama3_tokenizer, write_trtllm_engine
from trtbuild.builder.manifest import ServingHost
from trtbuild.cli import main
from trtbuild.errors import SpecError
from trtbuild.files.model_config import load_configs
from trtbuild.render import render_repository
from trtbuild.repo import make_repository, place_instances
from trtbuild.server import TritonInstall, TritonServer, launch_argv, repo_launch
from trtbuild.specs import RepoOptions, ServeSpec

GOLDEN = Path(__file__).parent / "golden" / "serve"
INSTALL = TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, {})
SERVE = ServeSpec(repo=Path("/srv/repository"), http_port=8000, grpc_port=8001, metrics_port=8002)


def _instance_groups(repo: Path) -> list[tuple[int, str, list[int]]]:
    """(count, kind, gpus) of each tensorrt_llm instance group."""
    groups = load_configs(repo)["tensorrt_llm"].instance_group
    return [(g.count, type(g).Kind.Name(g.kind), list(g.gpus)) for g in groups]


# -- placement -------------------------------------------------------------------------------------
def test_tensorrtllm_instances_get_tp_x_pp_gpus_each(tmp_path: Path) -> None:
    tok = write_llama3_tokenizer(tmp_path / "tok")
    engine = write_trtllm_engine(tmp_path / "engine", tp=2, tokenizer=tok)
    options = RepoOptions(engine_dir=engine, out=tmp_path / "repo", instances=3)
    result = make_repository(options, host=ServingHost(), gpu_count=8)
    assert result.spec.gpu_device_ids == [[0, 1], [2, 3], [4, 5]]
    assert result.spec.instances == 3
    groups = _instance_groups(result.path)
    assert groups == [(3, "KIND_CPU", [])]  # the C++ backend places them (gpu_device_ids)
    params = load_configs(result.path)["tensorrt_llm"].parameters
    assert params["gpu_device_ids"].string_value == "0,1;2,3;4,5"
    assert repo_launch(result.path).mode == "orchestrator"
    with pytest.raises(SpecError, match=r"--instances 5 of TP 2 x PP 1 needs 10 GPUs .* 8; pass "
                                        r"--instances 4"):  # fmt: skip
        make_repository(options.model_copy(update={"instances": 5, "force": True}),
                        host=ServingHost(), gpu_count=8)  # fmt: skip


def test_portable_instances_are_pinned_one_gpu_each_or_split_the_cpu(
    portable_engine: Path, tmp_path: Path
) -> None:
    options = RepoOptions(engine_dir=portable_engine, out=tmp_path / "gpu", instances=2)
    gpu = make_repository(options, host=ServingHost(), gpu_count=2)
    groups = _instance_groups(gpu.path)
    assert groups == [(1, "KIND_GPU", [0]), (1, "KIND_GPU", [1])]
    assert load_configs(gpu.path)["tensorrt_llm"].parameters["device"].string_value == "cuda"
    cpu = make_repository(options.model_copy(update={"out": tmp_path / "cpu"}),
                          host=ServingHost(), gpu_count=0)  # fmt: skip
    assert _instance_groups(cpu.path) == [(2, "KIND_CPU", [])]
    assert "CPU" in cpu.summary() and "2 tensorrt_llm engines" in cpu.summary()
    assert repo_launch(cpu.path).mode == repo_launch(gpu.path).mode == "single"


@pytest.mark.parametrize(
    ("instances", "device", "gpus", "message"),
    [
        (3, "auto", 2, "--instances 3 needs 3 GPUs (one engine per GPU) but this host has 2"),
        (2, "cuda:1", 2, "--device cuda:1 puts every instance on one GPU"),
        (2, "tpu", 0, "--device 'tpu' is not a device"),
    ],
)
def test_impossible_placements_name_the_fix(
    portable_engine: Path, instances: int, device: str, gpus: int, message: str
) -> None:
    from trtbuild.tiny_model import repo_spec

    with pytest.raises(SpecError, match=re.escape(message)):
        place_instances(repo_spec(portable_engine), instances, device, gpus, [])


def test_device_is_for_the_portable_runtime_only(tmp_path: Path) -> None:
    tok = write_llama3_tokenizer(tmp_path / "tok")
    engine = write_trtllm_engine(tmp_path / "engine", tokenizer=tok)
    options = RepoOptions(engine_dir=engine, out=tmp_path / "repo", device="cpu")
    with pytest.raises(SpecError, match="--device is for the portable runtime"):
        make_repository(options, host=ServingHost(), gpu_count=1)
    assert not (tmp_path / "repo").exists()


def test_a_saved_spec_with_gpu_groups_reads_as_that_many_instances(tmp_path: Path) -> None:
    from trtbuild.specs import RepoSpec

    spec = RepoSpec.model_validate(
        {
            "engine_dir": tmp_path,
            "tokenizer_dir": tmp_path,
            "end_id": 2,
            "pad_id": 3,
            "runtime": "tensorrtllm",
            "gpu_device_ids": [[0], [1]],
        }  # fmt: skip
    )
    assert spec.instances == 2
    with pytest.raises(ValueError, match="instances is 3 but gpu_device_ids lists 2"):
        RepoSpec.model_validate({**spec.model_dump(), "instances": 3})


# -- served: two CPU instances, both take requests -------------------------------------------------
def _iterations(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    pattern = r"^nv_trt_llm_general_metrics\{([^}]*)\} (\S+)$"
    found = {}
    for labels, value in re.findall(pattern, text, re.M):
        instance = re.search(r'model_instance="([^"]*)"', labels)
        if instance and 'general_type="iteration_counter"' in labels:
            found[instance.group(1)] = float(value)
    return found


@pytest.mark.server
def test_two_cpu_instances_both_serve(portable_engine: Path, tmp_path: Path) -> None:
    from trtbuild.client import Client
    from trtbuild.specs import InferSpec
    from trtbuild.tiny_model import repo_spec

    spec = place_instances(repo_spec(portable_engine), 2, "cpu", 0, [])
    repo = render_repository(spec, tmp_path / "repository")
    # two stubs unload one after the other: more than the 3 s other tests allow
    serve = ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=15)
    with TritonServer(serve, quiet=True) as server:
        before = _iterations(server.metrics_url)
        assert sorted(before) == ["tensorrt_llm_0_0", "tensorrt_llm_0_1"]
        texts: list[str] = []
        lock = threading.Lock()

        def stream(i: int) -> None:
            with Client(server.grpc_url) as client:
                result = client.generate(
                    InferSpec(
                        prompt=f"request {i}", url=server.grpc_url, stream=True, max_tokens=24
                    )  # fmt: skip
                )
            with lock:
                texts.append(result.text)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(texts) == 12
        deadline = time.monotonic() + 5  # the gauges are refreshed by each instance's sender
        grew: dict[str, float] = {}
        while time.monotonic() < deadline:
            after = _iterations(server.metrics_url)
            grew = {k: after[k] - before[k] for k in before}
            if all(v > 0 for v in grew.values()):
                break
            time.sleep(0.2)
        assert all(v > 0 for v in grew.values()), f"an instance took no request: {grew}"


# -- the launch commands at world sizes 1, 2, 4, 8 --------------------------------------------------
def _repo(tmp: Path, case: str, tiny: Path | None = None) -> Path:
    tok = write_llama3_tokenizer(tmp / "tok")
    info = ServingHost()
    flavor, _, layout = case.partition("-")
    if flavor == "llmapi":
        from trtbuild.repo import build_repo_spec

        ckpt = write_hf_checkpoint(tmp / "ckpt", tok)
        spec = build_repo_spec(ckpt, runtime="llmapi", host=info).spec
        tp = int(layout.removeprefix("tp"))
        return render_repository(spec.model_copy(update={"tp": tp}), tmp / "repo")
    if flavor == "torch":  # the portable runtime split across processes (a real sharded engine)
        from trtbuild.builder.engine import build_engine
        from trtbuild.specs import EngineSpec

        tp = int(layout.removeprefix("tp"))
        spec = EngineSpec(checkpoint=tiny, out=tmp / "engine", runtime="torch", tp=tp)
        engine = build_engine(spec).out_dir
        return make_repository(RepoOptions(engine_dir=engine, out=tmp / "repo"), host=info).path
    match = re.fullmatch(r"(?:(\d+)x-)?tp(\d+)(?:-pp(\d+))?", layout)
    assert match, case
    instances, tp, pp = int(match[1] or 1), int(match[2]), int(match[3] or 1)
    engine = write_trtllm_engine(tmp / "engine", tp=tp, pp=pp, tokenizer=tok)
    options = RepoOptions(engine_dir=engine, out=tmp / "repo", instances=instances)
    return make_repository(options, host=info, gpu_count=8).path


LAUNCH_CASES = {
    # world size 1
    "ws1-tensorrtllm-tp1": (),
    # world size 2
    "ws2-tensorrtllm-tp2": (),
    "ws2-tensorrtllm-tp1-pp2": (),
    "ws2-llmapi-tp2": (),
    "ws2-torch-tp2": (),  # the portable runtime's rank group: rendezvous env, no ports on rank 1
    # world size 4
    "ws4-tensorrtllm-tp4": (),
    "ws4-tensorrtllm-tp2-pp2": (),
    "ws4-tensorrtllm-2x-tp2": (),  # two replicas of TP 2 on one host: orchestrator mode
    # world size 8
    "ws8-tensorrtllm-tp8": (),
    "ws8-tensorrtllm-tp4-pp2": (),
    "ws8-tensorrtllm-tp2-pp4": (),
    "ws8-tensorrtllm-4x-tp2": (),
    # one replica over two nodes of 4 GPUs (the LeaderWorkerSet's command)
    "ws8-tensorrtllm-tp4-pp2-2nodes": ("--host", "leader:4,worker-1:4"),
}


@pytest.mark.parametrize("case", sorted(LAUNCH_CASES))
def test_golden_launch_argv(
    case: str, tmp_path: Path, update_golden: bool, request: pytest.FixtureRequest
) -> None:
    flavor_layout = case.split("-", 1)[1].removesuffix("-2nodes")
    tiny = request.getfixturevalue("tiny_model") if "torch" in case else None
    launch = repo_launch(_repo(tmp_path, flavor_layout, tiny))
    world = int(case.split("-", 1)[0].removeprefix("ws"))
    assert (len(launch.gpus) if launch.mode == "orchestrator" else launch.world_size) == world
    serve = SERVE.model_copy(update={"rendezvous_port": 29517})
    argv, env = launch_argv(serve, INSTALL, launch, mpirun_args=LAUNCH_CASES[case])
    text = "".join(f"{k}={v}\n" for k, v in sorted(env.items())) + "\n".join(argv) + "\n"
    check_golden(GOLDEN / f"{case}.txt", text, update_golden)
    ranks = argv.count(":") + 1 if launch.mode == "leader" else 1
    assert ranks == (launch.world_size if launch.mode == "leader" else 1)


def test_serve_dry_run_prints_the_command_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trtbuild.proc as proc
    import trtbuild.server as server

    repo = _repo(tmp_path, "tensorrtllm-tp2-pp2")
    real_which = server.shutil.which
    monkeypatch.setattr(
        server.shutil, "which", lambda n, **kw: None if n == "mpirun" else real_which(n, **kw)
    )
    monkeypatch.setattr(proc, "spawn", lambda *a, **kw: pytest.fail("--dry-run started something"))
    monkeypatch.setattr(
        server._stub_env, "prepare", lambda *a, **kw: pytest.fail("--dry-run probed the stub")
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(repo), "--dry-run", "--tritonserver", _fake_tritonserver(tmp_path)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    argv = shlex.split(out[0])
    assert argv[:4] == ["mpirun", "--allow-run-as-root", "-n", "1"]
    assert argv.count(":") == 3  # four ranks
    assert f"--model-repository={repo.resolve()}" in argv


def _fake_tritonserver(tmp: Path) -> str:
    path = tmp / "tritonserver"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)
