"""The strict renderer: every config parses, strings are escaped, wiring is checked, writes are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from google.protobuf import text_format

import trtbuild.runtime
from tests.goldens import check_golden_tree
from trtbuild.errors import OutputExists
from trtbuild.render import (
    SPEC_FILE,
    TemplateRenderError,
    jinja_env,
    load_configs,
    pbtxt_string,
    read_repo_spec,
    render_repository,
)
from trtbuild.specs import RepoSpec

GOLDEN = Path(__file__).parent / "golden" / "inflight_batcher_llm"


def spec_for(engine: Path, **kw) -> RepoSpec:  # type: ignore[no-untyped-def]
    return RepoSpec(
        engine_dir=engine, tokenizer_dir=engine, end_id=2, pad_id=3, stop_token_ids=[4], **kw
    )


def test_renders_five_models_that_parse_and_wire(tmp_path: Path) -> None:
    repo = render_repository(spec_for(tmp_path / "engine"), tmp_path / "repo")
    configs = load_configs(repo)
    assert set(configs) == {
        "ensemble",
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
        "tensorrt_llm_bls",
    }
    assert configs["tensorrt_llm"].model_transaction_policy.decoupled is True
    assert configs["tensorrt_llm_bls"].model_transaction_policy.decoupled is False
    assert all((repo / m / "1").is_dir() for m in configs)
    # the portable runtime's code travels with the repository
    for name in ("engine", "requests", "parallel", "fused"):
        assert (repo / f"tensorrt_llm/1/_trtbuild_{name}.py").is_file(), name
    assert (repo / "postprocessing/1/_trtbuild_detok.py").is_file()
    runtime = Path(trtbuild.runtime.__file__).parent
    for model in ("preprocessing", "tensorrt_llm", "tensorrt_llm_bls"):  # the error answers
        shipped = (repo / model / "1/_trtbuild_requests.py").read_bytes()
        assert shipped == (runtime / "requests.py").read_bytes(), model
    # every client-facing TensorRT-LLM input genai-perf and TRT-LLM clients send is declared
    names = {i.name for i in configs["ensemble"].input}
    assert {
        "text_input",
        "max_tokens",
        "stream",
        "exclude_input_in_output",
        "end_id",
        "pad_id",
        "top_k",
        "top_p",
        "temperature",
        "seed",
        "min_tokens",
        "stop_words",
        "bad_words",
    } <= names
    # one value of max_batch_size everywhere
    assert {c.max_batch_size for c in configs.values()} == {16}
    # the spec is saved beside the repository and reads back
    assert read_repo_spec(repo) == spec_for(tmp_path / "engine")
    assert json.loads((repo / SPEC_FILE).read_text())["kind"] == "inflight_batcher_llm"


def test_ensemble_declares_every_output_once(tmp_path: Path) -> None:
    configs = load_configs(render_repository(spec_for(tmp_path / "e"), tmp_path / "repo"))
    outputs = [o.name for o in configs["ensemble"].output]
    assert len(outputs) == len(set(outputs))
    assert outputs.count("kv_cache_alloc_total_blocks") == 1  # upstream declares it twice


@pytest.mark.parametrize("value", ['we"ird\\path', "new\nline", "tab\there", "uni ✨ 日本"])
def test_strings_are_escaped_for_pbtxt(tmp_path: Path, value: str) -> None:
    engine = tmp_path / value
    repo = render_repository(spec_for(engine), tmp_path / "repo")
    pre = load_configs(repo)["preprocessing"]
    assert pre.parameters["tokenizer_dir"].string_value == str(engine.resolve())


def test_pbtxt_string_round_trips_through_protobuf() -> None:
    from tritonclient.grpc import model_config_pb2

    nasty = 'a"b\\c\n\t\x01 ✨'
    cfg = text_format.Parse(f"name: {pbtxt_string(nasty)}", model_config_pb2.ModelConfig())
    assert cfg.name == nasty


def test_undefined_template_values_are_errors_not_blanks() -> None:
    env = jinja_env()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("max_batch_size: {{ missing }}").render()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{% if missing %}x{% endif %}").render()
    with pytest.raises(TemplateRenderError, match="cannot render NoneType"):
        env.from_string("x: {{ value }}").render(value=None)
    with pytest.raises(TemplateRenderError, match="not an identifier"):
        env.from_string("kind: {{ value | ident }}").render(value="KIND_CPU }")


def test_refuses_to_overwrite_without_force_and_replaces_with_force(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    with pytest.raises(OutputExists, match="--force"):
        render_repository(spec_for(tmp_path / "e"), out)
    assert (out / "mine.txt").read_text() == "user file"
    render_repository(spec_for(tmp_path / "e"), out, force=True)
    assert not (out / "mine.txt").exists() and (out / "ensemble/config.pbtxt").is_file()


def test_a_failed_render_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtbuild.ensembles import inflight_batcher_llm
    from trtbuild.findings import Finding

    broken = [Finding("ensemble", "broken on purpose", "none")]
    monkeypatch.setattr(inflight_batcher_llm, "check", lambda configs: broken)
    with pytest.raises(TemplateRenderError, match="broken on purpose"):
        render_repository(spec_for(tmp_path / "e"), tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_wiring_findings_name_the_problem(tmp_path: Path) -> None:
    from trtbuild.ensembles import inflight_batcher_llm

    repo = render_repository(spec_for(tmp_path / "e"), tmp_path / "repo")
    configs = load_configs(repo)
    ens = configs["ensemble"]
    step = ens.ensemble_scheduling.step[1]
    step.input_map["input_idz"] = step.input_map.pop("input_ids")
    ens.output.add(name="text_output", data_type=ens.output[0].data_type, dims=[-1])
    findings = [str(f) for f in inflight_batcher_llm.check(configs)]
    assert any("error: ensemble: tensorrt_llm has no input 'input_idz'" in f for f in findings)
    assert any("warning: ensemble: output 'text_output' is declared 2 times" in f for f in findings)
    del configs["postprocessing"]
    missing = [f.message for f in inflight_batcher_llm.check(configs)]
    assert "model 'postprocessing' is missing" in missing


def test_golden_portable_repository(tmp_path: Path, update_golden: bool) -> None:
    """Template changes show up as diffs in tests/golden (refresh: make golden)."""
    engine = Path("/models/engine")  # a fixed path so the golden files are stable
    repo = render_repository(spec_for(engine, num_threads=2), tmp_path / "repo")
    rendered = {
        p.relative_to(repo).as_posix(): p.read_text() for p in sorted(repo.rglob("config.pbtxt"))
    }
    check_golden_tree(GOLDEN / "torch", rendered, update_golden, "config.pbtxt")


def test_set_parameters_changes_only_what_it_names(tmp_path: Path) -> None:
    from trtbuild.files.model_config import read_config, set_parameters

    repo = render_repository(spec_for(tmp_path / "engine"), tmp_path / "repo")
    path = repo / "tensorrt_llm" / "config.pbtxt"
    before = read_config(path)
    set_parameters(path, {"sender_threads": "8", "kv_cache": "dynamic"})
    after = read_config(path)
    assert after.parameters["sender_threads"].string_value == "8"
    assert after.parameters["kv_cache"].string_value == "dynamic"
    del after.parameters["sender_threads"]
    del after.parameters["kv_cache"]
    if "kv_cache" in before.parameters:
        del before.parameters["kv_cache"]
    assert after == before
