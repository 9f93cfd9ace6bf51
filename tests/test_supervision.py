"""Supervision of a real tritonserver: a dead model never looks healthy, the server group dies with
`trtbuild serve` (however serve ends), and shutdown takes seconds, not Triton's 30.

What Triton 2.51 does, found while writing these: after `kill -9` of a model's Python-backend
stub, /v2/health/ready and /v2/models/<m>/ready keep answering 200 while every request to the
model fails ("Stub process 'tensorrt_llm_0_0' is not healthy"), and tritonserver leaves the stub a
zombie until the next request; when tritonserver itself is SIGKILLed, its stubs notice the dead
parent and exit within about a second, but a SIGKILLed `trtbuild serve` left tritonserver running.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from trtbuild.errors import ModelDied
from trtbuild.server import TritonServer
from trtbuild.specs import ServeSpec

pytestmark = pytest.mark.server
CLI = Path(sys.executable).parent / "trtbuild"
STUB = "triton_python_backend_stub"
GONE_WITHIN_S = 10.0


@pytest.fixture(scope="session")
def small_repo(portable_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small portable-runtime repository of its own (the shared `served` server stays intact)."""
    from trtbuild.render import render_repository
    from trtbuild.specs import ServingLimits
    from trtbuild.tiny_model import repo_spec

    limits = ServingLimits(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    spec = repo_spec(portable_engine, limits=limits)
    return render_repository(spec, tmp_path_factory.mktemp("supervised") / "repository")


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):  # refused, reset: not ready
        return False


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _ps_serving(repo: Path) -> list[str]:
    """`ps` lines of live processes that name ``repo`` (tritonserver and its stubs do)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if str(repo) in line and line.split()[1][0] != "Z" and "pytest" not in line
    ]


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while _running(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _running(processes)


class Serve:
    """`trtbuild serve REPO` as a real subprocess, on free ports."""

    def __init__(self, repo: Path, *extra: str) -> None:
        self.repo = repo
        self.popen = subprocess.Popen(
            [str(CLI), "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        line = self.popen.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("HTTP"):
            self.popen.kill()
            raise AssertionError(f"serve did not start: {self.popen.communicate()[1]}")
        self.http = line.split()[-1]
        self.tree = psutil.Process(self.popen.pid).children(recursive=True)
        self.tritonserver = next(p for p in self.tree if p.name() == "tritonserver")

    def stub(self, model: str) -> psutil.Process:
        return next(p for p in self.tree if p.name() == STUB and f"/{model}/1/" in p.cmdline()[1])

    def finish(self, timeout: float) -> tuple[int, str]:
        _, err = self.popen.communicate(timeout=timeout)
        return self.popen.returncode, err

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate()
        for p in _running(self.tree):
            p.kill()


@pytest.fixture
def serve(small_repo: Path) -> Iterator[Serve]:
    server = Serve(small_repo)
    yield server
    server.close()


def test_a_killed_model_stub_ends_serve_naming_the_model_and_the_signal(serve: Serve) -> None:
    assert _ready(serve.http)
    stub = serve.stub("tensorrt_llm")
    os.kill(stub.pid, signal.SIGKILL)
    killed = time.monotonic()
    while _ready(serve.http):  # Triton alone would say 200 forever
        assert time.monotonic() - killed < GONE_WITHIN_S, "still ready after the stub died"
        time.sleep(0.2)
    code, err = serve.finish(timeout=GONE_WITHIN_S - (time.monotonic() - killed))
    assert time.monotonic() - killed < GONE_WITHIN_S
    assert code == 1, err
    error = next(line for line in err.splitlines() if line.startswith("Error:"))
    assert error.startswith(
        f"Error: model tensorrt_llm died: its Python-backend stub (pid {stub.pid}, instance "
        "tensorrt_llm_0_0) was killed by SIGKILL (signal 9); every request to it would fail, so "
        "tritonserver was stopped"
    ), error
    assert "Serving." in err.split(error)[0]  # the log tail follows the one-line error
    assert _running(serve.tree) == [] and _ps_serving(serve.repo) == []


def test_a_sigkilled_serve_takes_tritonserver_and_every_stub_with_it(serve: Serve) -> None:
    assert sum(p.name() == STUB for p in serve.tree) == 4
    serve.popen.kill()  # nothing of trtbuild runs after this: the watchdog acts alone
    serve.popen.wait()
    assert _wait_gone(serve.tree, timeout=25) == []  # SIGTERM; SIGKILL after the 20 s grace
    assert _ps_serving(serve.repo) == [] and not _ready(serve.http)


def test_sigterm_with_an_idle_keepalive_connection_stops_in_seconds(serve: Serve) -> None:
    host, port = serve.http.removeprefix("http://").split(":")
    keepalive = http.client.HTTPConnection(host, int(port), timeout=10)
    keepalive.request("GET", "/v2/health/ready")
    response = keepalive.getresponse()
    response.read()
    assert response.status == 200 and not response.will_close  # the connection stays open
    started = time.monotonic()
    serve.popen.send_signal(signal.SIGTERM)
    code, err = serve.finish(timeout=30)
    took = time.monotonic() - started
    keepalive.close()
    assert took < 5, f"stopping took {took:.1f} s (Triton's own exit timeout is 30 s)\n{err}"
    assert code == 0, err
    assert "Stopping tritonserver (SIGTERM)..." in err
    assert "exit timeout (3 s) expired with connections or requests still open" in err
    assert "did not stop within" not in err
    assert _running(serve.tree) == [] and _ps_serving(serve.repo) == []


def test_tritonserver_killed_from_outside_is_reported_as_what_happened(serve: Serve) -> None:
    regions = [Path("/dev/shm") / p.cmdline()[2] for p in serve.tree if p.name() == STUB]
    assert len(regions) == 4 and all(r.exists() for r in regions)
    serve.tritonserver.kill()
    code, err = serve.finish(timeout=GONE_WITHIN_S)
    assert code == 1, err
    assert (
        "Error: tritonserver ended unexpectedly (killed by SIGKILL (signal 9)); nothing asked it "
        "to stop" in err
    )
    assert "SIGTERM" not in err and "did not stop within" not in err  # no escalation happened
    assert _wait_gone(serve.tree, timeout=5) == [] and _ps_serving(serve.repo) == []
    assert [r for r in regions if r.exists()] == []  # what a SIGKILLed tritonserver leaves


# -- the library: TritonServer watches its models too ------------------------------------------
def _spec(repo: Path, **extra: object) -> ServeSpec:
    return ServeSpec(repo=repo, http_port=0, grpc_port=0, metrics_port=0, **extra)  # type: ignore[arg-type]


def _post(url: str) -> object:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
        body = resp.read()
    return json.loads(body) if body else None


def test_the_library_stops_a_server_whose_model_died(small_repo: Path) -> None:
    with pytest.raises(ModelDied, match=r"model preprocessing died: .* killed by SIGKILL"):  # noqa: SIM117
        with TritonServer(_spec(small_repo), quiet=True) as server:
            stub = next(s for s in server._stubs.values() if s.model == "preprocessing")
            os.kill(stub.pid, signal.SIGKILL)
            deadline = time.monotonic() + GONE_WITHIN_S
            while server.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not server.running()
            assert not _ready(f"http://{server.http_url}")
    assert server.failure is not None and server.failure.exit_code == 1


def test_a_model_unloaded_on_purpose_is_not_a_death(small_repo: Path) -> None:
    spec = _spec(small_repo, load_models=["preprocessing", "postprocessing"])
    with TritonServer(spec, quiet=True) as server:
        base = f"http://{server.http_url}/v2/repository"
        _post(f"{base}/models/preprocessing/unload")
        time.sleep(3 * 0.5 + 2.0)  # several looks at the stubs, one at readiness
        index = {m["name"]: m for m in _post(f"{base}/index")}  # type: ignore[union-attr]
        assert index["preprocessing"]["state"] == "UNAVAILABLE"
        assert server.running() and server.failure is None
        stub = next(s for s in server._stubs.values() if s.model == "postprocessing")
        os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + GONE_WITHIN_S
        while server.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.failure is not None
        assert server.failure.message.startswith("model postprocessing died:")
        server.failure = None  # seen; leave the block without raising it
