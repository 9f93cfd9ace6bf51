"""Typed specs: every command parses its options into one of these and hands it to the library.

All are pydantic models with ``extra="forbid"`` (a typo in a spec file fails loudly) and frozen.
The spec that produced an artifact is written next to it, so it can be rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trtbuild import vocab

Runtime = Literal["torch", "tensorrtllm", "llmapi"]
Protocol = Literal["http", "grpc"]
LOOPBACK = "127.0.0.1"  # where `trtbuild serve` listens unless --host says otherwise
# where a deployed server listens (trtbuild deploy's pods and Slurm tasks): other machines reach
# it by the pod's or node's address, which is what rendering a deployment asks for
DEPLOY_HOST = "0.0.0.0"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- limits (the one model: what an engine is built for, and what a deployment serves) ------------
class Limits(StrictModel):
    """The sequence limits an engine is built for. No cross-field rule here: what TensorRT-LLM
    accepts depends on the build (chunked context lets max_num_tokens be below max_input_len), so
    builder/validate.py judges a build's limits and ``ServingLimits`` a deployment's."""

    max_batch_size: int = Field(
        vocab.DEFAULT_MAX_BATCH_SIZE, ge=1, le=4096, description="sequences decoded together"
    )
    max_input_len: int = Field(vocab.DEFAULT_MAX_INPUT_LEN, ge=1, description="longest prompt")
    max_seq_len: int = Field(vocab.DEFAULT_MAX_SEQ_LEN, ge=2, description="prompt + output")
    max_num_tokens: int = Field(
        vocab.DEFAULT_MAX_NUM_TOKENS, ge=1, description="prefill tokens per scheduler step"
    )


class ServingLimits(Limits):
    """A deployment's limits: the engine's, plus the queue. The portable runtime enforces all of
    them per request."""

    max_queue_size: int = Field(
        vocab.DEFAULT_MAX_QUEUE_SIZE,
        ge=1,
        description="requests waiting beyond the free batch slots before new ones are refused",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServingLimits:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be below max_seq_len "
                f"({self.max_seq_len}) to leave room for output"
            )
        if self.max_num_tokens < self.max_input_len:
            raise ValueError(
                f"max_num_tokens ({self.max_num_tokens}) must be >= max_input_len "
                f"({self.max_input_len}) so the longest prompt can be prefilled"
            )
        return self


# -- repository ------------------------------------------------------------------------------------
class RepoSpec(StrictModel):
    """Everything the inflight-batching templates need; saved beside the rendered repository."""

    runtime: Runtime = "torch"
    engine_dir: Path
    tokenizer_dir: Path
    streaming: bool = Field(True, description="decoupled tensorrt_llm model (token streaming)")
    bls_decoupled: bool = Field(
        False,
        description="decoupled tensorrt_llm_bls: it streams (upstream's decoupled_mode); false "
        "keeps it the plain /infer front",
    )
    limits: ServingLimits = ServingLimits()
    end_id: int = Field(description="generation stops at this token (tokenizer eos)")
    pad_id: int
    stop_token_ids: list[int] = Field(
        default_factory=list,
        description="more end tokens (e.g. a chat end token), sent as stop words",
    )
    exclude_input_in_output: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    preprocessing_instance_count: int = Field(1, ge=1)
    postprocessing_instance_count: int = Field(1, ge=1)
    bls_instance_count: int = Field(1, ge=1)
    max_queue_delay_microseconds: int = Field(0, ge=0)
    # portable runtime
    device: str = Field(
        "auto", description="torch device for the portable runtime: auto, cpu, cuda, cuda:N"
    )
    dtype: vocab.AutoDType = "auto"
    num_threads: int = Field(0, ge=0, description="torch threads (0: torch's default)")
    # TensorRT-LLM flavors, tensorrtllm and llmapi; the portable runtime reads only the two KV-cache
    # budget fields. `trtbuild repo` fills them from the engine directory and the plan.
    trtllm_version: str = Field(
        "1.2.1",
        description="TensorRT-LLM of the serving container: >= 0.20 names seed/min_tokens, "
        "older random_seed/min_length",
    )
    tp: int = Field(1, ge=1, le=64, description="tensor parallel: must match the engine")
    pp: int = Field(1, ge=1, le=64, description="pipeline parallel: must match the engine")
    max_beam_width: int = Field(1, ge=1, description="at most the engine's")
    kv_cache_dtype: vocab.KvDType = Field(
        "auto", description="auto: the model's dtype; fp8/int8 only if the engine was built so"
    )
    kv_cache_free_gpu_mem_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of free GPU memory for the KV cache (TensorRT-LLM, and the portable "
        "runtime on a GPU, which also caps it at max_batch_size x max_seq_len tokens)",
    )
    max_tokens_in_paged_kv_cache: int | None = Field(
        None, ge=1, description="cap on KV-cache tokens (None: the free-memory fraction decides)"
    )
    enable_kv_cache_reuse: bool = Field(
        True, description="prefix caching; needs paged context FMHA in the engine"
    )
    enable_chunked_context: bool = Field(False, description="prefill long prompts in chunks")
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = (
        "guaranteed_no_evict"
    )
    gpt_model_type: Literal["inflight_fused_batching", "inflight_batching"] = (
        "inflight_fused_batching"
    )
    decoding_mode: Literal["auto", "top_k", "top_p", "top_k_top_p", "beam_search"] = Field(
        "auto", description="auto: top_k_top_p for beam width 1, beam_search above"
    )
    gpu_device_ids: list[list[int]] = Field(
        default_factory=list,
        description="one GPU list per tensorrt_llm instance (replicas), e.g. [[0, 1], [2, 3]]",
    )
    instances: int = Field(
        1,
        ge=1,
        le=64,
        description="tensorrt_llm instances on one host (replicas), each with its own engine: "
        "one per gpu_device_ids group when those are given (the portable runtime: one GPU each), "
        "else that many CPU instances",
    )
    llmapi_model_py: str = Field(
        "/app/all_models/llmapi/tensorrt_llm/1/model.py",
        description="TensorRT-LLM's llmapi Triton model.py on the serving machine (NGC 1.x path)",
    )
    engine: EngineInfo | None = Field(
        None, description="what the engine directory says about itself (filled by trtbuild repo)"
    )

    @model_validator(mode="before")
    @classmethod
    def _instances_from_groups(cls, data: Any) -> Any:
        """GPU groups given and instances left at 1 (a spec saved before ``instances`` existed,
        or one edited by hand): one instance per group."""
        if isinstance(data, dict) and data.get("gpu_device_ids") and data.get("instances", 1) == 1:
            return {**data, "instances": len(data["gpu_device_ids"])}
        return data

    @model_validator(mode="after")
    def _instances_match_groups(self) -> RepoSpec:
        if self.gpu_device_ids and len(self.gpu_device_ids) != self.instances:
            raise ValueError(
                f"instances is {self.instances} but gpu_device_ids lists "
                f"{len(self.gpu_device_ids)} GPU group(s); give one group per instance"
            )
        return self


# -- server and client --------------------------------------------------------------------------
class ServeSpec(StrictModel):
    repo: Path
    host: str = LOOPBACK
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    tritonserver: Path | None = None
    startup_timeout: float = Field(300.0, gt=0)
    log_verbose: int = Field(0, ge=0)
    log_file: Path | None = None
    shutdown_grace: float = Field(20.0, gt=0, description="seconds between SIGTERM and SIGKILL")
    exit_timeout: int = Field(
        3,
        ge=0,
        description="tritonserver --exit-timeout-secs: how long a stop waits for open connections "
        "(an idle keep-alive counts) and in-flight requests before it exits anyway",
    )
    force: bool = Field(False, description="serve an engine built for another GPU or version")
    rendezvous_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the portable runtime's rank group (tensor parallelism): the loopback port "
        "rank 0's torch.distributed rendezvous listens on; 0 picks a free one",
    )
    load_models: list[str] | None = Field(
        None, description="load only these models (explicit model control); None: all"
    )
    latency_histograms: bool = Field(
        False,
        description="tritonserver --metrics-config=histogram_latencies=true: per-model "
        "first-response (time to first token) histograms, where the Triton build has them",
    )
    dry_run: bool = Field(False, description="print the command that would serve; run nothing")


class DemoSpec(StrictModel):
    workdir: Path | None = Field(None, description="keep model/, engine/ and repository/ here")
    force: bool = False
    http_port: int = Field(0, ge=0, le=65535, description="0: a free port")
    grpc_port: int = Field(0, ge=0, le=65535, description="0: a free port")
    max_tokens: int = Field(48, ge=1)
    seed: int = 0


class SamplingSpec(StrictModel):
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)


class InferSpec(StrictModel):
    prompt: str
    url: str = f"{LOOPBACK}:8001"
    protocol: Protocol = "grpc"
    stream: bool = False
    max_tokens: int = Field(64, ge=1)
    model: str = "ensemble"
    sampling: SamplingSpec = SamplingSpec()
    stop_words: list[str] = Field(default_factory=list)
    end_id: int | None = None
    timeout: float = Field(120.0, gt=0)


# -- engine (issue 3) ------------------------------------------------------------------------------
# Names and aliases live in trtbuild.vocab: every field below accepts bf16 as bfloat16, int8 as int8-sq.
EngineDtype = vocab.AutoDType
EngineQuant = vocab.Quant
KvCacheDtype = vocab.KvDType


class EngineSpec(StrictModel):
    """What ``trtbuild engine`` was asked for.

    ``None`` means "not given": the value comes from ``plan`` (a ``trtbuild plan`` JSON file) when
    it has one, else from the model and trtbuild's defaults (``trtbuild.builder.settings``).
    """

    checkpoint: Path = Field(description="Hugging Face checkpoint directory")
    out: Path = Field(description="engine directory to write")
    runtime: Runtime = "tensorrtllm"
    gpu: str | None = Field(None, description="target GPU name (default: the one detected here)")
    tp: int | None = Field(None, ge=1, le=64)
    pp: int | None = Field(None, ge=1, le=64)
    dtype: EngineDtype | None = None
    quant: EngineQuant | None = Field(None, description="weight quantization (ModelOpt)")
    kv_cache_dtype: KvCacheDtype | None = None
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_input_len: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=2)
    max_num_tokens: int | None = Field(None, ge=1)
    chunked_context: bool | None = Field(
        None, description="prompts longer than max_num_tokens are prefilled in chunks"
    )
    calib_size: int | None = Field(None, ge=1, description="calibration samples for quantization")
    calib_dataset: str | None = Field(None, description="HF dataset name or local path")
    plan: Path | None = None
    dry_run: bool = False
    force: bool = False
    use_cache: bool = True


# -- download and plan (issue 4) --------------------------------------------------------------------
PlanDtype = vocab.AutoDType16
PlanQuant = vocab.AutoQuant
PlanKvDtype = vocab.KvDType


class DownloadSpec(StrictModel):
    """``trtbuild download``: a Hub repo id (or a local checkpoint directory) to a serving checkpoint."""

    source: str = Field(min_length=1, description="owner/name on the Hub, or a local directory")
    revision: str | None = Field(None, description="branch, tag or commit (default: main)")
    local_dir: Path | None = Field(None, description="put the files here instead of the HF cache")
    force: bool = Field(False, description="write into a --local-dir trtbuild did not make")
    all_weights: bool = Field(False, description="also fetch .bin/.pth duplicates of the weights")


class PlanRequest(StrictModel):
    """What a deployment must do; the planner turns it plus model and GPU facts into a ``Plan``."""

    gpus_per_node: int = Field(1, ge=1, le=64)
    nodes: int = Field(1, ge=1, le=1024)
    dtype: PlanDtype = Field("auto", description="activations and unquantized weights")
    quant: PlanQuant = Field("auto", description="weights (auto: the checkpoint's, else none)")
    kv_cache_dtype: PlanKvDtype = Field("auto", description="auto: same as dtype")
    max_input_len: int = Field(2048, ge=1)
    max_output_len: int = Field(512, ge=1)
    concurrency: int = Field(64, ge=1, description="sequences in flight across all replicas")
    price_per_gpu_hour: float | None = Field(None, gt=0)
    runtime: Literal["tensorrtllm", "torch"] = Field(
        "tensorrtllm",
        description="what fills the tensorrt_llm slot: TensorRT-LLM (a KV cache of "
        "kv_cache_free_gpu_mem_fraction of the free memory) or trtbuild's portable runtime (one "
        "slot of max_seq_len per sequence of max_batch_size, no more; no PP, no quantization)",
    )


class PlanSpec(StrictModel):
    """``trtbuild plan``: a model (checkpoint dir, config.json or well-known repo id) on a GPU type."""

    model: str = Field(min_length=1)
    gpu: str = Field(min_length=1)
    request: PlanRequest = PlanRequest()


# -- repo, check (issue 5) ---------------------------------------------------------------------------
class EngineInfo(StrictModel):
    """What an engine directory says about itself (its ``config.json``, ``trtbuild-engine.json``,
    ``hf_quant_config.json``), recorded in the ``RepoSpec`` so the consistency rules run on the spec
    alone. Limits are ceilings only for TensorRT-LLM engines, where they are compiled in."""

    runtime: Runtime
    trtllm_version: str | None = None
    gpu: str | None = None
    sm: int | None = None
    tp: int | None = Field(None, description="None: not fixed by the engine (a checkpoint)")
    pp: int | None = None
    world_size: int | None = None
    rank_files: int | None = Field(None, description="rank{N}.engine files present (tensorrtllm)")
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    max_beam_width: int = 1
    max_position_embeddings: int | None = None
    dtype: str | None = None
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    paged_context_fmha: bool | None = None
    prequantized: bool = False


class RepoOptions(StrictModel):
    """``trtbuild repo``: an engine directory (or a saved spec) to a Triton model repository.

    ``None`` means "not given": from an engine directory, trtbuild's default; with ``spec``, the
    saved spec's value (the options given override it)."""

    engine_dir: Path | None = None
    spec: Path | None = Field(None, description="a saved trtbuild-repo.json to render again")
    out: Path
    runtime: Runtime | None = Field(None, description="default: the engine's manifest")
    tokenizer: Path | None = Field(None, description="default: the engine's tokenizer")
    streaming: bool | None = None
    bls_decoupled: bool | None = Field(None, description="decoupled tensorrt_llm_bls (it streams)")
    plan: Path | None = None
    instances: int | None = Field(
        None, ge=1, le=64, description="tensorrt_llm instances on this host (replicas)"
    )
    device: str | None = Field(
        None, description="the portable runtime's device: auto, cpu, cuda, cuda:N"
    )
    force: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> RepoOptions:
        if (self.engine_dir is None) == (self.spec is None):
            raise ValueError(
                "give an engine directory or --spec FILE (a saved trtbuild-repo.json), one of them"
            )
        return self


class CheckOptions(StrictModel):
    """``trtbuild check``: lint an existing repository (trtbuild's or hand-written)."""

    repo: Path
    engine: Path | None = Field(None, description="engine directory to check against")
    strict: bool = Field(False, description="warnings fail too")


# -- perf (issue 11) ---------------------------------------------------------------------------------
class PerfSla(StrictModel):
    """A request is "good" (counts toward goodput) when it meets every bound given."""

    ttft_ms: float | None = Field(None, gt=0, description="time to first token, at most")
    itl_ms: float | None = Field(None, gt=0, description="mean inter-token latency, at most")

    @property
    def given(self) -> bool:
        return self.ttft_ms is not None or self.itl_ms is not None


class PerfSpec(StrictModel):
    """``trtbuild perf``: a perf_analyzer load sweep against the served ensemble, core model or BLS.

    ``repo`` alone: serve it for the run (free ports) and stop it after. ``url`` alone: a running
    server. Both: the running server, with the repository read for the run's context.
    """

    repo: Path | None = Field(None, description="a model repository to serve (or describe)")
    url: str | None = Field(None, description="gRPC HOST:PORT of a running server")
    metrics_url: str | None = Field(
        None, description="Prometheus endpoint (default: http://HOST:8002/metrics of --url)"
    )
    models: list[str] = Field(default_factory=lambda: ["ensemble"], min_length=1)
    concurrency: list[int] | None = Field(None, description="requests in flight, one level each")
    request_rate: list[float] | None = Field(None, description="requests/s, one level each")
    input_len: int = Field(128, ge=1, description="prompt tokens (synthetic prompts)")
    output_len: int = Field(64, ge=1, description="generated tokens per request, end ignored")
    dataset: Path | None = Field(None, description="JSONL prompts instead of synthetic ones")
    num_prompts: int | None = Field(
        None, ge=1, description="distinct prompts to cycle through (default: 100, or the dataset)"
    )
    stream: bool | None = Field(None, description="None: stream every model that can")
    tokenizer: Path | None = Field(None, description="default: the served preprocessing model's")
    seed: int = Field(0, ge=0)
    measurement_interval_ms: int = Field(4000, ge=100, description="perf_analyzer window")
    stability_percent: float = Field(
        50.0, gt=0, description="perf_analyzer --stability-percentage (999: take any 3 windows)"
    )
    max_trials: int = Field(10, ge=3, description="windows perf_analyzer may try per level")
    warmup_ms: int = Field(1500, ge=0, description="a discarded run before each level (0: none)")
    sla: PerfSla = PerfSla()
    gpus: int | None = Field(None, ge=0, description="GPUs serving (for tokens/s per GPU)")
    label: str | None = Field(None, description="names the model in titles and series keys")
    out: Path
    force: bool = Field(False, description="replace a non-empty out")
    report: Literal["html", "md"] = "html"
    genai_perf_export: bool = Field(False, description="also write genai-perf profile exports")
    keep_raw: bool = Field(False, description="keep perf_analyzer's raw exports under out/raw")
    tritonserver: Path | None = None
    startup_timeout: float = Field(300.0, gt=0)
    sample_interval_s: float = Field(0.5, gt=0, description="metrics endpoint sampling period")

    @model_validator(mode="after")
    def _consistent(self) -> PerfSpec:
        if self.repo is None and self.url is None:
            raise ValueError("give a repository to serve (REPO) or a running server (--url)")
        if self.concurrency is not None and self.request_rate is not None:
            raise ValueError("give --concurrency or --request-rate, not both")
        if self.concurrency is not None and (
            not self.concurrency or any(c < 1 for c in self.concurrency)
        ):
            raise ValueError("--concurrency levels must be integers >= 1, e.g. 1,4,16")
        if self.request_rate is not None and (
            not self.request_rate or any(r <= 0 for r in self.request_rate)
        ):
            raise ValueError("--request-rate levels must be > 0 requests/s, e.g. 2,8")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a --model is given twice; name each model once")
        return self

    @property
    def mode(self) -> Literal["concurrency", "request_rate"]:
        return "request_rate" if self.request_rate is not None else "concurrency"

    @property
    def levels(self) -> list[float]:
        if self.request_rate is not None:
            return list(self.request_rate)
        return [float(c) for c in (self.concurrency or [1, 4, 16])]


class PerfHistorySpec(StrictModel):
    """``trtbuild perf history``: a series' trend from a history database."""

    db: Path
    series: str | None = Field(None, description="a series key, or a unique part of one")
    metrics: list[str] = Field(default_factory=list, description="default: the headline metrics")
    last: int = Field(20, ge=1, description="show the last N runs")
    plot: Path | None = Field(None, description="write the trend plot (PNG) here")
    force: bool = Field(False, description="replace an existing plot file")


class PerfNightlySpec(StrictModel):
    """``scripts/nightly_perf.sh MATRIX.yaml``: run a matrix, append it, flag regressions."""

    matrix: Path
    db: Path | None = Field(
        None, description="default: the matrix's history, else $TRTBUILD_PERF_DB"
    )
    compare_only: bool = Field(False, description="measure nothing: compare the latest runs")


# -- deploy (issue 13) -------------------------------------------------------------------------------
class DeploySpec(StrictModel):
    """``trtbuild deploy k8s|slurm``: manifests (or an sbatch script) that serve a rendered
    repository the way its plan lays it out."""

    target: Literal["k8s", "slurm"]
    repo: Path = Field(description="a repository rendered by 'trtbuild repo'")
    out: Path = Field(description="k8s: a directory of manifests; slurm: the sbatch script")
    plan: Path | None = Field(None, description="the 'trtbuild plan --json' file it was built from")
    perf: Path | None = Field(
        None, description="a 'trtbuild perf' results.json of one replica: its capacity"
    )
    image: str | None = Field(
        None, description="container image (default: the compatibility matrix)"
    )
    name: str | None = Field(
        None,
        pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$",
        description="object names (a DNS label of at most 40 characters)",
    )
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    min_replicas: int | None = Field(None, ge=1, le=1000)
    max_replicas: int | None = Field(None, ge=1, le=1000)
    sla_ttft_ms: float | None = Field(
        None, gt=0, description="TTFT p99 alert bound (default: the perf run's SLA, else 1000)"
    )
    storage: Literal["pvc", "download"] = Field(
        "pvc", description="model files from a PersistentVolumeClaim, or downloaded at start"
    )
    pvc: str | None = Field(None, description="an existing claim (default: one is created)")
    pvc_size: str | None = Field(None, pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    storage_class: str | None = None
    init_image: str | None = Field(
        None, description="--storage download: an image with trtbuild installed"
    )
    source: str | None = Field(
        None, description="--storage download: Hub repo id[@revision] (default: the engine's)"
    )
    nodes: int | None = Field(None, ge=1, le=1024, description="slurm: nodes of the job")
    partition: str | None = None
    time_limit: str = Field("24:00:00", pattern=r"^[0-9:-]+$")
    force: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> DeploySpec:
        lo, hi = self.min_replicas, self.max_replicas
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"--min-replicas {lo} is above --max-replicas {hi}")
        if self.storage == "download" and self.pvc is not None:
            raise ValueError("--pvc is for --storage pvc; drop it, or use --storage pvc")
        return self


RepoSpec.model_rebuild()
