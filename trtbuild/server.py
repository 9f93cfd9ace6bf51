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
import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from trtbuild import _stub_env, proc
from trtbuild._safepath import check_repository_paths, check_safe_path
from trtbuild.errors import (
    ModelDied,
    ServerNotReady,
    SpecError,
    ToolNotFound,
    TrtbuildError,
    first_error,
)
from trtbuild.files.model_config import load_configs
from trtbuild.files.repo_spec import SPEC_FILE, read_repo_spec
from trtbuild.files.trtllm import read_engine_config
from trtbuild.render import preflight
from trtbuild.specs import ServeSpec
from trtbuild.vocab import TP_ADDR_ENV, TP_PORT_ENV

LOG_TAIL = 50
# run by name, as upstream's launch script runs it: Open MPI takes an absolute path for
# ``--prefix``, which puts that prefix's ``bin`` first on the ranks' PATH, and the stubs then run
# the system ``python3`` instead of the one trtbuild gives them
MPIRUN = "mpirun"
WATCH_INTERVAL_S = 0.5  # how often the model watcher looks at the stubs
READY_POLL_S = 2.0  # how often it asks every model's /v2/models/<name>/ready
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the binary's own default (/opt/tritonserver/backends)
    env: dict[str, str]


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    """Locate tritonserver and what it needs to run the Python backend."""
    if explicit is not None:
        binary = Path(explicit)
        if not binary.is_file():
            raise ToolNotFound(
                f"--tritonserver {binary}", "Pass the path of the tritonserver binary."
            )
        if not os.access(binary, os.X_OK):
            raise SpecError(
                f"--tritonserver {binary} is not executable; pass the tritonserver binary "
                f"(or chmod +x {binary} if it is one)"
            )
        return TritonInstall(binary, None, {})
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


def _bind_address(host: str) -> tuple[socket.AddressFamily, str]:
    """The address family and address ``host`` binds to; a bad host is a ``SpecError``."""
    try:
        infos = socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SpecError(
            f"--host {host!r} is not an IP address or a name this machine resolves ({reason}); "
            "pass an address of this machine: 127.0.0.1 (loopback), or 0.0.0.0 (every interface)"
        ) from exc
    family, _, _, _, address = infos[0]
    return family, str(address[0])


def _probe(family: socket.AddressFamily, address: str, port: int) -> None:
    """Bind (``address``, ``port``) the way a server would; raise ``OSError`` if it cannot."""
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        s.bind((address, port))


def free_port(host: str = "127.0.0.1") -> int:
    family, address = _bind_address(host)
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


PORT_FLAGS = {
    "http_port": "--http-port",
    "grpc_port": "--grpc-port",
    "metrics_port": "--metrics-port",
}


def resolve_ports(spec: ServeSpec) -> ServeSpec:
    """Check the host and ports, and replace port 0 with free ports.

    Refused (``SpecError``, before anything starts), never silently replaced: a host this machine
    cannot bind, two endpoints on one port, and a port something already listens on.
    """
    family, address = _bind_address(spec.host)
    explicit: dict[int, str] = {}
    for name, flag in PORT_FLAGS.items():
        port = getattr(spec, name)
        if port == 0:
            continue
        if port in explicit:
            raise SpecError(
                f"{explicit[port]} and {flag} are both {port}; give each endpoint its own port "
                "(0 picks a free one)"
            )
        explicit[port] = flag
    for port, flag in explicit.items():
        try:
            _probe(family, address, port)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SpecError(
                    f"--host {spec.host} is not an address of this machine; pass one of its "
                    "addresses: 127.0.0.1 (loopback), or 0.0.0.0 (every interface)"
                ) from exc
            if exc.errno == errno.EADDRINUSE:
                raise SpecError(
                    f"{flag} {port}: port {port} on {spec.host} is already in use (another "
                    f"server?); stop that, or pass {flag} with a free port (0 picks one)"
                ) from exc
            raise SpecError(
                f"{flag} {port}: cannot bind {spec.host}:{port} ({exc.strerror or exc}); pass "
                f"another {flag} (0 picks a free one)"
            ) from exc
    taken = set(explicit)
    ports = {}
    for name in PORT_FLAGS:
        port = getattr(spec, name)
        while port == 0 or (port in taken and getattr(spec, name) == 0):
            port = free_port(spec.host)
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
        f"--exit-timeout-secs={spec.exit_timeout}",
    ]
    if spec.latency_histograms:
        argv.append("--metrics-config=histogram_latencies=true")
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

    ``mode``: ``single`` (one tritonserver), ``leader`` (TensorRT-LLM C++ backend with TP x PP > 1,
    or the portable runtime split across processes (``portable``): ``mpirun`` with one
    tritonserver per rank; ranks above 0 load only the core model),
    ``orchestrator`` (C++ backend with several instances pinned by ``gpu_device_ids``: one
    tritonserver under ``mpirun -n 1``; the backend spawns the workers) or ``mpi`` (the llmapi
    model with TP x PP > 1: one tritonserver under ``mpirun -n 1``; the LLM API spawns its MPI
    workers).
    """

    mode: str = "single"
    world_size: int = 1
    core_model: str = "tensorrt_llm"
    gpus: tuple[int, ...] = ()
    portable: bool = False  # the portable runtime's rank group (its own rendezvous, no ports > 0)


def repo_launch(repo: Path) -> RepoLaunch:
    """Read the launch mode from trtbuild's spec beside the repository, or, for a hand-written
    repository, from the engine ``config.json`` its ``tensorrtllm`` model points at."""
    repo = Path(repo)
    try:
        return _repo_launch(repo)
    except (TrtbuildError, ValueError, KeyError):  # unreadable: tritonserver reports it
        return RepoLaunch()


def _repo_launch(repo: Path) -> RepoLaunch:

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
        if spec.runtime == "torch" and world > 1:
            return RepoLaunch("leader", world, portable=True)
        return RepoLaunch("single", world, gpus=gpus)

    for name, config in load_configs(repo).items():
        if config.backend != "tensorrtllm":
            continue
        path = config.parameters["gpt_model_path"].string_value
        engine = read_engine_config(Path(path)) if path and Path(path).is_dir() else None
        world = engine.mapping.world_size if engine is not None else 1
        return RepoLaunch("leader" if world > 1 else "single", world, core_model=name)
    return RepoLaunch()


def launch_argv(
    spec: ServeSpec,
    install: TritonInstall,
    launch: RepoLaunch,
    *,
    mpirun_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The command (and extra environment) that serves ``spec.repo`` the way ``launch`` says.

    ``mpirun_args`` go before the first rank (e.g. ``--host leader:8,worker-1:8`` when the ranks
    span nodes: Open MPI fills each host's slots in rank order)."""
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
        return [MPIRUN, "--allow-run-as-root", *mpirun_args, "-n", "1", *argv], env
    # leader mode: one tritonserver per rank; only rank 0 loads the pre/post/ensemble/BLS models
    argv = [MPIRUN, "--allow-run-as-root", *mpirun_args]
    env = {}
    if launch.portable:  # Open MPI passes these to every rank (-x: also on other hosts)
        env = {TP_ADDR_ENV: "127.0.0.1", TP_PORT_ENV: str(spec.rendezvous_port)}
        argv += [part for name in env for part in ("-x", name)]
    for rank in range(launch.world_size):
        if rank:
            argv.append(":")
        argv += ["-n", "1", *rank_argv(spec, install, launch, rank), shm.format(rank)]
    return argv, env


def rank_argv(spec: ServeSpec, install: TritonInstall, launch: RepoLaunch, rank: int) -> list[str]:
    """One rank's tritonserver in leader mode. Ranks above 0 load only the core model (which
    never finishes loading: it follows rank 0); the portable runtime's also open no endpoints,
    so that no rank can take rank 0's ports."""
    if rank == 0:
        return server_argv(spec, install)
    argv = server_argv(spec.model_copy(update={"load_models": [launch.core_model]}), install)
    if launch.portable:
        argv += ["--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"]
    return argv


def _require_mpirun(launch: RepoLaunch) -> None:
    """Refuse, naming where to get it, when ``mpirun`` is not on PATH."""
    if shutil.which(MPIRUN) is None:
        where = (
            "install Open MPI (Debian: apt-get install openmpi-bin; make setup does it as root)"
            if launch.portable
            else "serve it inside nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3, which has it"
        )
        raise ToolNotFound(
            "mpirun",
            f"This repository needs MPI ({launch.mode} mode, world size {launch.world_size}): "
            f"{where}.",
        )


# -- watching the models ------------------------------------------------------------------------
@dataclass(frozen=True)
class Stub:
    """A Python-backend stub: one per instance of a Python model, a child of tritonserver."""

    pid: int
    model: str
    instance: str
    process: Any  # psutil.Process (remembers the start time: a reused pid is not this stub)
    shm_region: str = ""  # its shared-memory region (/dev/shm/<name>), which Triton removes

    @property
    def rank(self) -> int | None:
        """The MPI rank of its tritonserver, from the region's ``prefix{rank}_`` (leader mode)."""
        match = re.match(r"prefix(\d+)_", self.shm_region)
        return int(match[1]) if match else None


def find_stubs(root_pid: int) -> list[Stub]:
    """The Python-backend stubs under ``root_pid`` (tritonserver, or mpirun and its ranks).

    Triton starts each one as ``bash -c "exec <stub> <repo>/<model>/<version>/model.py <shm>
    ... <instance name> ..."``, so the model is the third-to-last part of its second argument.
    """
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    stubs = []
    for child in children:
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if len(argv) < 2 or not argv[0].endswith(STUB):
            continue
        model = Path(argv[1]).parent.parent.name
        instance = argv[8] if len(argv) > 8 else model
        region = argv[2] if len(argv) > 2 and "/" not in argv[2] else ""
        stubs.append(Stub(child.pid, model, instance, child, region))
    return stubs


def _ended(process: Any) -> tuple[bool, int | None]:
    """(ended, returncode) of a process that is not our child; returncode None when unknown."""
    import psutil

    try:
        if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            return False, None
    except psutil.NoSuchProcess:
        return True, None
    if not process.is_running():  # reaped (and maybe its pid reused)
        return True, None
    return True, proc.zombie_returncode(process.pid)


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "exited (tritonserver collected its status first)"
    if code < 0:
        return f"was {proc.describe_returncode(code)}"
    return f"exited with status {code}"


def _model_ready(http_url: str, model: str) -> bool | None:
    """``/v2/models/<model>/ready``: True, False (an answer other than 200), None (no answer)."""
    url = f"http://{http_url}/v2/models/{model}/ready"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback health URL
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def _repository_index(http_url: str) -> dict[str, tuple[str, str]] | None:
    """{model: (state, reason)} from ``/v2/repository/index``; None when it cannot be read."""
    request = urllib.request.Request(
        f"http://{http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as resp:  # noqa: S310 - loopback
            entries = json.loads(resp.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return None
    if not isinstance(entries, list):
        return None
    return {
        str(e.get("name")): (str(e.get("state", "")), str(e.get("reason", "")))
        for e in entries
        if isinstance(e, dict)
    }


class TritonServer:
    """``with TritonServer(spec) as server:`` starts tritonserver and waits until it is ready.

    Once ready, a watcher thread (``watch=True``) looks every half second at each model's
    Python-backend stub and every two seconds at each model's readiness. Triton 2.51 keeps
    answering ready (server and model) after a stub died, while every request to that model
    fails; so when a stub dies (or a model goes unready) the watcher stops the whole group,
    ``failure`` says which model died and how, and ``running()`` turns False. A model unloaded on
    purpose (explicit model control) is not a failure.

    A ``proc.Watchdog`` stops the group if this process dies without stopping it (even SIGKILL).
    """

    def __init__(self, spec: ServeSpec, *, quiet: bool = False, watch: bool = True) -> None:

        repo = Path(spec.repo)
        # Triton's Python backend hands these paths to `bash -c` unquoted: refuse unsafe ones
        check_safe_path(repo.resolve(), "the repository path")
        # every config parses, and the engine suits this GPU and TensorRT-LLM (or --force):
        # checked here so that every start, from the CLI or the library, goes through the gate
        try:
            self.warnings = preflight(repo, force=spec.force)  # a bad config is a SpecError
        except ValueError as exc:  # not UTF-8, trtbuild-repo.json not JSON or not a spec
            raise SpecError(
                f"{repo} cannot be read ({first_error(exc)}); fix its config.pbtxt and "
                "trtbuild-repo.json files, or render it again with 'trtbuild repo'"
            ) from exc
        check_repository_paths(repo)
        self.install = find_tritonserver(spec.tritonserver)
        if self.install.backend_dir is not None:
            check_safe_path(self.install.backend_dir, "tritonserver's backend directory")
            # the wheel's stub (Triton 2.51) runs the Python we put on PATH: check it, or build one
            # (only to serve: --dry-run prints the command and starts nothing, not even a probe)
            if not spec.dry_run:
                env = _stub_env.prepare(repo, self.install.env)
                self.install = TritonInstall(self.install.binary, self.install.backend_dir, env)
        self.spec = resolve_ports(spec)
        self.quiet = quiet
        self.watch = watch
        self.launch = repo_launch(repo)
        if self.launch.portable and self.spec.rendezvous_port == 0:
            taken = {self.spec.http_port, self.spec.grpc_port, self.spec.metrics_port}
            port = free_port()
            while port in taken:
                port = free_port()
            self.spec = self.spec.model_copy(update={"rendezvous_port": port})
        if self.launch.mode != "single" and not spec.dry_run:  # a dry run needs no MPI here
            _require_mpirun(self.launch)
        self.argv, self.launch_env = launch_argv(self.spec, self.install, self.launch)
        self._proc: proc.Popen[bytes] | None = None
        self._watchdog: proc.Watchdog | None = None
        self._log: IO[bytes] | None = None
        self.log_path = Path(spec.log_file) if spec.log_file else None
        self.failure: ModelDied | None = None  # set by the watcher when a model died
        self.stopped: proc.Stopped | None = None  # how the last stop ended tritonserver
        self._halted = False
        self._stopping = False
        self._lock = threading.Lock()
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stubs: dict[int, Stub] = {}
        self._shm_regions: set[str] = set()
        self._ready_models: set[str] = set()
        self._next_ready_poll = 0.0

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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> TritonServer:
        made_log = self.log_path is None
        if self.log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**self.install.env, **self.launch_env}
        self._watchdog = proc.Watchdog(self.spec.shutdown_grace)
        try:
            self._proc = proc.spawn(self.argv, env=env, log=self._log, quiet=self.quiet)
        except BaseException:
            self._watchdog.release()
            self._watchdog = None
            self._log.close()
            self._log = None
            if made_log:  # nothing ran: no log to keep
                self.log_path.unlink(missing_ok=True)
                self.log_path = None
            raise
        with contextlib.suppress(OSError):  # a dead watchdog guards nothing; serving goes on
            self._watchdog.guard(self._proc.pid)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.spec.startup_timeout)
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise ServerNotReady(
                    f"tritonserver ended ({proc.describe_returncode(code)}) before it was ready "
                    f"(log: {self.log_path})",
                    details=self.log_tail(),
                )
            if _http_ok(url):
                self._start_watching()
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
        """True while tritonserver runs and no model died; when False, ``failure`` is final."""
        if self._proc is not None and self._proc.poll() is None and not self._halted:
            return True
        self.settle()  # the watcher may be stopping the group right now
        return False

    # -- the watcher
    def _start_watching(self) -> None:
        index = _repository_index(self.http_url) or {}
        self._ready_models = {name for name, (state, _) in index.items() if state == "READY"}
        self._next_ready_poll = time.monotonic() + READY_POLL_S
        self._scan_stubs()
        if self.watch and self._watcher is None:
            self._stop_watching.clear()
            self._watcher = threading.Thread(
                target=self._watch, name="trtbuild-model-watcher", daemon=True
            )
            self._watcher.start()

    def _scan_stubs(self) -> None:
        if self._proc is None:
            return
        for stub in find_stubs(self._proc.pid):
            self._stubs.setdefault(stub.pid, stub)
            if stub.shm_region:
                self._shm_regions.add(stub.shm_region)

    def _unloaded_on_purpose(self, model: str) -> bool:
        """Only explicit model control unloads a model without failing; ask the index."""
        if self.spec.load_models is None:
            return False
        state, reason = (_repository_index(self.http_url) or {}).get(model, ("READY", ""))
        if state == "UNLOADING" or (state == "UNAVAILABLE" and reason == "unloaded"):
            self._ready_models.discard(model)
            return True
        return False

    def check_models(self) -> str | None:
        """One look at the models: what died and how, or None. (tritonserver's own exit is
        ``running()``'s business.)"""
        if self._proc is None or self._proc.poll() is not None:
            return None
        self._scan_stubs()
        for pid, stub in list(self._stubs.items()):
            ended, code = _ended(stub.process)
            if not ended:
                continue
            del self._stubs[pid]
            if self._proc.poll() is not None or self._unloaded_on_purpose(stub.model):
                continue
            rank = f" (rank {stub.rank})" if self.launch.mode == "leader" else ""
            return (
                f"model {stub.model}{rank} died: its Python-backend stub (pid {pid}, instance "
                f"{stub.instance}) {_how_it_ended(code)}"
            )
        if time.monotonic() >= self._next_ready_poll:
            self._next_ready_poll = time.monotonic() + READY_POLL_S
            for model in sorted(self._ready_models):
                ready = _model_ready(self.http_url, model)
                if ready is False and not self._unloaded_on_purpose(model):
                    if self._proc.poll() is not None:
                        return None
                    return f"model {model} is no longer ready (/v2/models/{model}/ready)"
        return None

    def _watch(self) -> None:
        while not self._stop_watching.wait(WATCH_INTERVAL_S):
            try:
                problem = self.check_models()
            except Exception:  # noqa: BLE001 - a /proc race must not end the watching
                continue
            if problem is None:
                continue
            with self._lock:
                if self._stopping or self._proc is None:
                    return
                self._halted = True
                stopped = proc.stop_group(self._proc, grace=self.spec.shutdown_grace)
                self.stopped = stopped
                self.failure = ModelDied(
                    f"{problem}; every request to it would fail, so tritonserver was stopped "
                    f"({stopped.describe()}; log: {self.log_path})",
                    details=self.log_tail(),
                )
            return

    def settle(self) -> None:
        """Wait until a stop the watcher began has finished (then ``failure`` is set)."""
        with self._lock:
            pass

    # -- stopping
    def stop(self) -> int | None:
        """Stop the watcher, then tritonserver's whole group; returns its returncode."""
        with self._lock:
            self._stopping = True
        self._stop_watching.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()
        code = None
        with self._lock:
            if self._proc is not None:
                with contextlib.suppress(Exception):  # a /proc race: nothing more to learn
                    self._scan_stubs()
                stopped = proc.stop_group(self._proc, grace=self.spec.shutdown_grace)
                code = stopped.returncode
                self._proc = None
                self._remove_shm_regions()
                if not stopped.exited_before:
                    self.stopped = stopped
                    self._report(stopped)
            if self._watchdog is not None:
                self._watchdog.release()
                self._watchdog = None
            if self._log is not None:
                self._log.close()
                self._log = None
            self._stopping = False
        return code

    def _remove_shm_regions(self) -> None:
        """Triton removes its stubs' shared-memory regions when it exits; a SIGKILLed one cannot,
        so after the group is gone whatever of them is left goes (only the names its own stubs
        were given)."""
        for name in self._shm_regions:
            with contextlib.suppress(OSError):
                (Path("/dev/shm") / name).unlink()
        self._shm_regions.clear()

    def _report(self, stopped: proc.Stopped) -> None:
        """A warning for a stop that did not go as asked (a clean one says nothing)."""
        where = f"(log: {self.log_path})"
        if stopped.killed:
            message = (
                f"tritonserver did not stop within {self.spec.shutdown_grace:.0f} s of SIGTERM "
                f"and was killed {where}"
            )
        elif stopped.returncode == 0:
            return
        elif "Exit timeout expired" in self.log_tail(20):
            message = (
                f"tritonserver stopped with {proc.describe_returncode(stopped.returncode)}: its "
                f"exit timeout ({self.spec.exit_timeout} s) expired with connections or requests "
                f"still open, so models were not unloaded cleanly {where}"
            )
        else:
            message = (
                f"tritonserver ended ({proc.describe_returncode(stopped.returncode)}) after "
                f"SIGTERM {where}"
            )
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def __enter__(self) -> TritonServer:
        try:
            self.start()
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
        if self.failure is not None and exc is None:
            raise self.failure
        if self.failure is not None and exc is not self.failure:
            print(f"error: {self.failure.message}", file=sys.stderr, flush=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback health URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class _Stop(Exception):
    """SIGTERM or SIGINT arrived: stop serving."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``_Stop`` for the duration, once: the stop that follows is not
    interrupted by a second one (it takes at most the exit timeout, then the grace period)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        _ignore_stop_signals()
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_forever(spec: ServeSpec) -> None:
    """``trtbuild serve``: start, print the endpoints, run until Ctrl-C/SIGTERM, stop cleanly.

    Exits non-zero (``ModelDied`` / ``ServerNotReady``, exit 1) when a model or tritonserver dies,
    saying which and how (signal or exit status), with the log tail.
    """
    server = TritonServer(spec)
    for problem in server.warnings:
        print(f"warning (--force): {problem}", file=sys.stderr, flush=True)
    if spec.dry_run:  # the exact command, with the environment trtbuild adds; nothing runs
        print(proc.format_command(server.argv, {**server.install.env, **server.launch_env}))
        return
    received: str | None = None
    with _stop_on_signals():
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
                try:
                    while server.running():
                        time.sleep(0.2)
                except _Stop as stop:
                    received = stop.name
                    print(f"Stopping tritonserver ({received})...", file=sys.stderr, flush=True)
                else:
                    _ignore_stop_signals()  # the stop that follows must not be interrupted
                    if server.failure is not None:
                        raise server.failure
                    what = "tritonserver"
                    if server.launch.mode != "single":
                        what = f"mpirun (world size {server.launch.world_size}: a rank died)"
                    raise ServerNotReady(
                        f"{what} ended unexpectedly "
                        f"({proc.describe_returncode(server.returncode)}); nothing asked it to "
                        f"stop (log: {server.log_path})",
                        details=server.log_tail(),
                    )
        except _Stop as stop:  # during start-up: the `with` already stopped everything
            print(f"Stopped tritonserver before it was ready ({stop.name}).", file=sys.stderr)
            return
    if received is not None and server.stopped is not None:
        print(f"tritonserver {server.stopped.describe()}.", file=sys.stderr, flush=True)
