"""The ``trtbuild`` command line: the only module that imports click.

Each command parses its options into a typed spec and calls one library function. ``main`` is the
one error handler: a ``UserError`` exits 2, any other ``TrtbuildError`` exits 1, both with a
one-line message on stderr (``TRTBUILD_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from trtbuild import __version__
from trtbuild.errors import TrtbuildError, first_error, redact
from trtbuild.vocab import DTYPES, KV_DTYPES, QUANTS

PLAN_DTYPES = ("auto", "bfloat16", "float16")
PLAN_QUANTS = ("auto", *QUANTS)
ENGINE_DTYPES = DTYPES

F = TypeVar("F", bound=Callable[..., Any])
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


def _name_option(
    flag: str, kind: str, choices: tuple[str, ...], help_text: str, default: str | None = None
) -> Callable[[F], F]:
    """An option whose values are trtbuild.vocab names of ``kind``, its aliases listed in --help."""
    return click.option(
        flag,
        type=_Names(kind, choices),
        default=default,
        show_default=default is not None,
        help=help_text + _aliases(kind, choices),
    )


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
  trtbuild serve ./repository --host ADDRESS     # listen beyond 127.0.0.1, when you mean to
  trtbuild serve ./repository --dry-run          # print the exact command (mpirun for TP x PP)"""
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the exact command (and the environment trtbuild adds) that would serve; run "
    "nothing.",
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
    dry_run: bool,
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
            dry_run=dry_run,
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
@_name_option(
    "--dtype",
    "dtype",
    PLAN_DTYPES,
    "Activations and unquantized weights (auto: the checkpoint's).",
    default="auto",
)
@_name_option(
    "--quant",
    "quant",
    PLAN_QUANTS,
    "Weight quantization (auto: the checkpoint's, else none).",
    default="auto",
)
@_name_option(
    "--kv-cache-dtype",
    "kv_cache_dtype",
    KV_DTYPES,
    "auto: the model's 16-bit dtype.",
    default="auto",
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
    "--runtime",
    type=click.Choice(["tensorrtllm", "torch"]),
    default="tensorrtllm",
    show_default=True,
    help="TensorRT-LLM, or trtbuild's portable runtime (its KV cache: max_batch_size slots).",
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
    runtime: str,
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
            runtime=runtime,
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
@_name_option(
    "--dtype", "dtype", ENGINE_DTYPES, "Weights and activations (float32: portable runtime only)."
)
@_name_option("--quant", "quant", QUANTS, "Weight quantization (ModelOpt).")
@_name_option(
    "--kv-cache-dtype", "kv_cache_dtype", KV_DTYPES, "Quantized KV cache (auto: the model's dtype)."
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
  trtbuild repo --spec ./repository/trtbuild-repo.json --out ./repo2 --no-streaming
  trtbuild repo ./engine --out ./repository --instances 2      # two engines on this host
  trtbuild repo ./engine --out ./repository --instances 2 --device cpu

\b
Every value comes from the engine directory (TensorRT-LLM's config.json, trtbuild-engine.json),
the tokenizer (end, pad and extra end tokens) and --plan; the result is checked before it is
written, and the spec is saved as DIR/trtbuild-repo.json. --spec renders a saved spec again
(the engine need not be here), with the options given applied."""
)
@click.argument("engine_dir", type=click.Path(path_type=Path), required=False)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(path_type=Path),
    help="A saved trtbuild-repo.json (or its repository) to render again, instead of ENGINE_DIR.",
)
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
    default=None,
    help="Decoupled core model: tokens stream through the ensemble [default: streaming].",
)
@click.option(
    "--bls-decoupled/--no-bls-decoupled",
    default=None,
    help="Decoupled tensorrt_llm_bls: it streams (upstream's decoupled_mode) instead of being the "
    "plain /infer front [default: not decoupled].",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path),
    help="A 'trtbuild plan --json' file: limits, KV-cache memory, replicas.",
)
@click.option(
    "--instances",
    type=int,
    help="tensorrt_llm instances on this host (replicas), each with its own engine: TensorRT-LLM "
    "gets TP x PP GPUs each (gpu_device_ids), the portable runtime one GPU each, or CPU "
    "instances that split the cores [default: 1, or the plan's replicas on one node].",
)
@click.option(
    "--device",
    help="The portable runtime's device: auto (GPUs when this host has them), cpu, cuda, "
    "cuda:N [default: auto].",
)
@click.option(
    "--force", is_flag=True, help="Replace a non-empty --out; accept a mismatched engine."
)
def repo(
    engine_dir: Path | None,
    spec_file: Path | None,
    out: Path,
    runtime: str | None,
    tokenizer: Path | None,
    streaming: bool | None,
    bls_decoupled: bool | None,
    plan_file: Path | None,
    instances: int | None,
    device: str | None,
    force: bool,
) -> None:
    """Render the Triton model repository that serves ENGINE_DIR (or a saved --spec)."""
    from trtbuild.repo import make_repository
    from trtbuild.specs import RepoOptions

    result = make_repository(
        RepoOptions(
            engine_dir=engine_dir,
            spec=spec_file,
            out=out,
            runtime=runtime,
            tokenizer=tokenizer,
            streaming=streaming,
            bls_decoupled=bls_decoupled,
            plan=plan_file,
            instances=instances,
            device=device,
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


# -- deploy (issue 13) --------------------------------------------------------------------------------
@cli.group(
    epilog="""Examples:

\b
  trtbuild deploy k8s ./repository --out ./k8s --plan plan.json
  trtbuild deploy slurm ./repository --out serve.sbatch --nodes 2"""
)
def deploy() -> None:
    """Manifests (Kubernetes) or a batch script (Slurm) that serve a rendered repository."""


_REPO_ARG = click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
_PLAN_OPT = click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The 'trtbuild plan --json' file the repository was rendered with: GPUs per node, "
    "replicas, capacity.",
)
_IMAGE_OPT = click.option(
    "--image", help="Serving image [default: the compatibility matrix's container]."
)
_NAME_OPT = click.option(
    "--name", help="Object and job name [default: trtbuild-<model>]; a DNS label, 40 characters."
)


@deploy.command(
    "k8s",
    epilog="""Examples:

\b
  trtbuild deploy k8s ./repository --out ./k8s --plan plan.json
  trtbuild deploy k8s ./repository --out ./k8s --plan plan.json --perf perf/results.json
  trtbuild deploy k8s ./repository --out ./k8s --min-replicas 2 --max-replicas 8 -n llm
  trtbuild deploy k8s ./repository --out ./k8s --storage download --init-image REGISTRY/trtbuild
  kubectl apply -k ./k8s

\b
Writes one YAML file per object (Deployment, or LeaderWorkerSet when a replica spans nodes;
Service, ServiceMonitor, PodDisruptionBudget, HorizontalPodAutoscaler, PersistentVolumeClaim,
PrometheusRule, the Grafana dashboard's ConfigMap) and kustomization.yaml; beside them
grafana-dashboard.json, prometheus-adapter-values.yaml (the rule that exposes the autoscaler's
metric) and trtbuild-deploy.json (the layout and why). docs/deploy.md explains each.""",
)
@_REPO_ARG
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@_PLAN_OPT
@click.option(
    "--perf",
    "perf_file",
    type=click.Path(exists=True, path_type=Path),
    help="A 'trtbuild perf' results.json of one replica: its capacity sets the autoscaler target.",
)
@_IMAGE_OPT
@_NAME_OPT
@click.option("--namespace", "-n", help="Namespace of every object [default: kubectl's].")
@click.option("--min-replicas", type=int, help="[default: what the plan's concurrency needs]")
@click.option("--max-replicas", type=int, help="[default: the plan's GPUs, else 2 x min]")
@click.option("--sla-ttft", type=float, help="TTFT p99 alert bound, ms [default: perf's, or 1000].")
@click.option(
    "--storage",
    type=click.Choice(["pvc", "download"]),
    default="pvc",
    show_default=True,
    help="Model files from a PersistentVolumeClaim, or downloaded by an init container.",
)
@click.option("--pvc", help="An existing claim holding the files [default: create one].")
@click.option("--pvc-size", help="Size of the claim created, e.g. 200Gi [default: the files'].")
@click.option("--storage-class", help="StorageClass of the claim created (ReadWriteMany).")
@click.option("--init-image", help="--storage download: an image with trtbuild installed.")
@click.option(
    "--source", help="--storage download: Hub REPO_ID[@REVISION] [default: the engine's]."
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def deploy_k8s(
    repo: Path,
    out: Path,
    plan_file: Path | None,
    perf_file: Path | None,
    image: str | None,
    name: str | None,
    namespace: str | None,
    min_replicas: int | None,
    max_replicas: int | None,
    sla_ttft: float | None,
    storage: str,
    pvc: str | None,
    pvc_size: str | None,
    storage_class: str | None,
    init_image: str | None,
    source: str | None,
    force: bool,
) -> None:
    """Kubernetes manifests that serve REPO: replicas, probes, autoscaling, monitoring."""
    from trtbuild.deploy import deploy as run_deploy
    from trtbuild.specs import DeploySpec

    result = run_deploy(
        DeploySpec(
            target="k8s",
            repo=repo,
            out=out,
            plan=plan_file,
            perf=perf_file,
            image=image,
            name=name,
            namespace=namespace,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            sla_ttft_ms=sla_ttft,
            storage=storage,
            pvc=pvc,
            pvc_size=pvc_size,
            storage_class=storage_class,
            init_image=init_image,
            source=source,
            force=force,
        )
    )
    for note in result.layout.notes:
        _echo_err(f"note: {note}")
    click.echo(result.summary())


@deploy.command(
    "slurm",
    epilog="""Examples:

\b
  trtbuild deploy slurm ./repository --out serve.sbatch --plan plan.json
  trtbuild deploy slurm ./repository --out serve.sbatch --nodes 4 --partition gpu
  sbatch serve.sbatch

\b
One srun step per replica over its own nodes, in the serving image (pyxis --container-image),
the model files mounted at their own paths (a shared filesystem).""",
)
@_REPO_ARG
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The sbatch script to write."
)
@_PLAN_OPT
@_IMAGE_OPT
@_NAME_OPT
@click.option("--nodes", type=int, help="Nodes of the job [default: one replica's].")
@click.option("--partition", help="Slurm partition.")
@click.option("--time", "time_limit", default="24:00:00", show_default=True, help="Time limit.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def deploy_slurm(
    repo: Path,
    out: Path,
    plan_file: Path | None,
    image: str | None,
    name: str | None,
    nodes: int | None,
    partition: str | None,
    time_limit: str,
    force: bool,
) -> None:
    """An sbatch script that serves REPO with the same layout."""
    from trtbuild.deploy import deploy as run_deploy
    from trtbuild.specs import DeploySpec

    result = run_deploy(
        DeploySpec(
            target="slurm",
            repo=repo,
            out=out,
            plan=plan_file,
            image=image,
            name=name,
            nodes=nodes,
            partition=partition,
            time_limit=time_limit,
            force=force,
        )
    )
    for note in result.layout.notes:
        _echo_err(f"note: {note}")
    click.echo(result.summary())


# -- perf (issue 11) ----------------------------------------------------------------------------------
class _Levels(click.ParamType):
    """A comma-separated list of load levels: ``1,4,16`` (integers) or ``0.5,2`` (rates)."""

    def __init__(self, kind: type[int] | type[float]) -> None:
        self.kind = kind
        self.name = "N[,N...]" if kind is int else "R[,R...]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[int] | list[float]:
        if isinstance(value, list):
            return value
        try:
            return [self.kind(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            what = "integers" if self.kind is int else "numbers"
            self.fail(f"{value!r} is not a comma-separated list of {what}, e.g. 1,4,16", param, ctx)


class _PerfContext(click.Context):
    @property
    def command_path(self) -> str:  # the measuring command is "trtbuild perf" itself
        return super().command_path.rstrip()


class _PerfGroup(click.Group):
    """``trtbuild perf [REPO] [OPTIONS]`` measures; ``trtbuild perf history DB`` and
    ``trtbuild perf nightly MATRIX`` are subcommands. Anything that is not a subcommand's name
    goes to the measuring command, which is the group's own (it is not listed as a subcommand)."""

    measure: click.Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            args = ["--help"]
        if args[0] not in self.commands:
            args = [_MEASURE, *args]
        return super().parse_args(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == _MEASURE:
            return self.measure
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] == _MEASURE:
            return None, self.measure, args[1:]
        return super().resolve_command(ctx, args)


_MEASURE = "\x00measure"


@cli.group(cls=_PerfGroup, context_settings=CONTEXT)
def perf() -> None:
    """Measure a served model with perf_analyzer (see 'trtbuild perf --help')."""


@click.command(
    context_settings=CONTEXT,
    epilog="""Examples:

\b
  trtbuild perf ./repository --concurrency 1,4,16            # serves it, measures, stops it
  trtbuild perf --url 127.0.0.1:8001 --model ensemble --request-rate 2,8
  trtbuild perf ./repository --compare-models --output-len 64 --out ./overhead
  trtbuild perf ./repository --dataset prompts.jsonl --sla-ttft 200 --sla-itl 20
  trtbuild perf ./repository --no-stream --model tensorrt_llm_bls --report md

\b
Writes OUT/results.json (every metric, the run's context), results.csv, report.html (or
report.md), throughput_latency.png, ttft.png, itl.png and, with --genai-perf-export,
genai-perf-shaped exports. A run that stops early (the server died, perf_analyzer failed)
writes what it measured, marked "partial": true, and exits 1. Metrics: docs/perf.md.

\b
Subcommands:
  trtbuild perf history DB [--series KEY]   a series' trend, as a table and a plot
  trtbuild perf nightly MATRIX.yaml         run a matrix, append it, flag regressions
                                            (what scripts/nightly_perf.sh runs)
(A repository directory named like a subcommand is given as ./history.)""",
)
@click.argument(
    "repo", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--url",
    help="gRPC HOST:PORT of a running server (with REPO too: REPO is only read, for context).",
)
@click.option("--metrics-url", help="Its Prometheus endpoint [default: http://HOST:8002/metrics].")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="ensemble, tensorrt_llm or tensorrt_llm_bls; repeat to measure several side by side "
    "[default: ensemble].",
)
@click.option(
    "--compare-models",
    is_flag=True,
    help="Measure tensorrt_llm, ensemble and tensorrt_llm_bls in one run, with ratios.",
)
@click.option(
    "--concurrency",
    type=_Levels(int),
    help="Concurrency levels (requests in flight) [default: 1,4,16].",
)
@click.option("--request-rate", type=_Levels(float), help="Request-rate levels (requests/s).")
@click.option("--input-len", type=int, default=128, show_default=True, help="Prompt tokens.")
@click.option(
    "--output-len",
    type=int,
    default=64,
    show_default=True,
    help="Generated tokens per request (end tokens ignored).",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL prompts, one {"text_input": ...} a line (optional "output_len").',
)
@click.option(
    "--num-prompts", type=int, help="Distinct prompts to cycle through [default: 100, or all]."
)
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Stream tokens (gRPC, decoupled) or take whole responses [default: stream what can].",
)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Tokenizer directory [default: the served preprocessing model's].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompts.")
@click.option(
    "--measurement-interval",
    type=int,
    default=4000,
    show_default=True,
    help="perf_analyzer window, ms (the last three are measured).",
)
@click.option(
    "--stability-percentage",
    type=float,
    default=50.0,
    show_default=True,
    help="perf_analyzer's stability criterion (999: take the first three windows).",
)
@click.option("--max-trials", type=int, default=10, show_default=True, help="Windows per level.")
@click.option(
    "--warmup",
    type=int,
    default=1500,
    show_default=True,
    help="A discarded run before each level, ms (0: none).",
)
@click.option("--sla-ttft", type=float, help="Goodput: TTFT at most this many ms.")
@click.option("--sla-itl", type=float, help="Goodput: mean inter-token latency at most this, ms.")
@click.option(
    "--gpus", type=int, help="GPUs serving, for tokens/s per GPU [default: the repository's]."
)
@click.option("--label", help="The model's name in titles and history keys.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory [default: ./perf-<UTC time>].",
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--report", type=click.Choice(["html", "md"]), default="html", show_default=True)
@click.option("--genai-perf-export", is_flag=True, help="Also write genai-perf profile exports.")
@click.option("--keep-raw", is_flag=True, help="Keep perf_analyzer's exports in OUT/raw.")
@click.option(
    "--tritonserver",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="tritonserver binary, to serve REPO.",
)
def perf_measure(
    repo: Path | None,
    url: str | None,
    metrics_url: str | None,
    models: tuple[str, ...],
    compare_models: bool,
    concurrency: list[int] | None,
    request_rate: list[float] | None,
    input_len: int,
    output_len: int,
    dataset: Path | None,
    num_prompts: int | None,
    stream: bool | None,
    tokenizer: Path | None,
    seed: int,
    measurement_interval: int,
    stability_percentage: float,
    max_trials: int,
    warmup: int,
    sla_ttft: float | None,
    sla_itl: float | None,
    gpus: int | None,
    label: str | None,
    out: Path | None,
    force: bool,
    report: str,
    genai_perf_export: bool,
    keep_raw: bool,
    tritonserver: Path | None,
) -> None:
    """Load a served LLM with perf_analyzer: TTFT, ITL, latency, tokens/s, goodput.

    REPO alone: serve it for the run (free loopback ports), then stop it. --url: measure a
    running server.
    """
    import time

    from trtbuild.perf import run_perf
    from trtbuild.specs import PerfSla, PerfSpec

    if compare_models and models:
        raise click.UsageError("give --compare-models or --model, not both")
    chosen = ["tensorrt_llm", "ensemble", "tensorrt_llm_bls"] if compare_models else list(models)
    spec = PerfSpec(
        repo=repo,
        url=url,
        metrics_url=metrics_url,
        models=chosen or ["ensemble"],
        concurrency=concurrency,
        request_rate=request_rate,
        input_len=input_len,
        output_len=output_len,
        dataset=dataset,
        num_prompts=num_prompts,
        stream=stream,
        tokenizer=tokenizer,
        seed=seed,
        measurement_interval_ms=measurement_interval,
        stability_percent=stability_percentage,
        max_trials=max_trials,
        warmup_ms=warmup,
        sla=PerfSla(ttft_ms=sla_ttft, itl_ms=sla_itl),
        gpus=gpus,
        label=label,
        out=out or Path(time.strftime("perf-%Y%m%dT%H%M%SZ", time.gmtime())),
        force=force,
        report=report,
        genai_perf_export=genai_perf_export,
        keep_raw=keep_raw,
        tritonserver=tritonserver,
    )
    run_perf(spec, out=sys.stdout)


perf_measure.context_class = _PerfContext
perf.measure = perf_measure  # type: ignore[attr-defined]


@perf.command(
    "history",
    epilog="""Examples:

\b
  trtbuild perf history perf-history.sqlite                       # list the series
  trtbuild perf history perf-history.sqlite --series tiny/ensemble/stream/in32-out16/c4
  trtbuild perf history perf-history.sqlite --series ensemble/stream/in32-out16/c4 \\
      --metric ttft_ms_p99 --metric output_tokens_per_s --plot trend.png

\b
--series takes a whole key or a part that matches one key only.""",
)
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--series", help="A series key (or a unique part of one).")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Metric to show (repeatable) [default: output_tokens_per_s, ttft/itl/e2e p50].",
)
@click.option("--last", type=int, default=20, show_default=True, help="Show the last N runs.")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the trend plot (PNG)."
)
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
def perf_history(
    db: Path,
    series: str | None,
    metrics: tuple[str, ...],
    last: int,
    plot: Path | None,
    force: bool,
) -> None:
    """Show the series of a perf history database, or one series' trend."""
    from trtbuild.perf import show_history
    from trtbuild.specs import PerfHistorySpec

    show_history(
        PerfHistorySpec(
            db=db, series=series, metrics=list(metrics), last=last, plot=plot, force=force
        ),
        out=sys.stdout,
    )


@perf.command(
    "nightly",
    epilog="""Examples:

\b
  scripts/nightly_perf.sh perf-matrix.yaml                 # what cron runs
  trtbuild perf nightly perf-matrix.yaml --db /srv/perf/history.sqlite
  trtbuild perf nightly perf-matrix.yaml --compare-only    # measure nothing, compare the latest

\b
Exits 1 with one line per regressed metric (worse than the median of the series' last runs by
more than its threshold and its own run-to-run spread), or per failed run. The matrix format is
in docs/perf.md.""",
)
@click.argument("matrix", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="History database [default: the matrix's 'history', else $TRTBUILD_PERF_DB].",
)
@click.option("--compare-only", is_flag=True, help="Measure nothing; compare the latest runs.")
def perf_nightly(matrix: Path, db: Path | None, compare_only: bool) -> None:
    """Run a perf matrix, append it to the history, and fail on regressions."""
    from trtbuild.perf_nightly import run_nightly
    from trtbuild.specs import PerfNightlySpec

    run_nightly(PerfNightlySpec(matrix=matrix, db=db, compare_only=compare_only), out=sys.stdout)


def _invalid(detail: str) -> str:
    """``field: why`` reads "invalid field: why"; a whole-spec rule's message stands alone."""
    return f"invalid {detail}" if detail.split(" ", 1)[0].endswith(":") else detail


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
        _echo_err(f"Error: {_invalid(first_error(exc))}")
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
