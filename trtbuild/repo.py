"""``trtbuild repo``: an engine directory, its tokenizer and a plan to a Triton model repository.

``build_repo_spec`` reads everything the repository must agree with and returns a ``RepoSpec``:

- the engine directory: TensorRT-LLM's ``config.json`` (``version``, ``pretrained_config.mapping``
  and ``quantization``, ``build_config`` limits and ``plugin_config``) and its ``rank{N}.engine``
  files; for the LLM-API flavor the checkpoint's ``config.json`` and ``hf_quant_config.json``
  (pre-quantized FP8/NVFP4 ModelOpt exports); trtbuild's ``trtbuild-engine.json`` when present;
- the tokenizer: the end token (``generation_config.json`` / ``tokenizer_config.json``), the pad
  token, and every other end token (Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``) as extra
  stop tokens;
- a ``trtbuild plan`` file: serving limits, KV-cache memory fraction, replicas.

The engine's facts travel in ``spec.engine`` so the consistency rules (``ensembles/_rules.py``)
run on the spec alone, at render time. ``make_repository`` then renders it atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtbuild._atomic import check_writable
from trtbuild._jsonfile import load_json
from trtbuild.errors import IncompatibleArtifact, SpecError, first_error
from trtbuild.specs import EngineInfo, RepoOptions, RepoSpec, Runtime, RuntimeLimits

TOKENIZER_JSON = "tokenizer.json"
# chat end tokens that end a turn beside the tokenizer's eos (added as stop tokens when present)
CHAT_END_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
HF_QUANT_CONFIG = "hf_quant_config.json"
_RANK_ENGINE = re.compile(r"^rank(\d+)\.engine$")


# -- the tokenizer ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenIds:
    end_id: int
    pad_id: int
    stop_token_ids: tuple[int, ...] = ()
    tokens: dict[int, str] = field(default_factory=dict)  # id -> text, for notes

    def describe(self) -> str:
        def name(i: int) -> str:
            return f"{i} ({self.tokens[i]})" if i in self.tokens else str(i)

        extra = ", ".join(name(i) for i in self.stop_token_ids) or "none"
        return f"end_id {name(self.end_id)}, pad_id {name(self.pad_id)}, more end tokens: {extra}"


def _read_json(path: Path) -> dict[str, Any] | None:
    """An optional file: None when it is absent or holds no JSON object."""
    if not path.is_file():
        return None
    data = load_json(path, fix="fix or replace it")
    return data if isinstance(data, dict) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def tokenizer_ids(tokenizer_dir: Path, *, model_dir: Path | None = None) -> TokenIds:
    """End, pad and extra end token ids of a Hugging Face tokenizer directory.

    ``end_id`` is the tokenizer's eos (what TensorRT-LLM's preprocessing defaults to), else the
    first ``eos_token_id`` of ``generation_config.json``; every other id there, and chat end tokens
    the vocabulary has, become ``stop_token_ids``. ``pad_id`` falls back to ``end_id``.
    """
    tokenizer_dir = Path(tokenizer_dir)
    vocab: dict[str, int] = {}
    tok = _read_json(tokenizer_dir / TOKENIZER_JSON) or {}
    model_vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update({k: v for k, v in model_vocab.items() if isinstance(v, int)})
    for added in tok.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            vocab[str(added.get("content"))] = added["id"]
    config = _read_json(tokenizer_dir / "tokenizer_config.json") or {}
    for key, added in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(added, dict) and str(key).isdigit():
            vocab.setdefault(str(added.get("content")), int(key))
    special = _read_json(tokenizer_dir / "special_tokens_map.json") or {}
    gen = _read_json(tokenizer_dir / "generation_config.json")
    if gen is None and model_dir is not None:
        gen = _read_json(Path(model_dir) / "generation_config.json")
    gen = gen or {}

    def token_id(value: Any) -> int | None:
        text = value.get("content") if isinstance(value, dict) else value
        return vocab.get(text) if isinstance(text, str) else None

    eos_ids = _ids(gen.get("eos_token_id"))
    eos_token = _first(token_id(config.get("eos_token")), token_id(special.get("eos_token")))
    end_id = eos_token if eos_token is not None else (eos_ids[0] if eos_ids else None)
    if end_id is None:
        raise SpecError(
            f"no end token in {tokenizer_dir} (generation_config.json eos_token_id, or "
            "tokenizer_config.json eos_token): generation would never stop; pass --tokenizer with "
            "the model's Hugging Face tokenizer"
        )
    chat_ends = [vocab[t] for t in CHAT_END_TOKENS if t in vocab]
    stops = tuple(dict.fromkeys(i for i in [*eos_ids, *chat_ends] if i != end_id))
    pad_ids = _ids(gen.get("pad_token_id"))
    pad_token = _first(token_id(config.get("pad_token")), token_id(special.get("pad_token")))
    pad_id = pad_ids[0] if pad_ids else (pad_token if pad_token is not None else end_id)
    names = {v: k for k, v in vocab.items() if v in {end_id, pad_id, *stops}}
    return TokenIds(end_id=end_id, pad_id=pad_id, stop_token_ids=stops, tokens=names)


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def find_tokenizer(
    engine_dir: Path, runtime: Runtime, explicit: Path | None, manifest_dir: str | None
) -> Path:
    """``--tokenizer``, else the manifest's tokenizer dir, else ``tokenizer/`` or the engine dir."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif manifest_dir is not None:
        candidates = [engine_dir / manifest_dir]
    else:
        candidates = [engine_dir / "tokenizer", engine_dir]
    for candidate in candidates:
        if (candidate / TOKENIZER_JSON).is_file():
            return candidate
    where = candidates[0]
    raise SpecError(
        f"no {TOKENIZER_JSON} in {where}: trtbuild's pre/postprocessing need the model's fast "
        "tokenizer; pass --tokenizer with the Hugging Face checkpoint directory (or save one "
        "with AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
    )


# -- the engine directory -----------------------------------------------------------------------------
def read_engine_config(engine_dir: Path) -> dict[str, Any] | None:
    """TensorRT-LLM's engine ``config.json`` (``pretrained_config`` + ``build_config``), or None."""
    config = _read_json(Path(engine_dir) / "config.json")
    pretrained = isinstance((config or {}).get("pretrained_config"), dict)
    if config and pretrained and isinstance(config.get("build_config"), dict):
        return config
    return None


def rank_engine_files(engine_dir: Path) -> int:
    return sum(1 for p in Path(engine_dir).iterdir() if _RANK_ENGINE.match(p.name))


def layout_runtime(engine_dir: Path) -> Runtime | None:
    """``tensorrtllm`` for a TensorRT-LLM engine directory; None for anything else."""
    return "tensorrtllm" if read_engine_config(engine_dir) is not None else None


def tensorrtllm_info(engine_dir: Path, manifest: Any = None) -> EngineInfo:
    config = read_engine_config(engine_dir)
    if config is None:
        raise SpecError(
            f"{engine_dir}/config.json is not a TensorRT-LLM engine config (no pretrained_config/"
            "build_config); build the engine with 'trtbuild engine', or pick another --runtime"
        )
    pretrained = config["pretrained_config"]
    build = config["build_config"]
    mapping = pretrained.get("mapping") or {}
    quant = pretrained.get("quantization") or {}
    plugins = build.get("plugin_config") or {}
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    version = config.get("version") or (manifest.software.tensorrt_llm if manifest else None)
    return EngineInfo(
        runtime="tensorrtllm",
        trtllm_version=str(version) if version else None,
        gpu=manifest.gpu.name if manifest and manifest.gpu else None,
        sm=manifest.gpu.sm if manifest and manifest.gpu else None,
        tp=tp,
        pp=pp,
        world_size=int(mapping.get("world_size", tp * pp)),
        rank_files=rank_engine_files(engine_dir),
        max_batch_size=_int(build.get("max_batch_size")),
        max_input_len=_int(build.get("max_input_len")),
        max_seq_len=_int(build.get("max_seq_len")),
        max_num_tokens=_int(build.get("max_num_tokens")),
        max_beam_width=_int(build.get("max_beam_width")) or 1,
        max_position_embeddings=_int(pretrained.get("max_position_embeddings")),
        dtype=pretrained.get("dtype"),
        quant_algo=quant.get("quant_algo"),
        kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
        paged_context_fmha=(
            bool(plugins["use_paged_context_fmha"]) if "use_paged_context_fmha" in plugins else None
        ),
    )


def checkpoint_info(engine_dir: Path, runtime: Runtime, manifest: Any = None) -> EngineInfo:
    """A Hugging Face checkpoint served as is (``llmapi``, ``torch``)."""
    config = _read_json(Path(engine_dir) / "config.json")
    if config is None:
        raise SpecError(
            f"{engine_dir} has no config.json; pass the engine directory 'trtbuild engine' wrote, "
            "or a Hugging Face checkpoint directory"
        )
    hf_quant = (_read_json(Path(engine_dir) / HF_QUANT_CONFIG) or {}).get("quantization") or {}
    quant_algo = hf_quant.get("quant_algo")
    kv_algo = hf_quant.get("kv_cache_quant_algo")
    info: dict[str, Any] = {}
    if manifest is not None:
        q = manifest.quantization
        quant_algo = quant_algo or q.quant_algo
        kv_algo = kv_algo or q.kv_cache_quant_algo or (q.kv_cache or "").upper() or None
        info = {
            "tp": manifest.parallel.tp,
            "pp": manifest.parallel.pp,
            "world_size": manifest.parallel.world_size,
            "trtllm_version": manifest.software.tensorrt_llm,
            "gpu": manifest.gpu.name if manifest.gpu else None,
            "sm": manifest.gpu.sm if manifest.gpu else None,
            "dtype": manifest.dtype,
        }
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    return EngineInfo(
        runtime=runtime,
        max_position_embeddings=_int(text.get("max_position_embeddings")),
        quant_algo=quant_algo,
        kv_cache_quant_algo=kv_algo,
        prequantized=bool(hf_quant.get("quant_algo")),
        **info,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# -- the spec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoBuild:
    spec: RepoSpec
    notes: list[str]


def build_repo_spec(
    engine_dir: Path,
    *,
    runtime: Runtime | None = None,
    tokenizer: Path | None = None,
    streaming: bool = True,
    bls_decoupled: bool = False,
    plan: Path | None = None,
    force: bool = False,
    runtime_info: Any = None,
) -> RepoBuild:
    """The ``RepoSpec`` for serving ``engine_dir``, and notes for the user.

    ``runtime_info`` (a ``builder.manifest.RuntimeInfo``) is where the engine will run; by default
    this machine's GPU and TensorRT-LLM, each checked only when detected. An engine built for
    another GPU or TensorRT-LLM version is refused (``IncompatibleArtifact``) unless ``force``.
    """
    from trtbuild.builder.manifest import MANIFEST, RuntimeInfo, check_compatible, detect_runtime
    from trtbuild.builder.manifest import read_manifest as read_engine_manifest

    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise SpecError(f"{engine_dir} is not a directory; pass the engine directory to serve")
    notes: list[str] = []
    manifest = read_engine_manifest(engine_dir) if (engine_dir / MANIFEST).is_file() else None
    runtime = _pick_runtime(engine_dir, runtime, manifest)
    found: RuntimeInfo = runtime_info if runtime_info is not None else detect_runtime()
    if manifest is not None:
        for problem in check_compatible(manifest, found, force=force, where=engine_dir):
            notes.append(f"warning (--force): {problem}")
        if runtime != "torch" and found.sm is None and found.trtllm_version is None:
            notes.append(
                "no GPU or TensorRT-LLM here: the engine's GPU and versions were not checked "
                "(run 'trtbuild repo' in the serving container to check them)"
            )
    if runtime == "tensorrtllm":
        info = tensorrtllm_info(engine_dir, manifest)
        if manifest is None:
            notes.append(f"{engine_dir} has no {MANIFEST}: the GPU it was built for is unknown")
            built, here = info.trtllm_version, found.trtllm_version
            if built and here and built != here:
                problem = f"built with TensorRT-LLM {built} but the runtime has {here}"
                if not force:
                    raise IncompatibleArtifact(
                        f"engine {engine_dir}: {problem}. Rebuild it in the serving container, "
                        "or pass --force to try anyway"
                    )
                notes.append(f"warning (--force): {problem}")
    else:
        info = checkpoint_info(engine_dir, runtime, manifest)
    tokenizer_dir = find_tokenizer(
        engine_dir, runtime, tokenizer, manifest.tokenizer_dir if manifest else None
    )
    ids = tokenizer_ids(tokenizer_dir, model_dir=engine_dir)
    notes.append(f"tokenizer {tokenizer_dir}: {ids.describe()}")

    values: dict[str, Any] = {
        "runtime": runtime,
        "engine_dir": engine_dir.resolve(),
        "tokenizer_dir": Path(tokenizer_dir).resolve(),
        "streaming": streaming,
        "bls_decoupled": bls_decoupled,
        "end_id": ids.end_id,
        "pad_id": ids.pad_id,
        "stop_token_ids": list(ids.stop_token_ids),
        "engine": info,
        "limits": _engine_limits(info, manifest, notes),
    }
    if info.tp is not None and info.pp is not None:
        values.update(tp=info.tp, pp=info.pp)
    if info.trtllm_version:
        values["trtllm_version"] = info.trtllm_version
    from trtbuild.ensembles._rules import engine_kv_dtype

    kv = engine_kv_dtype(info.kv_cache_quant_algo)
    if runtime != "torch":
        values["kv_cache_dtype"] = kv
    if runtime == "tensorrtllm":
        values["max_beam_width"] = info.max_beam_width
        paged = info.paged_context_fmha is not False
        values["enable_kv_cache_reuse"] = paged
        chunked = bool(manifest and manifest.settings.chunked_context)
        values["enable_chunked_context"] = paged and chunked
        if not paged:
            notes.append(
                "the engine has no paged context FMHA: KV-cache reuse and chunked context are off"
            )
    elif runtime == "llmapi":
        args = (manifest.llm_args if manifest else None) or {}
        values["enable_chunked_context"] = bool(args.get("enable_chunked_prefill", False))
        dtype = args.get("dtype") or (info.dtype if manifest else None)
        if dtype in ("float16", "bfloat16", "float32") and not info.prequantized:
            values["dtype"] = dtype
        if info.prequantized:
            notes.append(
                f"pre-quantized checkpoint ({HF_QUANT_CONFIG}): weights {info.quant_algo}, "
                f"KV cache {info.kv_cache_quant_algo or 'model dtype'}"
            )
    if plan is not None:
        _apply_plan(plan, values, info, runtime, notes)
    try:
        spec = RepoSpec(**values)
    except ValueError as exc:  # pydantic's ValidationError: one line naming the field
        raise SpecError(f"invalid repository settings: {first_error(exc)}") from exc
    return RepoBuild(spec=spec, notes=notes)


def _pick_runtime(engine_dir: Path, asked: Runtime | None, manifest: Any) -> Runtime:
    layout = layout_runtime(engine_dir)
    if manifest is not None:
        if asked is not None and asked != manifest.runtime:
            raise SpecError(
                f"{engine_dir} was built for --runtime {manifest.runtime} (trtbuild-engine.json); "
                f"render it with --runtime {manifest.runtime}, or rebuild it with 'trtbuild engine "
                f"--runtime {asked}'"
            )
        runtime: Runtime = manifest.runtime
        return runtime
    if asked is not None:
        if asked == "tensorrtllm" and layout is None:
            raise SpecError(
                f"{engine_dir} is not a TensorRT-LLM engine directory (config.json with "
                "pretrained_config and build_config, rank{N}.engine); build one with 'trtbuild "
                "engine', or use --runtime llmapi for a Hugging Face checkpoint"
            )
        if asked != "tensorrtllm" and layout is not None:
            raise SpecError(
                f"{engine_dir} holds a TensorRT-LLM engine; render it with --runtime tensorrtllm"
            )
        return asked
    if layout is not None:
        return layout
    raise SpecError(
        f"{engine_dir} has no trtbuild-engine.json and is not a TensorRT-LLM engine; say how to "
        "serve it: --runtime llmapi (TensorRT-LLM's PyTorch backend) or --runtime torch (portable)"
    )


def _engine_limits(info: EngineInfo, manifest: Any, notes: list[str]) -> RuntimeLimits:
    """Serving limits: the engine's compiled ones, else the manifest's, else trtbuild's defaults
    (capped by the model's context)."""
    if info.runtime == "tensorrtllm" and info.max_batch_size and info.max_seq_len:
        max_seq = info.max_seq_len
        max_input = min(info.max_input_len or max_seq - 1, max_seq - 1)
        if info.max_input_len and max_input < info.max_input_len:
            notes.append(
                f"the engine's max_input_len equals max_seq_len ({max_seq}): prompts are limited "
                f"to {max_input} tokens to leave room for output"
            )
        max_tokens = max(info.max_num_tokens or max_input, max_input)
        return RuntimeLimits(
            max_batch_size=info.max_batch_size,
            max_input_len=max_input,
            max_seq_len=max_seq,
            max_num_tokens=max_tokens,
        )
    if manifest is not None:
        lim = manifest.limits
        return RuntimeLimits(
            max_batch_size=lim.max_batch_size,
            max_input_len=lim.max_input_len,
            max_seq_len=lim.max_seq_len,
            max_num_tokens=max(lim.max_num_tokens, lim.max_input_len),
        )
    limits = RuntimeLimits()
    context = info.max_position_embeddings
    if context and context < limits.max_seq_len:
        limits = RuntimeLimits(
            max_batch_size=limits.max_batch_size,
            max_input_len=context // 2,
            max_seq_len=context,
            max_num_tokens=max(limits.max_num_tokens, context // 2),
        )
    return limits


def _apply_plan(
    path: Path, values: dict[str, Any], info: EngineInfo, runtime: Runtime, notes: list[str]
) -> None:
    from trtbuild.plan import read_plan

    plan = read_plan(path)
    if info.tp is not None and (plan.tp, plan.pp) != (info.tp, info.pp):
        raise SpecError(
            f"{path} plans TP {plan.tp} x PP {plan.pp} but the engine is TP {info.tp} x PP "
            f"{info.pp}; render with the plan the engine was built from, or rebuild the engine "
            f"with 'trtbuild engine --plan {path}'"
        )
    values["limits"] = plan.runtime_limits()
    values["kv_cache_free_gpu_mem_fraction"] = plan.kv_cache_free_gpu_mem_fraction
    if runtime != "torch":
        values.update(tp=plan.tp, pp=plan.pp)
    world = plan.tp * plan.pp
    if plan.replicas > 1 and runtime in ("tensorrtllm", "llmapi"):
        if plan.nodes == 1 and plan.replicas * world <= plan.gpus_per_node:
            values["gpu_device_ids"] = [
                list(range(r * world, (r + 1) * world)) for r in range(plan.replicas)
            ]
            notes.append(
                f"{plan.replicas} replicas: {plan.replicas} tensorrt_llm instances on GPUs "
                + "; ".join(",".join(map(str, g)) for g in values["gpu_device_ids"])
            )
        else:
            notes.append(
                f"the plan has {plan.replicas} replicas across {plan.nodes} node(s): serve one "
                "copy of this repository per replica"
            )


# -- rendering ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoResult:
    path: Path
    spec: RepoSpec
    notes: list[str]

    def summary(self) -> str:
        from trtbuild.ensembles import kind_for

        models = ", ".join(sorted(kind_for(self.spec).MODELS))
        spec = self.spec
        lines = [
            f"{self.path}",
            f"  flavor     {spec.runtime} ({kind_for(spec).KIND}): {models}",
            f"  engine     {spec.engine_dir}",
            f"  tokenizer  {spec.tokenizer_dir}",
            f"  streaming  {'yes (decoupled)' if spec.streaming else 'no'}"
            f"{' (BLS too)' if spec.bls_decoupled else ''}; "
            f"max_batch_size {spec.limits.max_batch_size}, max_seq_len {spec.limits.max_seq_len}",
        ]
        if spec.runtime != "torch":
            lines.append(
                f"  parallel   TP {spec.tp} x PP {spec.pp}"
                + (f", {len(spec.gpu_device_ids)} instances" if spec.gpu_device_ids else "")
                + f"; TensorRT-LLM {spec.trtllm_version}"
            )
        return "\n".join(lines)


def make_repository(options: RepoOptions, *, runtime_info: Any = None) -> RepoResult:
    """``trtbuild repo``: build the spec from the engine directory, then render it atomically."""
    from trtbuild._safepath import check_safe_path
    from trtbuild.repository import render_repository

    # Triton's Python backend hands these paths to `bash -c` unquoted: refuse them up front
    check_safe_path(Path(options.out).resolve(), "--out")
    check_safe_path(Path(options.engine_dir).resolve(), "the engine directory")
    check_writable(Path(options.out), force=options.force)
    built = build_repo_spec(
        options.engine_dir,
        runtime=options.runtime,
        tokenizer=options.tokenizer,
        streaming=options.streaming,
        bls_decoupled=options.bls_decoupled,
        plan=options.plan,
        force=options.force,
        runtime_info=runtime_info,
    )
    check_safe_path(built.spec.tokenizer_dir, "the tokenizer directory")
    path = render_repository(built.spec, Path(options.out), force=options.force)
    return RepoResult(path=path, spec=built.spec, notes=built.notes)
