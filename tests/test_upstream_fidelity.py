"""trtbuild's repositories against upstream's facts (ensembles/upstream/trtllm-*.json).

The facts were read from TensorRT-LLM's own source (each with its path, commit and line): which
parameters the C++ backend requires, how upstream's five models declare every tensor, what
upstream's README fills in. Rendered configs are parsed as Triton ``ModelConfig`` protos and
compared field by field with those facts; ``trtbuild check`` is run on a repository shaped exactly
like the one upstream's README makes (tests/upstream_repo.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.repo_fakes import write_llama3_tokenizer, write_trtllm_engine
from tests.upstream_repo import write_upstream_repository
from trtbuild.builder.manifest import ServingHost
from trtbuild.cli import cli
from trtbuild.ensembles.inflight_batcher_llm import CHECKED_BY_NAME, DTYPE_FILL
from trtbuild.ensembles.upstream import LINES, Facts, UpstreamTensor, facts, facts_path
from trtbuild.render import load_configs, render_repository
from trtbuild.repo import build_repo_spec

VERSIONS = {"0.19": "0.19.0", "1.2": "1.2.1"}  # a TensorRT-LLM release of each line
# required inputs trtbuild declares optional and refuses by name (see CHECKED_BY_NAME)
CHECKED = {(model, name) for model, names in CHECKED_BY_NAME.items() for name in names}
SOURCE = re.compile(r"^(\w+:)?[\w./-]+@[0-9a-f]{8,40}(:\d+(-\d+)?)?")


@pytest.fixture(autouse=True)
def _no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    import trtbuild.builder.manifest as manifest

    monkeypatch.setattr(manifest, "detect_host", lambda: ServingHost())


def _proto_tensor(t: Any, *, is_input: bool) -> dict[str, Any]:
    from tritonclient.grpc import model_config_pb2

    return {
        "data_type": model_config_pb2.DataType.Name(t.data_type),
        "dims": list(t.dims),
        "reshape": list(t.reshape.shape) if t.HasField("reshape") else None,
        "optional": t.optional if is_input else False,
        "allow_ragged_batch": t.allow_ragged_batch if is_input else False,
    }


def _fact_tensor(t: UpstreamTensor, *, is_input: bool) -> dict[str, Any]:
    return {
        "data_type": DTYPE_FILL.get(t.data_type, t.data_type),
        "dims": [int(d) for d in t.dims],
        "reshape": t.reshape,
        "optional": t.optional if is_input else False,
        "allow_ragged_batch": t.allow_ragged_batch if is_input else False,
    }


def _differences(configs: dict[str, Any], upstream: Facts, *, skip: set[str]) -> list[str]:
    """Each tensor whose declaration differs from upstream's, and each required (non-optional)
    upstream input that is not declared."""
    problems = []
    for name, config in configs.items():
        model = upstream.models[name]
        for direction, ours, theirs in (
            ("input", config.input, model.inputs),
            ("output", config.output, model.outputs),
        ):
            declared = {t.name: t for t in theirs}
            for tensor in ours:
                if (name, tensor.name) in skip:
                    continue
                if tensor.name not in declared:
                    problems.append(f"{name}: {direction} {tensor.name} is not upstream's")
                    continue
                got = _proto_tensor(tensor, is_input=direction == "input")
                want = _fact_tensor(declared[tensor.name], is_input=direction == "input")
                if direction == "input" and (name, tensor.name) in CHECKED:
                    want = {**want, "optional": True}
                if got != want:
                    problems.append(f"{name}: {direction} {tensor.name} is {got}, upstream {want}")
        names = {t.name for t in config.input}
        pre_wired = set()
        if name == "preprocessing":  # text only: the inputs upstream's ensemble wires
            step = next(
                s for s in upstream.models["ensemble"].ensemble_steps or [] if s.model_name == name
            )
            pre_wired = set(step.input_map)
        for t in model.inputs:
            if (
                not t.optional
                and t.name not in names
                and (name != "preprocessing" or t.name in pre_wired)
            ):
                problems.append(f"{name}: required input {t.name} is not declared")
    return problems


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    return write_llama3_tokenizer(tmp_path / "tokenizer")


def _render_tensorrtllm(tmp_path: Path, tokenizer: Path, version: str, **update: Any) -> Path:
    engine = write_trtllm_engine(tmp_path / "engine", version=version, tokenizer=tokenizer)
    spec = build_repo_spec(engine, host=ServingHost()).spec.model_copy(update=update)
    return render_repository(spec, tmp_path / "repo")


# -- the facts themselves ----------------------------------------------------------------------------
@pytest.mark.parametrize("line", LINES)
def test_every_fact_names_its_upstream_source(line: str) -> None:
    data = facts(line)
    assert data.trtllm_version == line and facts_path(line).is_file()
    sources = [p.source for p in data.backend_parameters] + [p.source for p in data.placeholders]
    sources += [m.source for m in data.models.values()] + [data.readme_fill.source]
    assert sources and all(SOURCE.match(s) for s in sources), [
        s for s in sources if not SOURCE.match(s)
    ]
    assert set(data.models) == {
        "ensemble",
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
        "tensorrt_llm_bls",
    }
    # the audit's load failure: both guided-decoding keys are read with no fallback
    required = {p.name for p in data.required_parameters()}
    assert {"guided_decoding_backend", "xgrammar_tokenizer_info_path", "gpt_model_type"} <= required


# -- rendered repositories against upstream --------------------------------------------------------------
@pytest.mark.parametrize("line", LINES)
def test_tensorrtllm_repository_has_every_required_parameter(
    line: str, tmp_path: Path, tokenizer: Path
) -> None:
    repo = _render_tensorrtllm(tmp_path, tokenizer, VERSIONS[line])
    core = load_configs(repo)["tensorrt_llm"]
    params = {k: v.string_value for k, v in core.parameters.items()}
    for required in facts(line).required_parameters():
        assert required.name in params, f"{required.name} ({required.source}) is missing"
        assert "${" not in params[required.name]
    assert params["guided_decoding_backend"] == params["xgrammar_tokenizer_info_path"] == ""


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("streaming", [True, False])
def test_tensorrtllm_repository_declares_every_tensor_as_upstream(
    line: str, streaming: bool, tmp_path: Path, tokenizer: Path
) -> None:
    repo = _render_tensorrtllm(tmp_path, tokenizer, VERSIONS[line], streaming=streaming)
    configs = load_configs(repo)
    assert _differences(configs, facts(line), skip=set()) == []
    # the ensemble is wired exactly as upstream's
    ours = [
        (s.model_name, dict(s.input_map), dict(s.output_map))
        for s in configs["ensemble"].ensemble_scheduling.step
    ]
    theirs = [
        (s.model_name, s.input_map, s.output_map)
        for s in facts(line).models["ensemble"].ensemble_steps or []
    ]
    assert ours == theirs


def test_portable_repository_speaks_upstreams_newest_contract(tmp_path: Path) -> None:
    from trtbuild.specs import RepoSpec

    spec = RepoSpec(engine_dir=tmp_path, tokenizer_dir=tmp_path, end_id=2, pad_id=0)
    configs = load_configs(render_repository(spec, tmp_path / "repo"))
    skip = {("tensorrt_llm", "output_text")}  # trtbuild's extension: the runtime's text
    assert _differences(configs, facts("1.2"), skip=skip) == []
    steps = configs["ensemble"].ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocessing", "tensorrt_llm"]
    assert steps[1].output_map["output_text"] == "text_output"


def test_a_changed_declaration_is_caught(tmp_path: Path, tokenizer: Path) -> None:
    """The comparison above can fail: one wrong dtype and one missing parameter are found."""
    repo = _render_tensorrtllm(tmp_path, tokenizer, "1.2.1")
    configs = load_configs(repo)
    configs["tensorrt_llm"].input[0].data_type = 9  # TYPE_INT32 -> TYPE_INT64
    assert any("input_ids" in p for p in _differences(configs, facts("1.2"), skip=set()))
    core = repo / "tensorrt_llm" / "config.pbtxt"
    text = core.read_text()
    start = text.index('parameters: {\n  key: "guided_decoding_backend"')
    core.write_text(text[:start] + text[text.index("}\n}\n", start) + 4 :])
    result = CliRunner().invoke(cli, ["check", str(repo)])
    assert result.exit_code == 1
    assert (
        "error: tensorrt_llm: has no parameter 'guided_decoding_backend': TensorRT-LLM's backend "
        "reads it unconditionally and the model fails to load ('Cannot find parameter with name: "
        'guided_decoding_backend\') (fix: add parameters { key: "guided_decoding_backend" value: '
        '{ string_value: "" } } (upstream reads an empty value as off))'
    ) in result.output


# -- trtbuild check on upstream's own repository, filled as its README says --------------------------------
def _upstream_repo(tmp_path: Path, line: str, tokenizer: Path, **leave: set[str]) -> Path:
    engine = write_trtllm_engine(tmp_path / "engine", version=VERSIONS[line], tokenizer=tokenizer)
    return write_upstream_repository(
        facts(line),
        tmp_path / "upstream",
        paths={"<ENGINE_DIR>": str(engine), "<HF_MODEL>": str(tokenizer)},
        leave_unfilled=leave,
    )


@pytest.mark.parametrize("line", LINES)
def test_check_passes_a_correctly_filled_upstream_repository(
    line: str, tmp_path: Path, tokenizer: Path
) -> None:
    repo = _upstream_repo(tmp_path, line, tokenizer)
    text = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert "${guided_decoding_backend}" in text  # upstream leaves these unfilled on purpose
    result = CliRunner().invoke(cli, ["check", str(repo)])
    assert result.exit_code == 0, result.output
    assert not any(line.startswith("error:") for line in result.output.splitlines())
    # the duplicate ensemble output upstream declares is reported, as a warning only
    assert (
        "warning: ensemble: output 'kv_cache_alloc_total_blocks' is declared 2 times"
        in result.output
    )
    assert CliRunner().invoke(cli, ["check", str(repo), "--strict"]).exit_code == 1


@pytest.mark.parametrize("line", LINES)
def test_check_names_a_fatal_placeholder(line: str, tmp_path: Path, tokenizer: Path) -> None:
    repo = _upstream_repo(tmp_path, line, tokenizer, preprocessing={"tokenizer_dir"})
    result = CliRunner().invoke(cli, ["check", str(repo)])
    assert result.exit_code == 1
    (error,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert error.startswith("error: preprocessing: unfilled placeholder ${tokenizer_dir} in ")
    assert "from_pretrained" in error and "falls back to a default" not in error
    assert "remove the parameter" not in result.output  # advice never breaks the load
