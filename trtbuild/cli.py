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
from trtbuild.errors import TrtbuildError, first_error, redact
from trtbuild.vocab import DTYPES, KV_DTYPES, QUANTS

PLAN_DTYPES = ("auto", "bfloat16", "float16")
PLAN_QUANTS = ("auto", *QUANTS)
ENGINE_DTYPES = DTYPES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


class _Names(click.Choice):
    """A choice of trtbuild.vocab names that also takes their spellings (bf16, int8) and passes on
    the canonical name (bfloat16, int8-sq)."""

    def __init__(self, kind: str, choices: tuple[str, ...]) -> None:
        self.kind = kind
        super().__init__(choices, case_sensitive=False)

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        from trtbuild.vocab import canonical

        return str(super().convert(canonical(self.kind, value), param, ctx))


def _aliases(kind: str, choices: tuple[str, ...]) -> str:
    from trtbuild.vocab import ALIASES

    names = [a for a, n in ALIASES[kind].items() if n in choices]
    return f" Also: {', '.join(names)}." if names else ""


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
@click.option(
    "--workdir", type=click.Path(path_type=Path), help="Keep the model, engine and repository here."
)
@click.option("--force", is_flag=True, help="Replace what is already in --workdir.")
@click.option("--http-port", type=int, default=0, show_default="a free port")
@click.option("--grpc-port", type=int, default=0, show_default="a free port")
def demo(workdir: Path | None, force: bool, http_port: int, grpc_port: int) -> None:
    """Create the embedded tiny model, serve it through the full ensemble, and generate."""
    from trtbuild.demo import run_demo
    from trtbuild.specs import DemoSpec

    run_demo(DemoSpec(workdir=workdir, force=force, http_port=http_port, grpc_port=grpc_port))


@cli.command(
    epilog="""Examples:

\b
  trtbuild serve ./repository
  trtbuild serve ./repository --http-port 9000 --grpc-port 9001 --metrics-port 9002
  trtbuild serve ./repository --host ADDRESS     # listen beyond 127.0.0.1, when you mean to"""
)
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option(
    "--tritonserver",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="tritonserver binary (default: PATH, then the nvidia-pytriton wheel).",
)
@click.option("--startup-timeout", type=float, default=300.0, show_default=True, help="Seconds.")
@click.option(
    "--exit-timeout",
    type=int,
    default=3,
    show_default=True,
    help="Seconds a stop waits for open connections and in-flight requests (tritonserver "
    "--exit-timeout-secs).",
)
@click.option("--log-verbose", type=int, default=0, show_default=True)
@click.option(
    "--force", is_flag=True, help="Serve an engine built for another GPU or TensorRT-LLM version."
)
def serve(
    repo: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    tritonserver: Path | None,
    startup_timeout: float,
    exit_timeout: int,
    log_verbose: int,
    force: bool,
) -> None:
    """Serve a model repository with tritonserver until Ctrl-C or SIGTERM."""
    from trtbuild.server import serve_forever
    from trtbuild.specs import ServeSpec

    serve_forever(
        ServeSpec(
            repo=repo,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            tritonserver=tritonserver,
            startup_timeout=startup_timeout,
            exit_timeout=exit_timeout,
            log_verbose=log_verbose,
            force=force,
        )
    )


@cli.command(
    epilog="""Examples:

\b
  trtbuild infer "What is Triton?"
  trtbuild infer "Tell me a story" --stream --max-tokens 128
  trtbuild infer "Hello" --protocol http --url 127.0.0.1:8000
  trtbuild infer "Hello" --model tensorrt_llm_bls --temperature 0.8 --top-p 0.9 --seed 7"""
)
@click.argument("prompt")
@click.option(
    "--url", default=None, help="HOST:PORT (default 127.0.0.1:8001 for grpc, :8000 for http)."
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="grpc", show_default=True)
@click.option(
    "--stream/--no-stream", default=False, show_default=True, help="Print tokens as they arrive."
)
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--model", default="ensemble", show_default=True)
@click.option("--temperature", type=float)
@click.option("--top-k", type=int)
@click.option("--top-p", type=float)
@click.option("--seed", type=int)
@click.option("--stop", "stop_words", multiple=True, help="Stop word (repeatable).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def infer(
    prompt: str,
    url: str | None,
    protocol: str,
    stream: bool,
    max_tokens: int,
    model: str,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    stop_words: tuple[str, ...],
    timeout: float,
) -> None:
    """Send PROMPT to a running server and print the generated text."""
    from trtbuild.client import run_infer
    from trtbuild.specs import InferSpec, SamplingSpec

    default_url = "127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"
    spec = InferSpec(
        prompt=prompt,
        url=url or default_url,
        protocol=protocol,
        stream=stream,
        max_tokens=max_tokens,
        model=model,
        timeout=timeout,
        sampling=SamplingSpec(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
        stop_words=list(stop_words),
    )
    run_infer(spec, out=sys.stdout)


# -- download, plan (issue 4) ------------------------------------------------------------------------
@cli.command(
    epilog="""Examples:

\b
  trtbuild download meta-llama/Llama-3.1-8B-Instruct
  trtbuild download Qwen/Qwen2.5-7B-Instruct --revision main --local-dir ./qwen
  trtbuild download ./my-checkpoint              # check a local checkpoint, write its manifest
  HF_HUB_OFFLINE=1 trtbuild download meta-llama/Llama-3.1-8B-Instruct   # from the cache only
  trtbuild plan "$(trtbuild download meta-llama/Llama-3.1-8B-Instruct)" --gpu h100-sxm"""
)
@click.argument("source", metavar="REPO_ID_OR_PATH")
@click.option("--revision", help="Branch, tag or commit (default: main); recorded as a commit.")
@click.option(
    "--local-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Put the files here instead of the Hugging Face cache (HF_HOME).",
)
@click.option(
    "--force", is_flag=True, help="Write into a non-empty --local-dir trtbuild did not make."
)
@click.option("--all-weights", is_flag=True, help="Also fetch .bin/.pth/consolidated duplicates.")
def download(
    source: str, revision: str | None, local_dir: Path | None, force: bool, all_weights: bool
) -> None:
    """Fetch a Hugging Face checkpoint (only what serving needs) and print its directory.

    Writes trtbuild-checkpoint.json beside the files: the commit, every file's size and sha256, and
    the model facts the planner uses. The token comes from HF_TOKEN or 'hf auth login' and is never
    stored.
    """
    from trtbuild.download import download as fetch
    from trtbuild.specs import DownloadSpec

    result = fetch(
        DownloadSpec(
            source=source,
            revision=revision,
            local_dir=local_dir,
            force=force,
            all_weights=all_weights,
        )
    )
    m = result.manifest
    origin = f"{m.repo_id} @ {m.commit}" if m.repo_id else f"{m.source_dir}"
    _echo_err(f"{origin}: {len(m.files)} files, {m.total_bytes / 1e9:.2f} GB, sha256 verified")
    click.echo(str(result.path))


@cli.command(
    "plan",
    epilog="""Examples:

\b
  trtbuild plan meta-llama/Llama-3.1-70B --gpu h100-sxm --gpus 8
  trtbuild plan meta-llama/Llama-3.1-70B --gpu h100-sxm --gpus 2 --quant fp8 --kv-cache-dtype fp8
  trtbuild plan ./Llama-3.1-8B-Instruct --gpu l40s --max-input-len 4096 --concurrency 32
  trtbuild plan config.json --gpu a100-80gb --price-per-gpu-hour 1.8 --json > plan.json
  trtbuild engine ./Llama-3.1-8B-Instruct --out ./engine --plan plan.json   # build with its limits""",
)
@click.argument("model", metavar="CHECKPOINT_OR_CONFIG")
@click.option(
    "--gpu", required=True, help="GPU model, e.g. h100-sxm, h200, a100-80gb, l40s, l4, b200."
)
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs per node.")
@click.option("--nodes", type=int, default=1, show_default=True)
@click.option(
    "--dtype",
    type=_Names("dtype", PLAN_DTYPES),
    default="auto",
    show_default=True,
    help="Activations and unquantized weights (auto: the checkpoint's)."
    + _aliases("dtype", PLAN_DTYPES),
)
@click.option(
    "--quant",
    type=_Names("quant", PLAN_QUANTS),
    default="auto",
    show_default=True,
    help="Weight quantization (auto: the checkpoint's, else none)."
    + _aliases("quant", PLAN_QUANTS),
)
@click.option(
    "--kv-cache-dtype",
    type=_Names("kv_cache_dtype", KV_DTYPES),
    default="auto",
    show_default=True,
    help="auto: the model's 16-bit dtype." + _aliases("kv_cache_dtype", KV_DTYPES),
)
@click.option("--max-input-len", type=int, default=2048, show_default=True)
@click.option("--max-output-len", type=int, default=512, show_default=True)
@click.option(
    "--concurrency",
    type=int,
    default=64,
    show_default=True,
    help="Sequences in flight across all replicas.",
)
@click.option(
    "--price-per-gpu-hour", type=float, help="Dollars; adds cost per million output tokens."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the plan as JSON (for --plan plan.json)."
)
def plan_command(
    model: str,
    gpu: str,
    gpus: int,
    nodes: int,
    dtype: str,
    quant: str,
    kv_cache_dtype: str,
    max_input_len: int,
    max_output_len: int,
    concurrency: int,
    price_per_gpu_hour: float | None,
    as_json: bool,
) -> None:
    """Plan TP, PP, replicas and engine limits for CHECKPOINT_OR_CONFIG on a GPU type.

    CHECKPOINT_OR_CONFIG is a checkpoint directory, a config.json, or a well-known repo id
    (Llama-3.1 8B/70B, Mixtral-8x7B, Qwen2.5-7B) planned offline. Exits 2, saying what would fit,
    when nothing does.
    """
    from rich.console import Console

    from trtbuild.plan import plan_from_spec, plan_table
    from trtbuild.specs import PlanRequest, PlanSpec

    request = PlanRequest.model_validate(
        dict(
            gpus_per_node=gpus,
            nodes=nodes,
            dtype=dtype,
            quant=quant,
            kv_cache_dtype=kv_cache_dtype,
            max_input_len=max_input_len,
            max_output_len=max_output_len,
            concurrency=concurrency,
            price_per_gpu_hour=price_per_gpu_hour,
        )
    )
    result = plan_from_spec(PlanSpec(model=model, gpu=gpu, request=request))
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 120).print(plan_table(result))


# -- engine (issue 3) ------------------------------------------------------------------------------------
@cli.command(
    epilog="""Examples:

\b
  trtbuild engine ./llama-3.1-8b --out ./engine --tp 2 --quant fp8 --kv-cache-dtype fp8
  trtbuild engine ./llama-3.1-8b --out ./engine --gpu h100-sxm --tp 4 --pp 2 --dry-run
  trtbuild engine ./llama-3.1-8b --out ./engine --plan plan.json --max-seq-len 8192
  trtbuild engine ./llama-3.1-8b-fp8 --out ./engine --runtime llmapi --kv-cache-dtype fp8
  trtbuild engine ./tiny --out ./engine --runtime torch --dtype float16

\b
Options left out come from --plan, else from the model and trtbuild's defaults. Engines are
cached by checkpoint, settings, GPU SM and TensorRT-LLM version (see 'trtbuild cache list')."""
)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Engine directory to write."
)
@click.option(
    "--runtime",
    type=click.Choice(["tensorrtllm", "llmapi", "torch"]),
    default="tensorrtllm",
    show_default=True,
    help="TensorRT-LLM engine, LLM-API checkpoint, or trtbuild's portable runtime.",
)
@click.option(
    "--gpu", help="Target GPU (h100-sxm, a100-80gb, l40s, h200, b200...); default: detected."
)
@click.option("--tp", type=int, help="Tensor-parallel size.")
@click.option("--pp", type=int, help="Pipeline-parallel size.")
@click.option(
    "--dtype",
    type=_Names("dtype", ENGINE_DTYPES),
    help="Weights and activations (float32: portable runtime only)."
    + _aliases("dtype", ENGINE_DTYPES),
)
@click.option(
    "--quant",
    type=_Names("quant", QUANTS),
    help="Weight quantization (ModelOpt)." + _aliases("quant", QUANTS),
)
@click.option(
    "--kv-cache-dtype",
    type=_Names("kv_cache_dtype", KV_DTYPES),
    help="Quantized KV cache (auto: the model's dtype)." + _aliases("kv_cache_dtype", KV_DTYPES),
)
@click.option("--max-batch-size", type=int)
@click.option("--max-input-len", type=int)
@click.option("--max-seq-len", type=int)
@click.option("--max-num-tokens", type=int)
@click.option(
    "--calib-size", type=int, help="Calibration samples for --quant/--kv-cache-dtype [512]."
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A 'trtbuild plan' JSON file; explicit options override it.",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate and print every command of the plan; run nothing."
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--no-cache", is_flag=True, help="Neither use nor fill the engine cache.")
def engine(
    checkpoint: Path,
    out: Path,
    runtime: str,
    gpu: str | None,
    tp: int | None,
    pp: int | None,
    dtype: str | None,
    quant: str | None,
    kv_cache_dtype: str | None,
    max_batch_size: int | None,
    max_input_len: int | None,
    max_seq_len: int | None,
    max_num_tokens: int | None,
    calib_size: int | None,
    plan_file: Path | None,
    dry_run: bool,
    force: bool,
    no_cache: bool,
) -> None:
    """Build (or take from the cache) the engine directory for CHECKPOINT."""
    from trtbuild.builder.engine import build_engine
    from trtbuild.specs import EngineSpec

    spec = EngineSpec(
        checkpoint=checkpoint,
        out=out,
        runtime=runtime,
        gpu=gpu,
        tp=tp,
        pp=pp,
        dtype=dtype,
        quant=quant,
        kv_cache_dtype=kv_cache_dtype,
        max_batch_size=max_batch_size,
        max_input_len=max_input_len,
        max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens,
        calib_size=calib_size,
        plan=plan_file,
        dry_run=dry_run,
        force=force,
        use_cache=not no_cache,
    )
    result = build_engine(spec)
    for note in result.notes:
        _echo_err(f"note: {note}")
    click.echo(result.summary())


@cli.group(
    epilog="""Examples:

\b
  trtbuild cache list
  trtbuild cache prune --older-than 30
  trtbuild cache prune --all"""
)
def cache() -> None:
    """The engine build cache ($TRTBUILD_HOME/engines, else $XDG_CACHE_HOME/trtbuild/engines)."""


@cache.command(
    "list",
    epilog="""Examples:

\b
  trtbuild cache list""",
)
def cache_list() -> None:
    """List cached engines, least recently used first."""
    from trtbuild.builder.cache import list_entries
    from trtbuild.paths import engine_cache_dir

    entries = list_entries()
    for entry in entries:
        click.echo(entry.describe())
    _echo_err(
        f"{len(entries)} cached engine{'s' if len(entries) != 1 else ''} in {engine_cache_dir()}"
    )


@cache.command(
    "prune",
    epilog="""Examples:

\b
  trtbuild cache prune --older-than 30   # unused for 30 days
  trtbuild cache prune --all""",
)
@click.option(
    "--older-than", type=float, metavar="DAYS", help="Remove entries unused for DAYS days."
)
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
def cache_prune(older_than: float | None, everything: bool) -> None:
    """Remove cached engines."""
    from trtbuild.builder.cache import prune

    removed = prune(older_than_days=older_than, everything=everything)
    for entry in removed:
        click.echo(f"removed {entry.key[:12]}  {entry.source}")
    _echo_err(f"removed {len(removed)} cached engine{'s' if len(removed) != 1 else ''}")


# -- repo, check (issue 5) ------------------------------------------------------------------------------
@cli.command(
    epilog="""Examples:

\b
  trtbuild repo ./engine --out ./repository                  # runtime from the engine's manifest
  trtbuild repo ./engine --out ./repository --plan plan.json --no-streaming
  trtbuild repo ./llama-3.1-8b-fp8 --out ./repository --runtime llmapi
  trtbuild repo ./engine --out ./repository --tokenizer ./llama-3.1-8b --force

\b
Every value comes from the engine directory (TensorRT-LLM's config.json, trtbuild-engine.json),
the tokenizer (end, pad and extra end tokens) and --plan; the result is checked before it is
written, and the spec is saved as DIR/trtbuild-repo.json."""
)
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Repository directory to write."
)
@click.option(
    "--runtime",
    type=click.Choice(["tensorrtllm", "llmapi", "torch"]),
    help="TensorRT-LLM C++ backend, TensorRT-LLM llmapi model, or the portable runtime "
    "[default: the engine's manifest].",
)
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    help="Hugging Face tokenizer directory [default: the engine's].",
)
@click.option(
    "--streaming/--no-streaming",
    default=True,
    show_default=True,
    help="Decoupled core model: tokens stream through the ensemble.",
)
@click.option(
    "--bls-decoupled",
    is_flag=True,
    help="Decoupled tensorrt_llm_bls: it streams (upstream's decoupled_mode) instead of being the "
    "plain /infer front.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path),
    help="A 'trtbuild plan --json' file: limits, KV-cache memory, replicas.",
)
@click.option(
    "--force", is_flag=True, help="Replace a non-empty --out; accept a mismatched engine."
)
def repo(
    engine_dir: Path,
    out: Path,
    runtime: str | None,
    tokenizer: Path | None,
    streaming: bool,
    bls_decoupled: bool,
    plan_file: Path | None,
    force: bool,
) -> None:
    """Render the Triton model repository that serves ENGINE_DIR."""
    from trtbuild.repo import make_repository
    from trtbuild.specs import RepoOptions

    result = make_repository(
        RepoOptions(
            engine_dir=engine_dir,
            out=out,
            runtime=runtime,
            tokenizer=tokenizer,
            streaming=streaming,
            bls_decoupled=bls_decoupled,
            plan=plan_file,
            force=force,
        )
    )
    for note in result.notes:
        _echo_err(f"note: {note}")
    click.echo(result.summary())


@cli.command(
    epilog="""Examples:

\b
  trtbuild check ./repository
  trtbuild check ./all_models/inflight_batcher_llm --engine ./engine   # a hand-written one
  trtbuild check ./repository --strict                                 # warnings fail too

\b
Prints one finding per line, SEVERITY: MODEL: message (fix: ...). Errors (the repository will not
load, or serves wrongly) exit 1; warnings are printed and exit 0 unless --strict."""
)
@click.argument("repo_dir", type=click.Path(path_type=Path))
@click.option(
    "--engine",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Engine (or checkpoint) directory to check against [default: the path in the config].",
)
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
def check(repo_dir: Path, engine: Path | None, strict: bool) -> None:
    """Lint a Triton model repository for TensorRT-LLM (trtbuild's or hand-written)."""
    from trtbuild.check import run_check
    from trtbuild.specs import CheckOptions

    result = run_check(CheckOptions(repo=repo_dir, engine=engine, strict=strict))
    for finding in result.findings:
        click.echo(str(finding))
    result.raise_for_failure()
    _echo_err(f"{repo_dir}: {result.summary()}")


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
        _echo_err(f"Error: invalid {first_error(exc)}")
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
    except _PATH_ERRORS as exc:  # a path given cannot be made, read or written: bad input
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"Error: {where}{exc.strerror or exc}; check the path given and its permissions"
        _echo_err(redact(message))
        if debug:
            traceback.print_exc()
        sys.exit(2)
    except KeyboardInterrupt:
        _echo_err("Interrupted.")
        sys.exit(130)
    sys.exit(0)


_PATH_ERRORS = (
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
