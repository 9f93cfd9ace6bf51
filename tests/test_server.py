"""tritonserver supervision: argv, readiness, failure reporting, clean shutdown of the whole tree."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from trtbuild.errors import ServerNotReady, SpecError, ToolNotFound
from trtbuild.server import (
    TritonInstall,
    TritonServer,
    find_tritonserver,
    resolve_ports,
    server_argv,
)
from trtbuild.specs import ServeSpec


def test_binds_loopback_by_default_and_passes_every_port(tmp_path: Path) -> None:
    spec = ServeSpec(repo=tmp_path, http_port=9000, grpc_port=9001, metrics_port=9002)
    argv = server_argv(spec, TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, {}))
    assert argv[0] == "/opt/tritonserver/bin/tritonserver"
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=9000",
        "--grpc-port=9001",
        "--metrics-port=9002",
        f"--model-repository={tmp_path.resolve()}",
    ):
        assert flag in argv
    assert not any(a.startswith("--backend-directory") for a in argv)


def test_port_zero_picks_distinct_free_ports(tmp_path: Path) -> None:
    spec = resolve_ports(ServeSpec(repo=tmp_path, http_port=0, grpc_port=0, metrics_port=0))
    ports = {spec.http_port, spec.grpc_port, spec.metrics_port}
    assert len(ports) == 3 and 0 not in ports


def test_the_wheel_server_gets_the_stub_and_the_interpreter_on_path() -> None:
    install = find_tritonserver(None)
    assert install.binary.name == "tritonserver" and install.binary.is_file()
    assert install.backend_dir is not None
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.is_file()
    # the stub finds its interpreter (and so the venv with numpy<2, torch) through PATH
    assert install.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_missing_tritonserver_names_the_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    import trtbuild.server as server

    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    monkeypatch.setattr(server, "_pytriton_root", lambda: None)
    with pytest.raises(ToolNotFound, match="--tritonserver PATH"):
        find_tritonserver(None)


def test_an_empty_repository_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no model"):
        TritonServer(ServeSpec(repo=tmp_path))


def test_a_broken_model_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    model = tmp_path / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [{ name: "X" data_type: TYPE_INT32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_INT32 dims: [1] }]\n'
    )
    (model / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonServer(
        ServeSpec(repo=tmp_path, http_port=0, grpc_port=0, metrics_port=0), quiet=True
    )
    with pytest.raises(ServerNotReady) as info, server:
        pass
    assert "ended (exit status 1) before it was ready" in info.value.message
    assert "this model cannot load" in (info.value.details or "")
    assert not server.running()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.server
def test_serve_runs_until_sigterm_and_leaves_no_process(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`trtbuild serve` on the session's repository: endpoints printed, SIGTERM stops everything."""
    repo = Path(served.spec.repo)
    cli = Path(sys.executable).parent / "trtbuild"
    child = subprocess.Popen(
        [
            str(cli),
            "serve",
            str(repo),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        http = child.stdout.readline().split()[-1]  # type: ignore[union-attr]
        assert http.startswith("http://127.0.0.1:")
        grpc = child.stdout.readline().split()[-1]  # type: ignore[union-attr]
        assert grpc.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
        tree = _descendants(child.pid)
        assert any(p.name() == "tritonserver" for p in tree)
        # one Python-backend stub per Python model (the ensemble has none)
        assert sum("triton_python_backend_stub" in p.name() for p in tree) == 4
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "Stopping tritonserver (SIGTERM)..." in err
    assert err.rstrip().endswith("tritonserver stopped after SIGTERM (exit status 0).")
    time.sleep(0.5)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree)


def test_a_server_that_ignores_sigterm_is_killed_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "stuck"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "stuck"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [{ name: "X" data_type: TYPE_INT32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_INT32 dims: [1] }]\n'
    )
    (model / "1" / "model.py").write_text(
        "import time\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return []\n"
        "    def finalize(self):\n"
        "        time.sleep(120)\n"
    )
    spec = ServeSpec(repo=tmp_path, http_port=0, grpc_port=0, metrics_port=0, shutdown_grace=2)
    with TritonServer(spec, quiet=True) as server:
        tree = _descendants(server._proc.pid)  # type: ignore[union-attr]
    assert server.stop() is None  # already stopped by the with block
    assert "did not stop within 2 s of SIGTERM and was killed" in capsys.readouterr().err
    time.sleep(0.3)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree)


def _repo_serving(engine: Path, repo: Path) -> Path:
    """A hand-written repository whose core model points at ``engine`` (as upstream's do)."""
    core = repo / "tensorrt_llm"
    (core / "1").mkdir(parents=True)
    (core / "config.pbtxt").write_text(
        'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nmax_batch_size: 8\n'
        f'parameters: {{ key: "gpt_model_path" value: {{ string_value: "{engine}" }} }}\n'
    )
    return repo


def test_serve_refuses_an_engine_built_for_another_gpu_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.repo_fakes import write_manifest, write_trtllm_engine
    from trtbuild.builder import manifest
    from trtbuild.cli import main
    from trtbuild.errors import IncompatibleArtifact
    from trtbuild.render import preflight

    engine = write_trtllm_engine(tmp_path / "engine")
    write_manifest(engine, runtime="tensorrtllm")  # built for h100-sxm, SM 90, TensorRT-LLM 1.2.1
    repo = _repo_serving(engine, tmp_path / "repo")
    l40s = manifest.ServingHost(sm=89, gpu_name="l40s", trtllm_version="1.2.1")
    with pytest.raises(
        IncompatibleArtifact, match=r"built for h100-sxm \(SM 90\) but this GPU is l40s \(SM 89\)"
    ):
        preflight(repo, runtime=l40s)
    assert preflight(repo, runtime=l40s, force=True) == [
        "built for h100-sxm (SM 90) but this GPU is l40s (SM 89)"
    ]
    assert preflight(repo, runtime=manifest.ServingHost(sm=90, trtllm_version="1.2.1")) == []
    # the CLI stops before starting anything: exit 2, both sides named, the fix given
    monkeypatch.setattr(manifest, "detect_host", lambda: l40s)
    with pytest.raises(SystemExit) as info:
        main(["serve", str(repo)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "built for h100-sxm (SM 90) but this GPU is l40s (SM 89)" in err and "--force" in err


@pytest.mark.parametrize(
    ("host", "expected"),
    [(str(ipaddress.IPv4Address(0)), "127.0.0.1"), ("::", "127.0.0.1"), ("", "127.0.0.1"),
     ("127.0.0.1", "127.0.0.1"), ("localhost", "localhost")],
)  # fmt: skip
def test_clients_reach_a_wildcard_bind_through_loopback(host: str, expected: str) -> None:
    from trtbuild.server import connectable_host

    assert connectable_host(host) == expected


# -- refused before anything starts --------------------------------------------------------------
def _python_model_repo(repo: Path, model: str = "echo", parameters: str = "") -> Path:
    (repo / model / "1").mkdir(parents=True)
    (repo / model / "config.pbtxt").write_text(
        f'name: "{model}"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [{ name: "X" data_type: TYPE_INT32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_INT32 dims: [1] }]\n' + parameters
    )
    (repo / model / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    return repo


def test_stop_passes_tritonservers_exit_timeout(tmp_path: Path) -> None:
    install = TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), None, {})
    assert "--exit-timeout-secs=3" in server_argv(ServeSpec(repo=tmp_path), install)
    spec = ServeSpec(repo=tmp_path, exit_timeout=30)
    assert "--exit-timeout-secs=30" in server_argv(spec, install)


def test_two_endpoints_on_one_port_are_refused(tmp_path: Path) -> None:
    spec = ServeSpec(repo=tmp_path, http_port=9100, grpc_port=9100, metrics_port=0)
    with pytest.raises(
        SpecError, match=r"^--http-port and --grpc-port are both 9100; give each endpoint its own"
    ):
        resolve_ports(spec)


def test_a_port_in_use_is_refused_not_replaced(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = ServeSpec(repo=tmp_path, http_port=0, grpc_port=port, metrics_port=0)
        with pytest.raises(
            SpecError,
            match=rf"^--grpc-port {port}: port {port} on 127.0.0.1 is already in use .*"
            r"pass --grpc-port with a free port \(0 picks one\)$",
        ):
            resolve_ports(spec)
    resolved = resolve_ports(spec)  # free again: kept as asked
    assert resolved.grpc_port == port and port not in (resolved.http_port, resolved.metrics_port)


@pytest.mark.parametrize(
    ("host", "message"),
    [("no such host!", r"^--host 'no such host!' is not an IP address or a name this machine "
                       r"resolves .*127\.0\.0\.1 \(loopback\), or 0\.0\.0\.0"),
     ("192.0.2.1", r"^--host 192\.0\.2\.1 is not an address of this machine")],
)  # fmt: skip
def test_a_host_this_machine_cannot_bind_is_refused(
    tmp_path: Path, host: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        resolve_ports(ServeSpec(repo=tmp_path, host=host, http_port=9000, grpc_port=0))


def test_a_non_executable_tritonserver_is_a_user_error(tmp_path: Path) -> None:
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    with pytest.raises(SpecError, match=r"--tritonserver .* is not executable; pass the"):
        find_tritonserver(binary)


@pytest.mark.parametrize(
    ("where", "message"),
    [("repo", r"^the repository path '.*' contains '\$'"),
     ("model", r"^the model directory name 'my model' contains ' '"),
     ("param", r"^model echo: parameter model_dir '/srv/\"engine\"' contains '\"'")],
)  # fmt: skip
def test_serve_refuses_paths_that_reach_the_stubs_shell(tmp_path: Path, where: str, message: str) -> None:  # fmt: skip
    param = 'parameters: { key: "model_dir" value: { string_value: "/srv/\\"engine\\"" } }\n'
    repo = _python_model_repo(
        tmp_path / ("r$(touch MARKER)" if where == "repo" else "repo"),
        model="my model" if where == "model" else "echo",
        parameters=param if where == "param" else "",
    )
    with pytest.raises(SpecError, match=message):
        TritonServer(ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0))
    assert not list(tmp_path.rglob("MARKER")) and not (Path.cwd() / "MARKER").exists()


def test_unsafe_path_findings_name_the_model(tmp_path: Path) -> None:
    from trtbuild._safepath import first_unsafe_character, unsafe_path_findings

    repo = _python_model_repo(
        tmp_path / "répo",
        parameters='parameters: { key: "tokenizer_dir" value: { string_value: "/a b" } }\n',
    )
    findings = unsafe_path_findings(repo)
    assert [f.model for f in findings] == ["repository", "echo"]
    assert "contains 'é'" in findings[0].message and "contains ' '" in findings[1].message
    assert all("move or rename it" in f.fix and f.severity == "error" for f in findings)
    assert first_unsafe_character("/srv/a-b_c.d+e=f@g,h:i%j/K9") is None
    assert [first_unsafe_character(p) for p in ("/a b", "/a$b", "/a'b", "/a\nb", "/ü", "/a;b")] == [
        " ", "$", "'", "\n", "ü", ";"]  # fmt: skip
