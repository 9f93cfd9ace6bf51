"""The ``trtbuild`` command line: the only module that imports click.

Each command parses its options into a typed spec and calls one library function. ``main`` is the
one error handler: a ``UserError`` exits 2, any other ``TrtbuildError`` exits 1, both with a
one-line message on stderr (``TRTBUILD_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click
from pydantic import ValidationError

from trtbuild import __version__
from trtbuild.errors import TrtbuildError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="trtbuild")
def cli() -> None:
    """From a Hugging Face LLM to a Triton Inference Server deployment on NVIDIA GPUs."""


# -- demo, serve, infer (the serving path) ----------------------------------------------------------
@cli.command(
    epilog="""Examples:

\b
  trtbuild demo
  trtbuild demo --workdir ./demo      # keep DIR/model, DIR/engine, DIR/repository
  trtbuild serve ./demo/repository    # serve them again later"""
)
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the model, engine and repository here.")
@click.option("--force", is_flag=True, help="Replace what is already in --workdir.")
@click.option("--http-port", type=int, default=0, show_default="a free port")
@click.option("--grpc-port", type=int, default=0, show_default="a free port")
def demo(workdir: Path | None, force: bool, http_port: int, grpc_port: int) -> None:
    """Create the embedded tiny model, serve it through the full ensemble, and generate."""
    from trtbuild.demo import DemoSpec, run_demo

    run_demo(DemoSpec(workdir=workdir, force=force, http_port=http_port, grpc_port=grpc_port))


@cli.command(
    epilog="""Examples:

\b
  trtbuild serve ./repository
  trtbuild serve ./repository --http-port 9000 --grpc-port 9001 --metrics-port 9002
  trtbuild serve ./repository --host 0.0.0.0     # listen beyond this machine (you asked)"""
)
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--tritonserver", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tritonserver binary (default: PATH, then the nvidia-pytriton wheel).")
@click.option("--startup-timeout", type=float, default=300.0, show_default=True, help="Seconds.")
@click.option("--log-verbose", type=int, default=0, show_default=True)
def serve(repo: Path, host: str, http_port: int, grpc_port: int, metrics_port: int,
          tritonserver: Path | None, startup_timeout: float, log_verbose: int) -> None:
    """Serve a model repository with tritonserver until Ctrl-C or SIGTERM."""
    from trtbuild.server import serve_forever
    from trtbuild.specs import ServeSpec

    serve_forever(ServeSpec(repo=repo, host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port, tritonserver=tritonserver,
                            startup_timeout=startup_timeout, log_verbose=log_verbose))


@cli.command(
    epilog="""Examples:

\b
  trtbuild infer "What is Triton?"
  trtbuild infer "Tell me a story" --stream --max-tokens 128
  trtbuild infer "Hello" --protocol http --url 127.0.0.1:8000
  trtbuild infer "Hello" --model tensorrt_llm_bls --temperature 0.8 --top-p 0.9 --seed 7"""
)
@click.argument("prompt")
@click.option("--url", default=None, help="HOST:PORT (default 127.0.0.1:8001 for grpc, :8000 for http).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="grpc", show_default=True)
@click.option("--stream/--no-stream", default=False, show_default=True, help="Print tokens as they arrive.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--model", default="ensemble", show_default=True)
@click.option("--temperature", type=float)
@click.option("--top-k", type=int)
@click.option("--top-p", type=float)
@click.option("--seed", type=int)
@click.option("--stop", "stop_words", multiple=True, help="Stop word (repeatable).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def infer(prompt: str, url: str | None, protocol: str, stream: bool, max_tokens: int, model: str,
          temperature: float | None, top_k: int | None, top_p: float | None, seed: int | None,
          stop_words: tuple[str, ...], timeout: float) -> None:
    """Send PROMPT to a running server and print the generated text."""
    from trtbuild.client import run_infer
    from trtbuild.specs import InferSpec, SamplingSpec

    default_url = "127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"
    spec = InferSpec(prompt=prompt, url=url or default_url, protocol=protocol,  # type: ignore[arg-type]
                     stream=stream, max_tokens=max_tokens, model=model, timeout=timeout,
                     sampling=SamplingSpec(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
                     stop_words=list(stop_words))
    run_infer(spec, out=sys.stdout)


# -- download, plan (issue 4) ------------------------------------------------------------------------

# -- engine (issue 3) ------------------------------------------------------------------------------------

# -- repo, check (issue 5) ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map errors to messages and exit codes."""
    debug = os.environ.get("TRTBUILD_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="trtbuild", standalone_mode=False)
    except click.exceptions.Abort:
        _echo_err("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except ValidationError as exc:  # a spec built from options did not validate: user error
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        _echo_err(f"Error: invalid {where}: {first['msg']}")
        if debug:
            traceback.print_exc()
        sys.exit(2)
    except TrtbuildError as exc:
        _echo_err(f"Error: {exc.message}")
        if exc.details:
            _echo_err(exc.details)
        if debug:
            traceback.print_exc()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _echo_err("Interrupted.")
        sys.exit(130)
    sys.exit(0)
