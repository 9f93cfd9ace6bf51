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

import contextlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild._safepath import unsafe_path_findings
from trtbuild.builder.manifest import MANIFEST, read_manifest
from trtbuild.engine_info import tensorrtllm_info
from trtbuild.ensembles import kind_for
from trtbuild.ensembles._rules import RepoView
from trtbuild.ensembles._rules import findings as rule_findings
from trtbuild.ensembles._wiring import duplicate_findings, ensemble_findings
from trtbuild.ensembles.upstream import LINES, Placeholder, facts, line_for
from trtbuild.errors import RuntimeFailure, SpecError, TrtbuildError
from trtbuild.files.hf import HF_QUANT_CONFIG, read_hf_quant_config
from trtbuild.files.model_config import ModelFile as _Model
from trtbuild.files.model_config import read_model_files
from trtbuild.files.repo_spec import SPEC_FILE, read_repo_spec
from trtbuild.files.trtllm import try_engine_config
from trtbuild.findings import REPOSITORY, Finding, errors, summary
from trtbuild.specs import CheckOptions, EngineInfo, RepoSpec, Runtime
from trtbuild.tokens import tokenizer_ids
from trtbuild.vocab import VOCABULARY_FILES

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
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


# -- entry point ------------------------------------------------------------------------------------
def check_repository(options: CheckOptions) -> list[Finding]:
    """Every finding for ``options.repo`` (empty: clean). Raises ``SpecError`` for a directory
    that is not a model repository at all."""
    repo = Path(options.repo)
    if not repo.is_dir():
        raise SpecError(f"{repo} is not a directory; pass a Triton model repository")
    files = read_model_files(repo)
    if not files:
        raise SpecError(
            f"{repo} holds no */config.pbtxt; pass a Triton model repository (render one with "
            "'trtbuild repo')"
        )
    findings: list[Finding] = []
    models: dict[str, _Model] = {}
    for model in files:
        models[model.name] = model
        findings += _file_findings(model)
    spec, spec_findings = _saved_spec(repo)
    findings += spec_findings
    if spec is not None:
        for missing in (m for m in kind_for(spec).MODELS if m not in models):
            findings.append(
                Finding(missing, "is missing from the repository", "re-render with 'trtbuild repo'")
            )
    parsed = {name: m.config for name, m in models.items() if m.config is not None}
    findings += _wiring_findings(
        parsed, unparsed={n for n, m in models.items() if m.config is None}
    )
    core = _core(models)
    engine = Path(options.engine) if options.engine is not None else None
    findings += _batch_size_findings(models, core)
    if core is not None and core.config is not None:
        findings += _spec_mismatch_findings(core, spec)
        backend = core.config.backend
        if backend == "tensorrtllm":
            findings += _backend_parameter_findings(core, spec)
        if backend == "tensorrtllm" or "gpt_model_path" in core.params:
            findings += _engine_findings(core, engine)
        elif _is_llmapi(core):
            findings += _llmapi_findings(core, engine, models)
        findings += rule_findings(_view(models, core, engine, spec))
        findings += _echo_findings(core, spec, models)
    findings += _tokenizer_findings(models)
    findings += unsafe_path_findings(repo)
    return findings


# -- parsing ----------------------------------------------------------------------------------------
def _file_findings(model: _Model) -> list[Finding]:
    """What one config.pbtxt gets wrong on its own: placeholders, syntax, duplicates, its name."""
    name, rel, config = model.name, model.rel, model.config
    findings = _placeholder_findings(name, rel, model.text)
    if config is None:
        if not findings:  # a placeholder already explains why it does not parse
            findings.append(
                Finding(
                    name,
                    f"{rel} is not a valid Triton model config: {model.error}",
                    "correct the syntax at that line",
                )
            )
        return findings
    findings += duplicate_findings(name, config)
    for key, count in Counter(parameter_keys(model.text)).items():
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
    return findings


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
    if not (repo / SPEC_FILE).is_file():
        return None, []
    try:
        spec = read_repo_spec(repo)
    except SpecError as exc:
        return None, [
            Finding(
                REPO,
                f"{SPEC_FILE} does not validate ({exc.message})",
                "re-render the repository with this trtbuild ('trtbuild repo')",
            )
        ]

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
    findings = []
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        if {step.model_name for step in config.ensemble_scheduling.step} & unparsed:
            continue  # a step's config does not parse: reported already, wiring unknowable
        findings += ensemble_findings(name, config, configs)
    return findings


def _view(
    models: dict[str, _Model], core: _Model, engine: Path | None, spec: RepoSpec | None
) -> RepoView:
    """The shared rules' view of a repository's configs (and the engine they point at)."""
    assert core.config is not None
    params = core.params
    runtime: Runtime | None = None
    info: EngineInfo | None = None
    engine_dir = engine if engine is not None else _param_path(core, "gpt_model_path")
    if core.config.backend == "tensorrtllm":
        runtime = "tensorrtllm"
        if engine_dir is not None and try_engine_config(engine_dir) is not None:
            info = tensorrtllm_info(engine_dir)
    elif _is_llmapi(core):
        runtime = "llmapi"
    elif "model_dir" in params:
        runtime = "torch"
    bls = {}
    for model in _bls(models):
        target = model.params.get("tensorrt_llm_model_name") or core.name
        if PLACEHOLDER.search(target):  # unfilled: upstream's BLS falls back to "tensorrt_llm"
            target = "tensorrt_llm"
        if target == core.name:
            bls[model.name] = model.decoupled
    groups_text = params.get("gpu_device_ids", "")
    groups: tuple[tuple[int, ...], ...] = ()
    if groups_text and not PLACEHOLDER.search(groups_text):
        with contextlib.suppress(ValueError):
            groups = tuple(
                tuple(int(x) for x in g.split(",") if x.strip())
                for g in groups_text.split(";")
                if g.strip()
            )
    beam = params.get("max_beam_width", "")
    reuse = params.get("enable_kv_cache_reuse", "").lower()
    return RepoView(
        source="configs",
        runtime=runtime,
        core=core.name,
        core_decoupled=core.decoupled,
        bls_decoupled=bls,
        target_version=spec.engine.trtllm_version if spec is not None and spec.engine else None,
        gpu_device_ids=groups,
        core_instances=sum(g.count for g in core.config.instance_group) or 1,
        max_batch_size=core.config.max_batch_size if runtime == "tensorrtllm" else None,
        max_beam_width=int(beam) if beam.isdigit() else None,
        kv_cache_reuse=reuse == "true" if reuse in ("true", "false") else None,
        engine=info,
        engine_dir=engine_dir,
    )


def _spec_mismatch_findings(core: _Model, spec: RepoSpec | None) -> list[Finding]:
    if spec is None or spec.streaming == core.decoupled:
        return []
    return [
        Finding(
            core.name,
            f"trtbuild-repo.json says streaming {str(spec.streaming).lower()} but config.pbtxt "
            f"has decoupled {str(core.decoupled).lower()}",
            "re-render with 'trtbuild repo --streaming' (or --no-streaming) instead of "
            "editing config.pbtxt",
            "warning",
        )
    ]


def _batch_size_findings(models: dict[str, _Model], core: _Model | None) -> list[Finding]:
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
    if len(set(sizes.values())) <= 1:
        return []
    listed = ", ".join(f"{n} {s}" for n, s in sizes.items())
    return [
        Finding(
            REPO,
            f"max_batch_size differs between models: {listed}",
            "use one value in every config.pbtxt (fill_template.py's triton_max_batch_size), "
            "at most the engine's build_config.max_batch_size",
            "warning",
        )
    ]


def _param_path(model: _Model, key: str) -> Path | None:
    value = model.params.get(key)
    if not value or PLACEHOLDER.search(value):
        return None
    return Path(value)


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


def _engine_findings(core: _Model, engine: Path | None) -> list[Finding]:
    """TensorRT-LLM's C++ (or Python) backend: the engine directory and the core parameters."""
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
    if try_engine_config(engine_dir) is None:
        findings.append(
            Finding(
                core.name,
                f"{engine_dir}/config.json is not a TensorRT-LLM engine config",
                "point gpt_model_path at the directory trtllm-build (or 'trtbuild engine') wrote",
            )
        )
        return findings
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
        built = _kv_cache_dtypes(model_dir)
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
        if not any((directory / f).is_file() for f in VOCABULARY_FILES):
            findings.append(
                Finding(
                    name,
                    f"tokenizer_dir {directory} has no tokenizer files ({', '.join(VOCABULARY_FILES)}"
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


def _kv_cache_dtypes(model_dir: Path) -> set[str]:
    """The KV-cache dtypes a checkpoint was made with: ModelOpt's hf_quant_config.json, and
    trtbuild's manifest. Unreadable files say nothing (other findings report them)."""
    built: set[str] = set()
    with contextlib.suppress(TrtbuildError):
        quant = (read_hf_quant_config(model_dir) or {}).get("quantization") or {}
        built.add(str(quant.get("kv_cache_quant_algo") or "").lower())
    if (model_dir / MANIFEST).is_file():
        with contextlib.suppress(TrtbuildError):
            built.add(str(read_manifest(model_dir).quantization.kv_cache or "").lower())
    return built - {""}


__all__ = [
    "CheckFailed",
    "CheckResult",
    "Finding",
    "check_repository",
    "parameter_keys",
    "run_check",
]
