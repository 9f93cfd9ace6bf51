"""Run tritonserver: find it, set up its Python backend, start it, wait until ready, stop it.

``TritonServer`` is a context manager. It starts tritonserver in its own process group (so the
Python-backend stubs and, for TP x PP > 1, the MPI ranks stop with it), polls readiness *and* the
process, and on failure raises with the last log lines. It binds 127.0.0.1 unless told otherwise.

The tritonserver binary comes from ``--tritonserver``, then PATH, then the ``nvidia-pytriton``
wheel (Triton 2.51 with the Python backend, CPU or GPU). For the wheel, the stub built for the
running Python is copied next to the backend library, and the environment is arranged the way the
stub needs: it embeds its own interpreter, finds it through ``python3`` on PATH (not PYTHONPATH),
and needs this interpreter's libpython on the library path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from trtbuild import proc
from trtbuild.errors import ServerNotReady, ToolNotFound, TrtbuildError
from trtbuild.specs import ServeSpec

LOG_TAIL = 50


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the binary's own default (/opt/tritonserver/backends)
    env: dict[str, str]


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    """Locate tritonserver and what it needs to run the Python backend."""
    if explicit is not None:
        return TritonInstall(Path(explicit), None, {})
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None, {})
    wheel = _pytriton_root()
    if wheel is not None:
        return TritonInstall(wheel / "bin" / "tritonserver", wheel / "backends", _python_env())
    raise ToolNotFound(
        "tritonserver",
        "Install trtbuild's dependencies (make setup: the nvidia-pytriton wheel carries one), run "
        "inside nvcr.io/nvidia/tritonserver:<tag>-py3, or pass --tritonserver PATH.",
    )


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        return None
    _install_stub(root)
    return root


def _install_stub(root: Path) -> None:
    """Put the Python-backend stub for this interpreter's version next to libtriton_python.so."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    dst = root / "backends" / "python" / "triton_python_backend_stub"
    if not src.is_file():
        raise ToolNotFound(
            f"the Triton Python-backend stub for Python {version}",
            "nvidia-pytriton 0.7.0 ships stubs for Python 3.8-3.13; use one of those.",
        )
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(".tmp")
        shutil.copy2(src, tmp)
        tmp.replace(dst)


def _python_env() -> dict[str, str]:
    """PATH with this interpreter's bin first; its libpython dir on LD_LIBRARY_PATH."""
    bin_dir = str(Path(sys.executable).parent)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{libdir}{os.pathsep}{ld}" if ld else libdir,
    }


def connectable_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (a wildcard: loopback)."""
    try:
        wildcard = host == "" or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        wildcard = False
    return "127.0.0.1" if wildcard else host


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def resolve_ports(spec: ServeSpec) -> ServeSpec:
    """Replace port 0 with free ports (three distinct ones)."""
    taken: set[int] = set()
    ports = {}
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(spec, name)
        while port == 0 or port in taken:
            port = free_port(connectable_host(spec.host))
        taken.add(port)
        ports[name] = port
    return spec.model_copy(update=ports)


def server_argv(spec: ServeSpec, install: TritonInstall) -> list[str]:
    argv = [
        str(install.binary),
        f"--model-repository={Path(spec.repo).resolve()}",
        f"--http-address={spec.host}",
        f"--http-port={spec.http_port}",
        f"--grpc-address={spec.host}",
        f"--grpc-port={spec.grpc_port}",
        f"--metrics-address={spec.host}",
        f"--metrics-port={spec.metrics_port}",
        "--disable-auto-complete-config",
        f"--log-verbose={spec.log_verbose}",
    ]
    if install.backend_dir is not None:
        argv.append(f"--backend-directory={install.backend_dir}")
    if spec.load_models is not None:
        argv.append("--model-control-mode=explicit")
        argv += [f"--load-model={name}" for name in spec.load_models]
    return argv


# -- TensorRT-LLM launch modes (issue 5) ----------------------------------------------------------
@dataclass(frozen=True)
class RepoLaunch:
    """How a repository must be launched: what TensorRT-LLM's ``launch_triton_server.py`` does.

    ``mode``: ``single`` (one tritonserver), ``leader`` (TensorRT-LLM C++ backend with TP x PP > 1:
    ``mpirun`` with one tritonserver per rank; ranks above 0 load only the core model),
    ``orchestrator`` (C++ backend with several instances pinned by ``gpu_device_ids``: one
    tritonserver under ``mpirun -n 1``; the backend spawns the workers) or ``mpi`` (the llmapi
    model with TP x PP > 1: one tritonserver under ``mpirun -n 1``; the LLM API spawns its MPI
    workers).
    """

    mode: str = "single"
    world_size: int = 1
    core_model: str = "tensorrt_llm"
    gpus: tuple[int, ...] = ()


def repo_launch(repo: Path) -> RepoLaunch:
    """Read the launch mode from trtbuild's spec beside the repository, or, for a hand-written
    repository, from the engine ``config.json`` its ``tensorrtllm`` model points at."""
    repo = Path(repo)
    try:
        return _repo_launch(repo)
    except (TrtbuildError, ValueError, KeyError):  # unreadable: tritonserver reports it
        return RepoLaunch()


def _repo_launch(repo: Path) -> RepoLaunch:
    from trtbuild.repository import SPEC_FILE, load_configs, read_repo_spec

    if (repo / SPEC_FILE).is_file():
        spec = read_repo_spec(repo)
        world = spec.tp * spec.pp
        gpus = tuple(g for group in spec.gpu_device_ids for g in group)
        if spec.runtime == "tensorrtllm":
            if spec.gpu_device_ids:
                return RepoLaunch("orchestrator", world, gpus=gpus)
            return RepoLaunch("leader" if world > 1 else "single", world)
        if spec.runtime == "llmapi" and world > 1 and not spec.gpu_device_ids:
            return RepoLaunch("mpi", world)
        return RepoLaunch("single", world, gpus=gpus)
    from trtbuild.repo import read_engine_config

    for name, config in load_configs(repo).items():
        if config.backend != "tensorrtllm":
            continue
        path = config.parameters["gpt_model_path"].string_value
        engine = read_engine_config(Path(path)) if path and Path(path).is_dir() else None
        mapping = ((engine or {}).get("pretrained_config") or {}).get("mapping") or {}
        world = int(mapping.get("world_size", 1))
        return RepoLaunch("leader" if world > 1 else "single", world, core_model=name)
    return RepoLaunch()


def launch_argv(
    spec: ServeSpec, install: TritonInstall, launch: RepoLaunch, *, mpirun: str = "mpirun"
) -> tuple[list[str], dict[str, str]]:
    """The command (and extra environment) that serves ``spec.repo`` the way ``launch`` says."""
    shm = "--backend-config=python,shm-region-prefix-name=prefix{}_"
    if launch.mode == "single":
        return server_argv(spec, install), {}
    if launch.mode in ("mpi", "orchestrator"):
        argv = [*server_argv(spec, install), shm.format(0)]
        env: dict[str, str] = {}
        if launch.mode == "orchestrator":
            env = {"TRTLLM_ORCHESTRATOR": "1", "TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES": "1"}
            argv += ["--pinned-memory-pool-byte-size=0", "--enable-peer-access=false"]
            argv += [f"--cuda-memory-pool-byte-size={gpu}:0" for gpu in launch.gpus]
        return [mpirun, "--allow-run-as-root", "-n", "1", *argv], env
    # leader mode: one tritonserver per rank; only rank 0 loads the pre/post/ensemble/BLS models
    argv = [mpirun, "--allow-run-as-root"]
    workers = spec.model_copy(update={"load_models": [launch.core_model]})
    for rank in range(launch.world_size):
        if rank:
            argv.append(":")
        rank_argv = server_argv(spec if rank == 0 else workers, install)
        argv += ["-n", "1", *rank_argv, shm.format(rank)]
    return argv, {}


def _find_mpirun(launch: RepoLaunch) -> str:
    found = shutil.which("mpirun")
    if found is None:
        raise ToolNotFound(
            "mpirun",
            f"This repository needs MPI ({launch.mode} mode, world size {launch.world_size}): "
            "serve it inside nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3, which has it.",
        )
    return found


class TritonServer:
    """``with TritonServer(spec) as server:`` starts tritonserver and waits until it is ready."""

    def __init__(self, spec: ServeSpec, *, quiet: bool = False) -> None:
        from trtbuild.repository import preflight

        # every config parses, and the engine suits this GPU and TensorRT-LLM (or --force):
        # checked here so that every start, from the CLI or the library, goes through the gate
        self.warnings = preflight(Path(spec.repo), force=spec.force)
        self.spec = resolve_ports(spec)
        self.quiet = quiet
        self.install = find_tritonserver(spec.tritonserver)
        self.launch = repo_launch(Path(spec.repo))
        mpirun = _find_mpirun(self.launch) if self.launch.mode != "single" else "mpirun"
        self.argv, self.launch_env = launch_argv(
            self.spec, self.install, self.launch, mpirun=mpirun
        )
        self._proc: proc.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = Path(spec.log_file) if spec.log_file else None

    # endpoints (reachable from this machine)
    @property
    def _client_host(self) -> str:
        return connectable_host(self.spec.host)

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.spec.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.spec.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.spec.metrics_port}/metrics"

    def start(self) -> TritonServer:
        if self.log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**self.install.env, **self.launch_env}
        self._proc = proc.spawn(self.argv, env=env, log=self._log, quiet=self.quiet)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.spec.startup_timeout)
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise ServerNotReady(
                    f"tritonserver exited with code {code} before it was ready (log: {self.log_path})",
                    details=self.log_tail(),
                )
            if _http_ok(url):
                return
            time.sleep(0.2)
        raise ServerNotReady(
            f"tritonserver was not ready after {timeout or self.spec.startup_timeout:.0f} s "
            f"(log: {self.log_path})",
            details=self.log_tail(),
        )

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return proc.tail(self.log_path.read_text(errors="replace"), lines)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> int | None:
        code = None
        if self._proc is not None:
            code = proc.stop_group(self._proc, grace=self.spec.shutdown_grace)
            self._proc = None
            if code == -signal.SIGKILL:
                print(
                    f"warning: tritonserver did not stop within {self.spec.shutdown_grace:.0f} s "
                    f"of SIGTERM and was killed (log: {self.log_path})",
                    file=sys.stderr,
                )
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback health URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration (so `with` blocks unwind)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_forever(spec: ServeSpec) -> None:
    """``trtbuild serve``: start, print the endpoints, run until Ctrl-C/SIGTERM, stop cleanly."""
    server = TritonServer(spec)
    for problem in server.warnings:
        print(f"warning (--force): {problem}", file=sys.stderr)
    with _stop_on_sigterm():
        try:
            with server:
                print(f"HTTP     http://{server.http_url}", flush=True)
                print(f"gRPC     {server.grpc_url}", flush=True)
                print(f"metrics  {server.metrics_url}", flush=True)
                if server.launch.mode != "single":
                    print(
                        f"MPI      {server.launch.mode} mode, world size "
                        f"{server.launch.world_size}",
                        file=sys.stderr,
                        flush=True,
                    )
                print(f"log      {server.log_path}", file=sys.stderr, flush=True)
                print("Serving. Ctrl-C to stop.", file=sys.stderr, flush=True)
                while server.running():
                    time.sleep(0.5)
                raise ServerNotReady("tritonserver exited unexpectedly", details=server.log_tail())
        except KeyboardInterrupt:
            print("Stopping tritonserver...", file=sys.stderr, flush=True)
