"""Bad input on every command: exit code 2, one line that names the fix, no traceback, nothing
half-written. Each case runs the real CLI entry point (``trtbuild.cli.main``)."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result


def run_main(runner: CliRunner, *args: str) -> Result:
    from trtbuild.cli import main

    @click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def entry(argv: tuple[str, ...]) -> None:
        main(list(argv))

    return runner.invoke(entry, list(args))


@dataclass
class World:
    """What the cases point at: a scratch dir, the tiny model, its portable engine."""

    tmp: Path
    model: Path
    engine: Path

    def file(self, name: str = "afile") -> Path:
        path = self.tmp / name
        path.write_text("a regular file\n")
        return path

    def config(self, **changes: object) -> Path:
        """A checkpoint directory holding only the tiny model's config.json, changed."""
        config = json.loads((self.model / "config.json").read_text())
        config.update(changes)
        directory = self.tmp / ("ckpt-" + "-".join(f"{k}{v}" for k, v in changes.items()))
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
        return directory

    def checkpoint_with_config(self, content: bytes) -> Path:
        directory = self.tmp / "broken-ckpt"
        directory.mkdir()
        (directory / "config.json").write_bytes(content)
        (directory / "model.safetensors").write_bytes(b"weights")
        return directory

    def repo(self, name: str = "repo") -> Path:
        model = self.tmp / name / "echo"
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(
            'name: "echo"\nbackend: "python"\nmax_batch_size: 1\n'
            'input [{ name: "X" data_type: TYPE_INT32 dims: [1] }]\n'
            'output [{ name: "Y" data_type: TYPE_INT32 dims: [1] }]\n'
        )
        (model / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
        return self.tmp / name

    def broken_repo(self, file: str, content: bytes) -> Path:
        repo = self.repo("broken")
        (repo / file).write_bytes(content)
        return repo


@pytest.fixture
def world(tiny_model: Path, portable_engine: Path, tmp_path: Path) -> World:
    return World(tmp_path, tiny_model, portable_engine)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


UNSAFE = "out $(touch MARKER) 'q"  # a command substitution, a space and a quote

Case = Callable[[World], list[str]]
CASES: dict[str, tuple[Case, str]] = {
    # a path under a regular file
    "repo --out under a file": (
        lambda w: ["repo", str(w.engine), "--out", f"{w.file()}/sub"],
        "afile is a file, not a directory; pick another output path"),
    "engine --out under a file": (
        lambda w: ["engine", str(w.model), "--out", f"{w.file()}/sub", "--runtime", "torch"],
        "afile is a file, not a directory; pick another output path"),
    "download --local-dir under a file": (
        lambda w: ["download", str(w.model), "--local-dir", f"{w.file()}/sub"],
        "afile is a file, not a directory; pick another output path"),
    "demo --workdir is a file": (
        lambda w: ["demo", "--workdir", str(w.file())],
        "afile is a file, not a directory; pick another output path"),
    # sizes that are zero or negative
    "plan: num_attention_heads 0": (
        lambda w: ["plan", str(w.config(num_attention_heads=0) / "config.json"), "--gpu", "h100-sxm"],
        "config.json num_attention_heads must be at least 1, got 0; fix the config"),
    "plan: num_key_value_heads 0": (
        lambda w: ["plan", str(w.config(num_key_value_heads=0)), "--gpu", "l4"],
        "config.json num_key_value_heads must be at least 1, got 0; fix the config"),
    "plan: num_attention_heads -4": (
        lambda w: ["plan", str(w.config(num_attention_heads=-4)), "--gpu", "l4"],
        "config.json num_attention_heads must be at least 1, got -4; fix the config"),
    "plan: hidden_size 0": (
        lambda w: ["plan", str(w.config(hidden_size=0)), "--gpu", "l4"],
        "invalid hidden_size: Input should be greater than or equal to 1"),
    "plan: num_hidden_layers -1": (
        lambda w: ["plan", str(w.config(num_hidden_layers=-1)), "--gpu", "l4"],
        "invalid num_layers: Input should be greater than or equal to 1"),
    "engine: num_attention_heads 0": (
        lambda w: ["engine", str(w.config(num_attention_heads=0)), "--out", str(w.tmp / "e"),
                   "--runtime", "torch"],
        "num_attention_heads must be at least 1, got 0; fix the config"),
    "engine: vocab_size 0": (
        lambda w: ["engine", str(w.config(vocab_size=0)), "--out", str(w.tmp / "e"),
                   "--runtime", "torch"],
        "invalid vocab_size: Input should be greater than or equal to 1"),
    # a checkpoint whose config.json is not JSON
    "download: config.json not JSON": (
        lambda w: ["download", str(w.checkpoint_with_config(b"{not json"))],
        "config.json is not valid JSON (Expecting property name enclosed in double quotes"),
    "download: config.json not UTF-8": (
        lambda w: ["download", str(w.checkpoint_with_config(b"\xff\xfe\x00{"))],
        "config.json is not valid JSON ('utf-8' codec can't decode byte 0xff"),
    # serving
    "serve --host that does not resolve": (
        lambda w: ["serve", str(w.repo()), "--host", "no such host!"],
        "--host 'no such host!' is not an IP address or a name this machine resolves"),
    "serve --host of another machine": (
        lambda w: ["serve", str(w.repo()), "--host", "192.0.2.7"],
        "--host 192.0.2.7 is not an address of this machine; pass one of its addresses"),
    "serve --tritonserver not executable": (
        lambda w: ["serve", str(w.repo()), "--tritonserver", str(w.file("tritonserver"))],
        "tritonserver is not executable; pass the tritonserver binary"),
    "serve --tritonserver not a program": (
        lambda w: ["serve", str(w.repo()), "--tritonserver", str(_executable(w.file("ts"))),
                   "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        "Exec format error; it is not a program this machine can run; pass the real binary"),
    "serve --http-port P --grpc-port P": (
        lambda w: ["serve", str(w.repo()), "--http-port", "9311", "--grpc-port", "9311"],
        "--http-port and --grpc-port are both 9311; give each endpoint its own port"),
    "serve --exit-timeout -1": (
        lambda w: ["serve", str(w.repo()), "--exit-timeout", "-1"],
        "invalid exit_timeout: Input should be greater than or equal to 0"),
    "serve: config.pbtxt that does not parse": (
        lambda w: ["serve", str(w.broken_repo("echo/config.pbtxt", b'name: "echo" backend: '))],
        "echo/config.pbtxt: not a valid Triton model config: "),
    "serve: config.pbtxt not UTF-8": (
        lambda w: ["serve", str(w.broken_repo("echo/config.pbtxt", b"\xff\xfe"))],
        "echo/config.pbtxt: not a valid Triton model config: it is not UTF-8 text ('utf-8' codec"),
    "serve: trtbuild-repo.json not JSON": (
        lambda w: ["serve", str(w.broken_repo("trtbuild-repo.json", b"{"))],
        "trtbuild-repo.json is not valid JSON (Expecting property name enclosed in double quotes"),
    "serve: trtbuild-repo.json a list": (
        lambda w: ["serve", str(w.broken_repo("trtbuild-repo.json", b"[]"))],
        "trtbuild-repo.json must hold a JSON object; re-render with 'trtbuild repo'"),
    "serve: trtbuild-repo.json with no spec": (
        lambda w: ["serve", str(w.broken_repo("trtbuild-repo.json", b'{"kind": "x"}'))],
        "trtbuild-repo.json holds no trtbuild spec; re-render with 'trtbuild repo'"),
    "demo --workdir the stub's shell would split": (
        lambda w: ["demo", "--workdir", str(w.tmp / "my demo")],
        "--workdir '"),
    "serve a repository at a path the stub's shell would run": (
        lambda w: ["serve", str(w.repo(UNSAFE))],
        "contains ' ', which Triton's Python backend cannot pass through its unquoted shell"),
    # check
    "check --engine that does not exist": (
        lambda w: ["check", str(w.repo()), "--engine", "/nonexistent"],
        "Invalid value for '--engine': Directory '/nonexistent' does not exist."),
    "check --engine that is a file": (
        lambda w: ["check", str(w.repo()), "--engine", str(w.file())],
        "Invalid value for '--engine': Directory"),
    # repo paths that would reach the stub's shell
    "repo --out with $( a space and a quote": (
        lambda w: ["repo", str(w.engine), "--out", str(w.tmp / UNSAFE)],
        "contains ' ', which Triton's Python backend cannot pass through its unquoted shell"),
    "repo from an engine dir with a space": (
        lambda w: ["repo", str(_copy(w.engine, w.tmp / "my engine")), "--out", str(w.tmp / "r")],
        "the engine directory '"),
}  # fmt: skip


def _executable(path: Path) -> Path:
    path.chmod(0o755)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_naming_the_fix_and_exit_2(
    runner: CliRunner, world: World, name: str
) -> None:
    make_args, expected = CASES[name]
    args = make_args(world)
    before = sorted(p.name for p in world.tmp.iterdir())
    result = run_main(runner, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    others = [line for line in result.stderr.splitlines() if line not in errors]
    if "Invalid value" in expected:  # click's usage error: Usage and Try lines, then the error
        assert others[0].startswith("Usage: ") and others[1].startswith("Try ")
    else:  # nothing but the error (and an announced command line)
        assert all(line.startswith("+ ") for line in others), result.stderr
    assert sorted(p.name for p in world.tmp.iterdir()) == before, "something was written"
    assert not list(world.tmp.rglob("MARKER")) and not (Path.cwd() / "MARKER").exists()


def test_a_port_in_use_is_refused_before_starting(
    runner: CliRunner, world: World, busy_port: int
) -> None:
    result = run_main(runner, "serve", str(world.repo()), "--grpc-port", str(busy_port))
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: --grpc-port {busy_port}: port {busy_port} on 127.0.0.1 is already in use "
        f"(another server?); stop that, or pass --grpc-port with a free port (0 picks one)\n"
    )


def test_unsafe_repo_paths_name_the_character_and_the_fix(runner: CliRunner, world: World) -> None:
    result = run_main(runner, "repo", str(world.engine), "--out", str(world.tmp / UNSAFE))
    assert result.stderr == (
        f"Error: --out {str(world.tmp / UNSAFE)!r} contains ' ', which Triton's Python backend "
        "cannot pass through its unquoted shell command; move or rename it to a path of only "
        "ASCII letters, digits and / . _ - + = @ , : %\n"
    )
    for path, bad in (
        (world.tmp / "r$(x)", "$"),
        (world.tmp / "r'q", "'"),
        (world.tmp / "ré", "é"),
    ):
        result = run_main(runner, "repo", str(world.engine), "--out", str(path))
        assert result.exit_code == 2 and f" contains {bad!r}, " in result.stderr
        assert not path.exists()


def test_an_unreadable_or_unwritable_path_is_one_line_not_a_traceback(
    runner: CliRunner, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last net in cli.main (as root, permissions cannot be made to fail for real)."""

    def denied(options: object) -> None:
        raise PermissionError(13, "Permission denied", "/srv/out")

    monkeypatch.setattr("trtbuild.repo.make_repository", denied)
    result = run_main(runner, "repo", str(world.engine), "--out", "/srv/out")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: /srv/out: Permission denied; check the path given and its permissions\n"
    )
