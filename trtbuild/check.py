"""``trtbuild check``: lint a Triton model repository for TensorRT-LLM, trtbuild's or hand-written.

Every finding names the model, what is wrong and the fix, one per line:
``MODEL: message (fix: ...)``. What is checked (each a mistake that looks right and is not):

- every ``config.pbtxt`` parses as Triton's ``ModelConfig``; an unfilled ``${placeholder}`` (what
  ``fill_template.py`` leaves behind) is reported with its file and line, not as a protobuf trace;
- nothing is declared twice (inputs, outputs, parameter keys: protobuf silently keeps the last);
- ensemble wiring: every step input is produced by an ensemble input or an earlier step, dtypes
  agree, every produced tensor is used;
- decoupled: a BLS that streams needs a decoupled ``tensorrt_llm``; trtbuild's spec and the llmapi
  model's ``model.yaml`` must agree with ``config.pbtxt``;
- batch sizes: one ``max_batch_size`` for every model, within the engine's
  ``build_config.max_batch_size``;
- the engine: ``gpt_model_path`` exists, is a TensorRT-LLM engine whose ``rank{N}.engine`` files
  match ``mapping.world_size`` (TP x PP), ``gpu_device_ids`` groups of that size; an FP8 KV cache
  in ``model.yaml`` only for a checkpoint made with one;
- the prompt is not echoed (``exclude_input_in_output``) unless trtbuild's spec says it was asked;
- end tokens: the tokenizer directory has its files, and every end token of
  ``generation_config.json`` (Llama-3's ``<|eot_id|>`` and ``<|end_of_text|>``) stops generation.

It never starts a server and never imports the model code.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild._safepath import unsafe_path_findings
from trtbuild.ensembles.upstream import LINES, Placeholder, facts, line_for
from trtbuild.errors import RuntimeFailure, SpecError
from trtbuild.findings import REPOSITORY, Finding, errors, summary
from trtbuild.specs import CheckOptions, RepoSpec

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
GPT_MODEL_TYPES = ("V1", "v1", "inflight_batching", "inflight_fused_batching")
REPO = REPOSITORY


class CheckFailed(RuntimeFailure):
    """``trtbuild check`` found errors, or warnings with ``--strict`` (printed on stdout). Exit 1."""


@dataclass(frozen=True)
class CheckResult:
    repo: Path
    findings: list[Finding]
    strict: bool = False

    @property
    def failed(self) -> bool:
        return bool(errors(self.findings) or (self.strict and self.findings))

    def summary(self) -> str:
        return summary(self.findings) if self.findings else "no findings"

    def raise_for_failure(self) -> None:
        if self.failed:
            why = " (--strict: warnings fail)" if self.strict and not errors(self.findings) else ""
            raise CheckFailed(f"{self.summary()} in {self.repo}{why}")


def run_check(options: CheckOptions) -> CheckResult:
    """``trtbuild check``: every finding, errors first, and whether the check failed."""
    found = check_repository(options)
    ordered = errors(found) + [f for f in found if f.severity != "error"]
    return CheckResult(Path(options.repo), ordered, options.strict)


@dataclass
class _Model:
    name: str
    dir: Path
    text: str
    config: Any  # ModelConfig, or None when it does not parse

    @property
    def params(self) -> dict[str, str]:
        if self.config is None:
            return {}
        return {k: v.string_value for k, v in self.config.parameters.items()}

    @property
    def decoupled(self) -> bool:
        return bool(self.config is not None and self.config.model_transaction_policy.decoupled)


# -- entry point ------------------------------------------------------------------------------------
def check_repository(options: CheckOptions) -> list[Finding]:
    """Every finding for ``options.repo`` (empty: clean). Raises ``SpecError`` for a directory
    that is not a model repository at all."""
    repo = Path(options.repo)
    if not repo.is_dir():
        raise SpecError(f"{repo} is not a directory; pass a Triton model repository")
    paths = sorted(repo.glob("*/config.pbtxt"))
    if not paths:
        raise SpecError(
            f"{repo} holds no */config.pbtxt; pass a Triton model repository (render one with "
            "'trtbuild repo')"
        )
    findings: list[Finding] = []
    models: dict[str, _Model] = {}
    for path in paths:
        model, found = _load(repo, path)
        models[model.name] = model
        findings += found
    spec, spec_findings = _saved_spec(repo)
    findings += spec_findings
    if spec is not None:
        from trtbuild.ensembles import kind_for

        for missing in (m for m in kind_for(spec).MODELS if m not in models):
            findings.append(
                Finding(missing, "is missing from the repository", "re-render with 'trtbuild repo'")
            )
    parsed = {name: m.config for name, m in models.items() if m.config is not None}
    findings += _wiring_findings(
        parsed, unparsed={n for n, m in models.items() if m.config is None}
    )
    core = _core(models)
    findings += _decoupled_findings(models, core, spec)
    engine = Path(options.engine) if options.engine is not None else None
    findings += _batch_findings(models, core, engine)
    if core is not None and core.config is not None:
        backend = core.config.backend
        if backend == "tensorrtllm":
            findings += _backend_parameter_findings(core, spec)
        if backend == "tensorrtllm" or "gpt_model_path" in core.params:
            findings += _engine_findings(core, engine, spec)
        elif _is_llmapi(core):
            findings += _llmapi_findings(core, engine, models)
        findings += _echo_findings(core, spec, models)
    findings += _tokenizer_findings(models)
    findings += unsafe_path_findings(repo)
    return findings


# -- parsing ----------------------------------------------------------------------------------------
def _load(repo: Path, path: Path) -> tuple[_Model, list[Finding]]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    name = path.parent.name
    rel = path.relative_to(repo).as_posix()
    text = path.read_text(errors="replace")
    findings = _placeholder_findings(name, rel, text)
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        if not findings:  # a placeholder already explains why it does not parse
            findings.append(
                Finding(
                    name,
                    f"{rel} is not a valid Triton model config: {exc}",
                    "correct the syntax at that line",
                )
            )
        return _Model(name, path.parent, text, None), findings
    from trtbuild.ensembles._wiring import duplicate_findings

    findings += duplicate_findings(name, config)
    for key, count in Counter(parameter_keys(text)).items():
        if count > 1:
            findings.append(
                Finding(
                    name,
                    f"parameter {key!r} is set {count} times in {rel}; Triton keeps only the last",
                    "keep one",
                    "warning",
                )
            )
    if config.name and config.name != name:
        findings.append(
            Finding(
                name,
                f"{rel} names the model {config.name!r}",
                f"name it {name!r} or rename the directory",
            )
        )
    return _Model(name, path.parent, text, config), findings


def _placeholder_findings(name: str, rel: str, text: str) -> list[Finding]:
    """Unfilled ``${...}`` placeholders (what ``fill_template.py`` leaves for keys it was not given),
    judged by what upstream's code does with each (``ensembles/upstream``): a bare one stops Triton
    from parsing the config; one in a string is an error only where upstream's model fails or
    misbehaves on it, and says nothing where upstream deliberately treats it as unset."""
    lines_of: dict[str, list[int]] = {}
    in_string: dict[str, bool] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            continue
        for match in PLACEHOLDER.finditer(line):
            lines_of.setdefault(match.group(1), []).append(number)
            quoted = line[: match.start()].count('"') % 2 == 1
            in_string[match.group(1)] = in_string.get(match.group(1), True) and quoted
    findings = []
    for key, lines in lines_of.items():
        where = f"${{{key}}} in {rel}:{lines[0]}"
        if len(lines) > 1:
            where += f" (and {len(lines) - 1} more line(s))"
        fill = f"fill it (fill_template.py ... {key}:VALUE), or render the repository with 'trtbuild repo'"
        if not in_string[key]:
            message = (
                f"unfilled placeholder {where}: Triton cannot parse this config until it is filled"
            )
            findings.append(Finding(name, message, fill))
            continue
        fact = upstream_placeholder(name, key)
        if fact is None:
            findings.append(
                Finding(
                    name,
                    f"unfilled placeholder {where} is not one of upstream's for {name}: the model "
                    f"reads the text '${{{key}}}' as the value",
                    fill,
                    "warning",
                )
            )
        elif fact.unfilled in ("fatal", "broken"):
            findings.append(Finding(name, f"unfilled placeholder {where}: {fact.effect}", fill))
        elif fact.unfilled == "unknown":
            key_name = fact.where.removeprefix("parameters.")
            optional = any(
                p.name == key_name and not p.required
                for line in LINES
                for p in facts(line).backend_parameters
            )
            findings.append(
                Finding(
                    name,
                    f"unfilled placeholder {where}: {fact.effect}",
                    fill
                    + (
                        "; or delete the parameter (the backend reads it as optional)"
                        if optional
                        else ""
                    ),
                    "warning",
                )
            )
        # "off" and "default": upstream reads the unfilled placeholder as unset, on purpose
    return findings


def upstream_placeholder(model: str, key: str) -> Placeholder | None:
    """Upstream's verdict on leaving ``${key}`` unfilled in ``model`` (newest line first)."""
    for line in reversed(LINES):
        found = facts(line).placeholder(model, key)
        if found is not None:
            return found
    for line in reversed(LINES):  # a model under another name: the first upstream model with it
        for fact in facts(line).placeholders:
            if fact.name == key and fact.in_string:
                return fact
    return None


def parameter_keys(text: str) -> list[str]:
    """Every top-level ``parameters`` key in order, duplicates included (protobuf's map parsing
    keeps only the last). Uses protobuf's own text-format tokenizer."""
    from google.protobuf import text_format

    tok = text_format.Tokenizer(text.splitlines())
    keys: list[str] = []
    depth, block, pending, in_list = 0, None, False, False
    while not tok.AtEnd():
        token = tok.token
        if token in ("{", "<"):
            depth += 1
            if pending:
                block = depth
                pending = in_list
        elif token in ("}", ">"):
            if block == depth:
                block = None
            depth -= 1
        elif token == "[" and pending:
            in_list = True
        elif token == "]" and in_list:
            in_list = pending = False
        elif depth == 0 and token == "parameters":
            pending = True
        elif block == depth and token == "key":
            tok.NextToken()
            if tok.token == ":":
                tok.NextToken()
            if tok.token[:1] in ("'", '"'):
                keys.append(tok.ConsumeString())
                continue
            continue
        tok.NextToken()
    return keys


def _saved_spec(repo: Path) -> tuple[RepoSpec | None, list[Finding]]:
    from pydantic import ValidationError

    from trtbuild.repository import SPEC_FILE, read_repo_spec

    if not (repo / SPEC_FILE).is_file():
        return None, []
    try:
        spec = read_repo_spec(repo)
    except (ValidationError, ValueError, KeyError) as exc:
        return None, [
            Finding(
                REPO,
                f"{SPEC_FILE} does not validate ({type(exc).__name__})",
                "re-render the repository with this trtbuild ('trtbuild repo')",
            )
        ]
    from trtbuild.ensembles import kind_for

    findings = [
        Finding(REPO, f"{SPEC_FILE}: {f.message}", f"{f.fix}, and re-render", f.severity)
        for f in kind_for(spec).spec_findings(spec)
    ]
    return spec, findings


# -- roles ------------------------------------------------------------------------------------------
def _is_llmapi(model: _Model) -> bool:
    return "llmapi_model_py" in model.params or (model.dir / "1" / "model.yaml").is_file()


def _core(models: dict[str, _Model]) -> _Model | None:
    """The model that runs the LLM: TensorRT-LLM's C++ or Python backend, its llmapi model, or
    trtbuild's portable runtime."""
    parsed = [m for m in models.values() if m.config is not None]
    for model in parsed:
        if model.config.backend == "tensorrtllm":
            return model
    for model in parsed:  # TensorRT-LLM's Python backend, trtbuild's portable runtime
        takes_ids = any(t.name == "input_ids" for t in model.config.input)
        if takes_ids and ("gpt_model_path" in model.params or "model_dir" in model.params):
            return model
    for model in parsed:
        if _is_llmapi(model):
            return model
    return models.get("tensorrt_llm")


def _bls(models: dict[str, _Model]) -> list[_Model]:
    return [
        m
        for m in models.values()
        if m.config is not None
        and ("tensorrt_llm_model_name" in m.params or m.name == "tensorrt_llm_bls")
    ]


# -- rules ------------------------------------------------------------------------------------------
def _wiring_findings(configs: dict[str, Any], *, unparsed: set[str]) -> list[Finding]:
    from trtbuild.ensembles._wiring import ensemble_findings

    findings = []
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        if {step.model_name for step in config.ensemble_scheduling.step} & unparsed:
            continue  # a step's config does not parse: reported already, wiring unknowable
        findings += ensemble_findings(name, config, configs)
    return findings


def _decoupled_findings(
    models: dict[str, _Model], core: _Model | None, spec: RepoSpec | None
) -> list[Finding]:
    findings: list[Finding] = []
    if core is None or core.config is None:
        return findings
    for bls in _bls(models):
        target = bls.params.get("tensorrt_llm_model_name") or core.name
        if PLACEHOLDER.search(target):  # unfilled: the BLS falls back to "tensorrt_llm"
            target = "tensorrt_llm"
        if bls.decoupled and target == core.name and not core.decoupled:
            findings.append(
                Finding(
                    bls.name,
                    f"streams (decoupled: true) but {core.name} is not decoupled: every streamed "
                    f"request fails in {core.name} ('Streaming is only supported if model is "
                    "deployed using decoupled mode')",
                    f"set model_transaction_policy {{ decoupled: true }} in {core.name} too "
                    "(trtbuild repo --streaming sets both)",
                )
            )
    if spec is not None and spec.streaming != core.decoupled:
        findings.append(
            Finding(
                core.name,
                f"trtbuild-repo.json says streaming {str(spec.streaming).lower()} but config.pbtxt "
                f"has decoupled {str(core.decoupled).lower()}",
                "re-render with 'trtbuild repo --streaming' (or --no-streaming) instead of "
                "editing config.pbtxt",
                "warning",
            )
        )
    return findings


def _batch_findings(
    models: dict[str, _Model], core: _Model | None, engine: Path | None
) -> list[Finding]:
    findings: list[Finding] = []
    llm_models = [
        m
        for m in models.values()
        if m.config is not None
        and (
            m.config.platform == "ensemble"
            or m is core
            or m in _bls(models)
            or m.name in ("preprocessing", "postprocessing")
        )
    ]
    sizes = {m.name: m.config.max_batch_size for m in llm_models}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n} {s}" for n, s in sizes.items())
        findings.append(
            Finding(
                REPO,
                f"max_batch_size differs between models: {listed}",
                "use one value in every config.pbtxt (fill_template.py's triton_max_batch_size), "
                "at most the engine's build_config.max_batch_size",
                "warning",
            )
        )
    if core is not None and core.config is not None and core.config.backend == "tensorrtllm":
        engine_dir = engine or _param_path(core, "gpt_model_path")
        config = _engine_config(engine_dir) if engine_dir is not None else None
        built = (config or {}).get("build_config", {}).get("max_batch_size")
        if isinstance(built, int) and core.config.max_batch_size > built:
            findings.append(
                Finding(
                    core.name,
                    f"max_batch_size {core.config.max_batch_size} exceeds the engine's "
                    f"build_config.max_batch_size {built}",
                    f"set max_batch_size <= {built} in every model, or rebuild the engine with "
                    "a larger --max-batch-size",
                )
            )
    return findings


def _param_path(model: _Model, key: str) -> Path | None:
    value = model.params.get(key)
    if not value or PLACEHOLDER.search(value):
        return None
    return Path(value)


def _engine_config(engine_dir: Path) -> dict[str, Any] | None:
    from trtbuild.repo import read_engine_config

    try:
        return read_engine_config(engine_dir) if engine_dir.is_dir() else None
    except SpecError:
        return None


def _backend_parameter_findings(core: _Model, spec: RepoSpec | None) -> list[Finding]:
    """Parameters TensorRT-LLM's C++ backend reads with no fallback: without one, creating the
    model instance throws "Cannot find parameter with name: ..." and the model does not load.
    Checked against the repository's TensorRT-LLM line (trtbuild's spec), else against what every
    supported line requires."""
    lines = [line_for(spec.trtllm_version)] if spec is not None else list(LINES)
    required = set.intersection(*({p.name for p in facts(x).required_parameters()} for x in lines))
    findings = []
    for name in sorted(required - set(core.params)):
        unset = upstream_placeholder("tensorrt_llm", name)
        if unset is not None and unset.unfilled == "off":
            fix = (
                f'add parameters {{ key: "{name}" value: {{ string_value: "" }} }} (upstream reads '
                "an empty value as off)"
            )
        else:
            fact = next(p for p in facts(lines[0]).backend_parameters if p.name == name)
            value = f" (e.g. {fact.default!r})" if fact.default else ""
            fix = f"add the parameter {name!r} with a value{value}"
        findings.append(
            Finding(
                core.name,
                f"has no parameter {name!r}: TensorRT-LLM's backend reads it unconditionally and "
                f"the model fails to load ('Cannot find parameter with name: {name}')",
                fix,
            )
        )
    return findings


def _engine_findings(core: _Model, engine: Path | None, spec: RepoSpec | None) -> list[Finding]:
    """TensorRT-LLM's C++ (or Python) backend: the engine directory and the core parameters."""
    from trtbuild.repo import rank_engine_files

    findings: list[Finding] = []
    params = core.params
    model_type = params.get("gpt_model_type")
    if (
        model_type is not None
        and not PLACEHOLDER.search(model_type)
        and model_type not in GPT_MODEL_TYPES
    ):
        findings.append(
            Finding(
                core.name,
                f"gpt_model_type {model_type!r} is not one the backend accepts "
                "(it fails with 'Invalid gpt_model_type')",
                "set gpt_model_type to inflight_fused_batching",
            )
        )
    engine_dir = engine if engine is not None else _param_path(core, "gpt_model_path")
    if engine_dir is None:
        return findings
    if not engine_dir.is_dir():
        findings.append(
            Finding(
                core.name,
                f"gpt_model_path {engine_dir} does not exist here",
                "point it at the engine directory, or pass --engine DIR to check against a copy",
            )
        )
        return findings
    config = _engine_config(engine_dir)
    if config is None:
        findings.append(
            Finding(
                core.name,
                f"{engine_dir}/config.json is not a TensorRT-LLM engine config",
                "point gpt_model_path at the directory trtllm-build (or 'trtbuild engine') wrote",
            )
        )
        return findings
    mapping = config["pretrained_config"].get("mapping") or {}
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    world = int(mapping.get("world_size", tp * pp))
    ranks = rank_engine_files(engine_dir)
    if world != tp * pp or ranks != world:
        findings.append(
            Finding(
                core.name,
                f"the engine is TP {tp} x PP {pp} (world size {world}) but {engine_dir} holds "
                f"{ranks} rank engine file(s); MPI world size, TP x PP and rank{{N}}.engine "
                "must all agree",
                "rebuild the engine completely ('trtbuild engine'), and launch one MPI rank "
                "per engine file ('trtbuild serve' does)",
            )
        )
    groups = [g for g in params.get("gpu_device_ids", "").split(";") if g.strip()]
    count = sum(group.count for group in core.config.instance_group) if core.config else 1
    if groups and not PLACEHOLDER.search(params["gpu_device_ids"]) and count != len(groups):
        findings.append(
            Finding(
                core.name,
                f"gpu_device_ids lists {len(groups)} instance(s) but instance_group has {count}",
                f"set instance_group count to {len(groups)} (one GPU set per instance)",
            )
        )
    for index, group in enumerate(groups):
        size = len([x for x in group.split(",") if x.strip()])
        if not PLACEHOLDER.search(group) and size != world:
            findings.append(
                Finding(
                    core.name,
                    f"gpu_device_ids instance {index} lists {size} GPU(s) for a TP x PP = "
                    f"{world} engine",
                    f'list {world} GPU(s) per instance, e.g. "{",".join(map(str, range(world)))}"',
                )
            )
    beam = params.get("max_beam_width", "1")
    built_beam = config["build_config"].get("max_beam_width", 1)
    if beam.isdigit() and isinstance(built_beam, int) and int(beam) > built_beam:
        findings.append(
            Finding(
                core.name,
                f"max_beam_width {beam} exceeds the engine's {built_beam}",
                f"set max_beam_width <= {built_beam}",
            )
        )
    if spec is not None and spec.engine is not None:
        built_version = config.get("version")
        if spec.engine.trtllm_version and built_version != spec.engine.trtllm_version:
            findings.append(
                Finding(
                    core.name,
                    f"the engine is now TensorRT-LLM {built_version} but the repository was "
                    f"rendered for {spec.engine.trtllm_version}",
                    "re-render the repository with 'trtbuild repo' for this engine",
                )
            )
    return findings


def _llmapi_findings(core: _Model, engine: Path | None, models: dict[str, _Model]) -> list[Finding]:
    import yaml

    findings: list[Finding] = []
    path = core.dir / "1" / "model.yaml"
    if not path.is_file():
        return [
            Finding(
                core.name,
                "1/model.yaml (the LLM() arguments of TensorRT-LLM's llmapi model) is missing",
                "render the repository with 'trtbuild repo --runtime llmapi'",
            )
        ]
    try:
        args = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        return [Finding(core.name, f"1/model.yaml is not valid YAML: {exc}", "fix the YAML")]
    if not isinstance(args, dict):
        return [Finding(core.name, "1/model.yaml is not a mapping", "re-render it")]
    triton = args.get("triton_config") or {}
    assert core.config is not None
    if "decoupled" in triton and bool(triton["decoupled"]) != core.decoupled:
        findings.append(
            Finding(
                core.name,
                f"model.yaml triton_config.decoupled is {triton['decoupled']} but config.pbtxt "
                f"says {str(core.decoupled).lower()}; the model refuses streaming by the former, "
                "Triton serves by the latter",
                "make them equal (trtbuild repo --streaming sets both)",
            )
        )
    if core.config.max_batch_size != 0 or triton.get("max_batch_size", 0) != 0:
        findings.append(
            Finding(
                core.name,
                "TensorRT-LLM's llmapi model takes one prompt per request, but max_batch_size is "
                f"{core.config.max_batch_size} (model.yaml: {triton.get('max_batch_size', 0)})",
                "set max_batch_size: 0 in config.pbtxt and triton_config (LLM() batches in flight)",
            )
        )
    model_dir = engine if engine is not None else Path(str(args.get("model", "")))
    if not model_dir.is_dir():
        findings.append(
            Finding(
                core.name,
                f"model.yaml model {str(args.get('model'))!r} is not a directory here",
                "point it at the checkpoint directory, or pass --engine DIR to check a copy",
            )
        )
        return findings
    kv = str((args.get("kv_cache_config") or {}).get("dtype", "auto")).lower()
    if kv in ("fp8", "int8"):
        from trtbuild.repo import HF_QUANT_CONFIG

        quant = (_json(model_dir / HF_QUANT_CONFIG) or {}).get("quantization") or {}
        manifest = _json(model_dir / "trtbuild-engine.json") or {}
        built = {
            str(quant.get("kv_cache_quant_algo") or "").lower(),
            str((manifest.get("quantization") or {}).get("kv_cache") or "").lower(),
        }
        if kv not in built:
            findings.append(
                Finding(
                    core.name,
                    f"kv_cache_config.dtype {kv} but {model_dir} was not made with an "
                    f"{kv.upper()} KV cache (no kv_cache_quant_algo in {HF_QUANT_CONFIG})",
                    "use dtype auto, or a checkpoint quantized with an FP8 KV cache "
                    "('trtbuild engine --runtime llmapi --kv-cache-dtype fp8')",
                )
            )
    return findings


def _echo_findings(core: _Model, spec: RepoSpec | None, models: dict[str, _Model]) -> list[Finding]:
    if spec is not None and not spec.exclude_input_in_output:
        return []  # asked for in the spec
    if _is_llmapi(core):
        pre = models.get("preprocessing")
        if pre is not None and "exclude_input_in_output" in pre.params:
            if pre.params["exclude_input_in_output"].lower() in ("1", "true"):
                return []
        elif pre is None:
            return [
                Finding(
                    core.name,
                    "TensorRT-LLM's llmapi model defaults sampling_param_exclude_input_from_output "
                    "to false, so text_output repeats the prompt unless every request sends it",
                    "send sampling_param_exclude_input_from_output=true, or render with "
                    "'trtbuild repo --runtime llmapi' (its preprocessing sets it)",
                    "warning",
                )
            ]
        else:
            return []
    value = core.params.get("exclude_input_in_output")
    if value is not None and value.lower() in ("1", "true"):
        return []
    if value is None:
        shown = "is not set (default false)"
    elif PLACEHOLDER.search(value):
        shown = f"is left as {value} (the backend's default: false)"
    else:
        shown = f"is {value!r}"
    return [
        Finding(
            core.name,
            f"exclude_input_in_output {shown}: text_output repeats the prompt and benchmarks count "
            "it as output",
            'set parameter exclude_input_in_output to "true" (clients can still ask per request)',
            "warning",
        )
    ]


def _tokenizer_findings(models: dict[str, _Model]) -> list[Finding]:
    from trtbuild.repo import tokenizer_ids

    findings: list[Finding] = []
    for name in ("preprocessing", "postprocessing"):
        model = models.get(name)
        if model is None or model.config is None:
            continue
        value = model.params.get("tokenizer_dir")
        if value is None:
            findings.append(
                Finding(
                    name,
                    "has no tokenizer_dir parameter, so it cannot tokenize nor find end_id/pad_id",
                    "set tokenizer_dir to the model's Hugging Face tokenizer directory",
                )
            )
            continue
        if PLACEHOLDER.search(value):
            continue  # reported as an unfilled placeholder
        directory = Path(value)
        if not any((directory / f).is_file() for f in TOKENIZER_FILES):
            findings.append(
                Finding(
                    name,
                    f"tokenizer_dir {directory} has no tokenizer files ({', '.join(TOKENIZER_FILES)}"
                    "), so end_id/pad_id and the text cannot be produced",
                    "point tokenizer_dir at the model's Hugging Face tokenizer directory",
                )
            )
            continue
        if name != "preprocessing":
            continue
        try:
            ids = tokenizer_ids(directory)
        except SpecError as exc:
            findings.append(Finding(name, exc.message, "send end_id with every request", "warning"))
            continue
        params = model.params
        end_id = int(params["end_id"]) if params.get("end_id", "").lstrip("-").isdigit() else None
        stops = {int(x) for x in params.get("stop_token_ids", "").split(",") if x.strip().isdigit()}
        covered = {ids.end_id if end_id is None else end_id, *stops}
        missing = [i for i in (ids.end_id, *ids.stop_token_ids) if i not in covered]
        if missing:
            shown = ", ".join(
                f"{i} ({ids.tokens[i]})" if i in ids.tokens else str(i) for i in missing
            )
            findings.append(
                Finding(
                    name,
                    f"end token(s) {shown} of {directory} never stop generation: only end_id "
                    f"{ids.end_id if end_id is None else end_id} does, so output runs to max_tokens",
                    "send stop_words/end_id with every request, or render with 'trtbuild repo' "
                    "(it adds every end token as a stop token)",
                    "warning",
                )
            )
    return findings


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = [
    "CheckFailed",
    "CheckResult",
    "Finding",
    "check_repository",
    "parameter_keys",
    "run_check",
]
