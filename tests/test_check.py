"""``trtbuild check``: each mistake from issue 5's "Why" on a purpose-broken repository, one test
each; trtbuild's own output passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.builder.builder_fakes import trtbuild_main
from tests.repo_fakes import write_hf_checkpoint, write_llama3_tokenizer, write_trtllm_engine
from trtbuild.builder.manifest import ServingHost
from trtbuild.check import Finding, check_repository, parameter_keys, run_check
from trtbuild.errors import SpecError
from trtbuild.render import SPEC_FILE, render_repository
from trtbuild.repo import build_repo_spec
from trtbuild.specs import CheckOptions


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Llama-3-8B-shaped TP2 engine, its tokenizer, and trtbuild's repositories for it."""
    tmp = tmp_path_factory.mktemp("check")
    tok = write_llama3_tokenizer(tmp / "tok")
    engine = write_trtllm_engine(tmp / "engine", tp=2, tokenizer=tok)
    cpp = render_repository(build_repo_spec(engine, host=ServingHost()).spec, tmp / "cpp")
    ckpt = write_hf_checkpoint(tmp / "ckpt", tok)
    llmapi_spec = build_repo_spec(ckpt, runtime="llmapi", host=ServingHost()).spec
    llmapi = render_repository(llmapi_spec, tmp / "llmapi")
    return {"tok": tok, "engine": engine, "cpp": cpp, "ckpt": ckpt, "llmapi": llmapi}


def copy(src: Path, dst: Path, *, hand_written: bool = False) -> Path:
    shutil.copytree(src, dst)
    if hand_written:  # no trtbuild-repo.json: as written by hand or with fill_template.py
        (dst / SPEC_FILE).unlink()
    return dst


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def check(repo: Path, engine: Path | None = None) -> list[str]:
    """Findings as ``trtbuild check`` prints them: errors first."""
    return [str(f) for f in run_check(CheckOptions(repo=repo, engine=engine)).findings]


def only(findings: list[str], needle: str) -> str:
    hits = [f for f in findings if needle in f]
    assert len(hits) == 1, f"{needle!r} not found once in {findings}"
    return hits[0]


# -- trtbuild's own output -------------------------------------------------------------------------
def test_trtbuild_repositories_are_clean(made: dict[str, Path], runner: CliRunner) -> None:
    assert check(made["cpp"]) == []
    assert check(made["llmapi"]) == []
    result = runner.invoke(trtbuild_main, ["check", str(made["cpp"])])
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"{made['cpp']}: no findings\n"


# -- the mistakes of "Why", one each -----------------------------------------------------------------
def test_unfilled_placeholders_name_file_and_line(
    made: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "preprocessing/config.pbtxt", "max_batch_size: 64", "max_batch_size: ${triton_max_batch_size}")  # fmt: skip
    core = repo / "tensorrt_llm/config.pbtxt"
    edit(core, f'string_value: "{made["engine"].resolve()}"', 'string_value: "${engine_dir}"')
    findings = check(repo)
    line = 1 + (repo / "preprocessing/config.pbtxt").read_text().split("${")[0].count("\n")
    assert only(findings, "${triton_max_batch_size}") == (
        f"error: preprocessing: unfilled placeholder ${{triton_max_batch_size}} in "
        f"preprocessing/config.pbtxt:{line}: Triton cannot parse this config until it is filled "
        "(fix: fill it (fill_template.py ... triton_max_batch_size:VALUE), or render the "
        "repository with 'trtbuild repo')"
    )
    engine_dir = only(findings, "${engine_dir}")
    assert engine_dir.startswith(
        "error: tensorrt_llm: unfilled placeholder ${engine_dir} in tensorrt_llm/config.pbtxt:"
    )
    # what upstream's backend does with it (ensembles/upstream), not a guess
    from trtbuild.ensembles.upstream import facts

    effect = facts("1.2").placeholder("tensorrt_llm", "engine_dir")
    assert effect is not None and effect.effect in engine_dir
    assert not any("not a valid Triton model config" in f for f in findings)  # no protobuf trace
    result = runner.invoke(trtbuild_main, ["check", str(repo)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == findings
    assert result.stderr == f"Error: 2 errors, 0 warnings in {repo}\n"


def test_max_batch_size_out_of_step_across_models(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "postprocessing/config.pbtxt", "max_batch_size: 64", "max_batch_size: 16")
    assert check(repo) == [
        "warning: repository: max_batch_size differs between models: ensemble 64, postprocessing 16, "
        "preprocessing 64, tensorrt_llm 64, tensorrt_llm_bls 64 (fix: use one value in every "
        "config.pbtxt (fill_template.py's triton_max_batch_size), at most the engine's "
        "build_config.max_batch_size)"
    ]


def test_max_batch_size_beyond_the_engines(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    for config in repo.glob("*/config.pbtxt"):
        edit(config, "max_batch_size: 64", "max_batch_size: 128")
    assert check(repo) == [
        "error: tensorrt_llm: max_batch_size 128 exceeds the engine's 64 (build_config.max_batch_size) "
        "(fix: set max_batch_size <= 64 in the config.pbtxt files, or rebuild with 'trtbuild "
        "engine --max-batch-size 128')"
    ]


def test_streaming_without_decoupled(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "tensorrt_llm_bls/config.pbtxt", "decoupled: false", "decoupled: true")
    edit(repo / "tensorrt_llm/config.pbtxt", "decoupled: true", "decoupled: false")
    assert only(check(repo), "streams").startswith(
        "error: tensorrt_llm_bls: streams (decoupled: true) but tensorrt_llm is not decoupled"
    )
    # upstream's BLS with tensorrt_llm_model_name left unfilled calls "tensorrt_llm" too
    edit(repo / "tensorrt_llm_bls/config.pbtxt", 'string_value: "tensorrt_llm" }',
         'string_value: "${tensorrt_llm_model_name}" }')  # fmt: skip
    assert only(check(repo), "streams").startswith(
        "error: tensorrt_llm_bls: streams (decoupled: true)"
    )
    # a trtbuild repository whose config was edited by hand against its spec
    ours = copy(made["cpp"], tmp_path / "ours")
    edit(ours / "tensorrt_llm/config.pbtxt", "decoupled: true", "decoupled: false")
    assert check(ours) == [
        "warning: tensorrt_llm: trtbuild-repo.json says streaming true but config.pbtxt has decoupled "
        "false (fix: re-render with 'trtbuild repo --streaming' (or --no-streaming) instead of "
        "editing config.pbtxt)"
    ]


def test_prompt_echoed(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    core = repo / "tensorrt_llm/config.pbtxt"
    block = 'key: "exclude_input_in_output"\n  value: { string_value: "true" }'
    edit(core, block, block.replace('"true"', '"false"'))
    assert check(repo) == [
        "warning: tensorrt_llm: exclude_input_in_output is 'false': text_output repeats the prompt and "
        'benchmarks count it as output (fix: set parameter exclude_input_in_output to "true" '
        "(clients can still ask per request))"
    ]
    # asked for in trtbuild's spec: not a finding
    spec = build_repo_spec(made["engine"], host=ServingHost()).spec
    asked = render_repository(
        spec.model_copy(update={"exclude_input_in_output": False}), tmp_path / "asked"
    )
    assert check(asked) == []


def test_llama3_end_token_never_stops_generation(made: dict[str, Path], tmp_path: Path) -> None:
    """The original Llama-3 tokenizer ends at <|end_of_text|>; chat turns end at <|eot_id|>."""
    tok = write_llama3_tokenizer(tmp_path / "tok")
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(
        json.dumps({**config, "eos_token": "<|end_of_text|>"})
    )
    engine = write_trtllm_engine(tmp_path / "engine", tokenizer=tok)
    repo = render_repository(build_repo_spec(engine, host=ServingHost()).spec, tmp_path / "repo")
    assert check(repo) == []  # trtbuild adds <|eot_id|> as a stop token
    (repo / SPEC_FILE).unlink()
    pre = repo / "preprocessing/config.pbtxt"
    edit(pre, 'key: "stop_token_ids"\n  value: { string_value: "128009" }', 'key: "stop_token_ids"\n  value: { string_value: "" }')  # fmt: skip
    finding = only(check(repo), "never stop")
    assert finding.startswith(
        "warning: preprocessing: end token(s) 128009 (<|eot_id|>) of "
        f"{(engine / 'tokenizer').resolve()} never stop generation: only end_id 128001 does"
    )


def test_missing_tokenizer_files(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = f'string_value: "{(made["engine"] / "tokenizer").resolve()}"'
    for model in ("preprocessing", "postprocessing"):
        edit(repo / model / "config.pbtxt", where, f'string_value: "{empty}"')
    findings = check(repo)
    assert [f.split(": ")[1] for f in findings] == ["preprocessing", "postprocessing"]
    assert all(f.startswith("error: ") for f in findings)
    assert f"tokenizer_dir {empty} has no tokenizer files" in findings[0]
    assert "end_id/pad_id and the text cannot be produced" in findings[0]


def test_engine_for_another_tensorrt_llm_version(made: dict[str, Path], tmp_path: Path) -> None:
    engine = shutil.copytree(made["engine"], tmp_path / "engine")
    config = json.loads((engine / "config.json").read_text())
    (engine / "config.json").write_text(json.dumps({**config, "version": "1.2.0"}))
    assert check(made["cpp"], engine=engine) == [
        "error: tensorrt_llm: the engine is TensorRT-LLM 1.2.0 but the repository targets 1.2.1 "
        "(fix: re-render the repository with 'trtbuild repo' for this engine)"
    ]


def test_tp_x_pp_against_the_rank_files(made: dict[str, Path], tmp_path: Path) -> None:
    engine = shutil.copytree(made["engine"], tmp_path / "engine")
    (engine / "rank1.engine").unlink()
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    assert check(repo, engine=engine) == [
        f"error: tensorrt_llm: the engine is TP 2 x PP 1 (world size 2) but its directory ({engine}) holds 1 rank "
        "engine file(s); MPI world size, TP x PP and rank{N}.engine must all agree (fix: rebuild "
        "the engine completely ('trtbuild engine'), and launch one MPI rank per engine file "
        "('trtbuild serve' does))"
    ]


def test_gpu_device_ids_per_instance_must_cover_tp_x_pp(
    made: dict[str, Path], tmp_path: Path
) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(
        repo / "tensorrt_llm/config.pbtxt",
        'parameters: {\n  key: "tokenizer_dir"',
        'parameters: {\n  key: "gpu_device_ids"\n  value: { string_value: "0;1" }\n}\n'
        'parameters: {\n  key: "tokenizer_dir"',
    )
    findings = check(repo)
    assert findings[0] == (
        "error: tensorrt_llm: gpu_device_ids lists 2 instance(s) but instance_group has 1 (fix: set "
        "instance_group count to 2 (one GPU set per instance))"
    )
    assert findings[1:] == [
        f"error: tensorrt_llm: gpu_device_ids[{i}] lists 1 GPU(s) but each tensorrt_llm instance "
        'needs TP x PP = 2 (fix: list 2 GPU(s) per instance, e.g. "0,1")'
        for i in (0, 1)
    ]


def test_keys_declared_twice(made: dict[str, Path], tmp_path: Path) -> None:
    """Upstream's ensemble declares kv_cache_alloc_total_blocks twice; a parameter set twice
    silently keeps the last value."""
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    declared = '  {\n    name: "kv_cache_alloc_total_blocks"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n  },\n'
    edit(repo / "ensemble/config.pbtxt", declared, declared * 2)
    edit(
        repo / "tensorrt_llm/config.pbtxt",
        'parameters: {\n  key: "tokenizer_dir"',
        'parameters: {\n  key: "max_beam_width"\n  value: { string_value: "4" }\n}\n'
        'parameters: {\n  key: "tokenizer_dir"',
    )
    findings = check(repo)
    assert only(findings, "declared 2 times") == (
        "warning: ensemble: output 'kv_cache_alloc_total_blocks' is declared 2 times "
        "(fix: keep one declaration)"
    )
    assert only(findings, "set 2 times") == (
        "warning: tensorrt_llm: parameter 'max_beam_width' is set 2 times in tensorrt_llm/config.pbtxt; "
        "Triton keeps only the last (fix: keep one)"
    )
    assert only(findings, "max_beam_width 4").startswith(  # and the value it keeps is too big
        "error: tensorrt_llm: max_beam_width 4 exceeds the engine's 1"
    )


def test_ensemble_wiring(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "ensemble/config.pbtxt", 'input_map { key: "input_ids" value: "_INPUT_ID" }',
         'input_map { key: "input_ids" value: "_INPUT_IDS" }')  # fmt: skip
    findings = check(repo)
    assert only(findings, "_INPUT_IDS").startswith(
        "error: ensemble: tensorrt_llm input 'input_ids' reads '_INPUT_IDS', which no earlier step or "
        "ensemble input provides (fix: map every step input"
    )


def test_not_valid_pbtxt_is_one_finding(made: dict[str, Path], tmp_path: Path) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "postprocessing/config.pbtxt", 'backend: "python"', 'backend: "python"\nbogus: 1')
    assert check(repo) == [
        "error: postprocessing: postprocessing/config.pbtxt is not a valid Triton model config: 4:1 : "
        'Message type "inference.ModelConfig" has no field named "bogus". (fix: correct the '
        "syntax at that line)"
    ]


# -- the llmapi flavor -------------------------------------------------------------------------------
def test_llmapi_model_yaml_against_config_and_checkpoint(
    made: dict[str, Path], tmp_path: Path
) -> None:
    repo = copy(made["llmapi"], tmp_path / "repo", hand_written=True)
    yaml_path = repo / "tensorrt_llm/1/model.yaml"
    edit(yaml_path, "  decoupled: true", "  decoupled: false")
    edit(yaml_path, "  dtype: auto\n  free_gpu", "  dtype: fp8\n  free_gpu")
    findings = check(repo)
    assert only(findings, "triton_config.decoupled").startswith(
        "error: tensorrt_llm: model.yaml triton_config.decoupled is False but config.pbtxt says true"
    )
    assert only(findings, "kv_cache_config.dtype fp8").startswith(
        f"error: tensorrt_llm: kv_cache_config.dtype fp8 but {made['ckpt'].resolve()} was not made with "
        "an FP8 KV cache"
    )
    assert len(findings) == 2


def test_llmapi_model_alone_echoes_the_prompt(made: dict[str, Path], tmp_path: Path) -> None:
    """TensorRT-LLM's llmapi repository as upstream ships it: one model, no front."""
    repo = tmp_path / "repo"
    shutil.copytree(made["llmapi"] / "tensorrt_llm", repo / "tensorrt_llm")
    assert only(check(repo), "repeats the prompt").startswith(
        "warning: tensorrt_llm: TensorRT-LLM's llmapi model defaults sampling_param_exclude_input_from_"
        "output to false"
    )


# -- inputs that are not repositories ---------------------------------------------------------------
def test_not_a_repository_is_a_usage_error(tmp_path: Path, runner: CliRunner) -> None:
    with pytest.raises(SpecError, match="holds no \\*/config.pbtxt"):
        check_repository(CheckOptions(repo=tmp_path))
    result = runner.invoke(trtbuild_main, ["check", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {tmp_path / 'missing'} is not a directory; pass a Triton model repository\n"
    )


def test_parameter_keys_reads_every_form() -> None:
    text = (
        'name: "m"\n'
        'parameters: { key: "a" value: { string_value: "1" } }\n'
        'parameters [ { key: \'b\' value { string_value: "x" } }, { key: "a" } ]\n'
        'instance_group [ { parameters: { key: "nested" } } ]\n'
        '# parameters: { key: "commented" }\n'
    )
    assert parameter_keys(text) == ["a", "b", "a"]


def test_findings_print_as_severity_model_message_fix() -> None:
    finding: Any = Finding("ensemble", "something is wrong", "do this")
    assert str(finding) == "error: ensemble: something is wrong (fix: do this)"
    assert str(Finding("m", "odd", "look", "warning")) == "warning: m: odd (fix: look)"


def test_warnings_exit_0_unless_strict(
    made: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    repo = copy(made["cpp"], tmp_path / "repo", hand_written=True)
    edit(repo / "postprocessing/config.pbtxt", "max_batch_size: 64", "max_batch_size: 16")
    result = runner.invoke(trtbuild_main, ["check", str(repo)])
    assert result.exit_code == 0
    assert result.stdout.startswith("warning: repository: max_batch_size differs")
    assert result.stderr == f"{repo}: 0 errors, 1 warning\n"
    strict = runner.invoke(trtbuild_main, ["check", str(repo), "--strict"])
    assert strict.exit_code == 1
    assert strict.stderr == f"Error: 0 errors, 1 warning in {repo} (--strict: warnings fail)\n"


def test_paths_the_stub_launch_cannot_take(made: dict[str, Path], tmp_path: Path) -> None:
    """Triton's Python backend starts stubs through an unquoted `bash -c`: check says so."""
    repo = copy(made["cpp"], tmp_path / "my repo")
    findings = check(repo)
    assert findings == [
        f"error: repository: the repository path {str(repo.resolve())!r} contains ' ', which "
        "Triton's Python backend cannot pass through its unquoted shell command (fix: move or "
        "rename it to a path of only ASCII letters, digits and / . _ - + = @ , : %)"
    ]
