"""``trtbuild repo``: engine directory + tokenizer + plan -> a checked repository, per flavor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.builder.builder_fakes import trtbuild_main
from tests.goldens import check_golden_tree
from tests.repo_fakes import (
    LLAMA3_EOS,
    LLAMA3_EOT,
    write_hf_checkpoint,
    write_llama3_tokenizer,
    write_manifest,
    write_trtllm_engine,
)
from trtbuild.builder.manifest import ServingHost
from trtbuild.errors import IncompatibleArtifact, OutputExists, SpecError
from trtbuild.render import SPEC_FILE, load_configs, read_repo_spec, render_repository
from trtbuild.repo import build_repo_spec, make_repository
from trtbuild.specs import RepoOptions, RepoSpec
from trtbuild.tokens import tokenizer_ids

GOLDEN = Path(__file__).parent / "golden"
NOWHERE = ServingHost()  # nothing detected: no GPU, no TensorRT-LLM (as on this machine)


@pytest.fixture(autouse=True)
def _no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI detects the runtime; here, as on a machine without GPU or TensorRT-LLM."""
    import trtbuild.builder.manifest as manifest

    monkeypatch.setattr(manifest, "detect_host", lambda: NOWHERE)


@pytest.fixture
def llama3_tokenizer(tmp_path: Path) -> Path:
    return write_llama3_tokenizer(tmp_path / "llama3-tokenizer")


def render(engine: Path, out: Path, **options: Any) -> Path:
    return make_repository(RepoOptions(engine_dir=engine, out=out, **options)).path


def params(config: Any) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def names(config: Any) -> set[str]:
    return {t.name for t in config.input}


# -- golden repositories, one per flavor and version ----------------------------------------------
def _case_trt_tp2_fp8(tmp: Path, tok: Path) -> tuple[Path, dict[str, Any]]:
    engine = write_trtllm_engine(
        tmp / "engine", tp=2, quant_algo="FP8", kv_cache_quant_algo="FP8", tokenizer=tok
    )
    write_manifest(engine, runtime="tensorrtllm", tp=2, quant="fp8", kv_cache="fp8",
                   tokenizer_dir="tokenizer")  # fmt: skip
    return engine, {}


def _case_trt_tp1_bf16_019(tmp: Path, tok: Path) -> tuple[Path, dict[str, Any]]:
    engine = write_trtllm_engine(tmp / "engine", version="0.19.0", max_batch_size=32, tokenizer=tok)
    return engine, {"streaming": False}


def _case_llmapi_tp2_fp8(tmp: Path, tok: Path) -> tuple[Path, dict[str, Any]]:
    ckpt = write_hf_checkpoint(tmp / "ckpt", tok, quant_algo="FP8", kv_cache_quant_algo="FP8")
    write_manifest(ckpt, runtime="llmapi", tp=2, quant=None, kv_cache=None)
    return ckpt, {}


GOLDEN_CASES: dict[str, tuple[str, Callable[[Path, Path], tuple[Path, dict[str, Any]]]]] = {
    "llama3-8b-tp2-fp8-kvfp8-trtllm1.2": ("tensorrtllm", _case_trt_tp2_fp8),
    "llama3-8b-tp1-bf16-trtllm0.19-no-streaming": ("tensorrtllm", _case_trt_tp1_bf16_019),
    "llama3-8b-tp2-fp8-prequantized": ("llmapi", _case_llmapi_tp2_fp8),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_repo(
    case: str, tmp_path: Path, llama3_tokenizer: Path, update_golden: bool
) -> None:
    """Rendered configs, model.yaml and the saved spec per flavor (refresh: make golden)."""
    flavor, make = GOLDEN_CASES[case]
    engine, options = make(tmp_path, llama3_tokenizer)
    spec = build_repo_spec(engine, host=NOWHERE, **options).spec
    fixed = Path("/models/engine")  # fixed paths so the golden files are stable
    tokenizer = fixed / Path(spec.tokenizer_dir).relative_to(Path(spec.engine_dir))
    spec = spec.model_copy(update={"engine_dir": fixed, "tokenizer_dir": tokenizer})
    repo = render_repository(spec, tmp_path / "repo")
    files = [*repo.rglob("config.pbtxt"), *repo.rglob("model.yaml"), repo / SPEC_FILE]
    rendered = {p.relative_to(repo).as_posix(): p.read_text() for p in sorted(files)}
    check_golden_tree(GOLDEN / flavor / case, rendered, update_golden, "*")
    assert load_configs(repo)  # and every config parses


# -- values from the engine, the tokenizer and the plan --------------------------------------------
def test_tensorrtllm_values_come_from_engine_and_tokenizer(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    engine = write_trtllm_engine(
        tmp_path / "engine", tp=2, quant_algo="FP8", kv_cache_quant_algo="FP8",
        tokenizer=llama3_tokenizer,
    )  # fmt: skip
    result = make_repository(RepoOptions(engine_dir=engine, out=tmp_path / "repo"))
    configs = load_configs(result.path)
    assert {c.max_batch_size for c in configs.values()} == {64}  # build_config.max_batch_size
    core = configs["tensorrt_llm"]
    assert core.backend == "tensorrtllm" and core.model_transaction_policy.decoupled
    p = params(core)
    assert p["gpt_model_path"] == str(engine.resolve())
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["exclude_input_in_output"] == "true"
    assert p["enable_kv_cache_reuse"] == "true"  # the engine has paged context FMHA
    assert p["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert p["decoding_mode"] == "top_k_top_p"
    assert not (result.path / "tensorrt_llm" / "1" / "model.py").exists()  # C++: no Python
    pre = params(configs["preprocessing"])
    # Llama-3-Instruct: tokenizer eos <|eot_id|>, and <|end_of_text|> also ends generation
    assert (pre["end_id"], pre["stop_token_ids"]) == (str(LLAMA3_EOT), str(LLAMA3_EOS))
    assert (pre["max_input_len"], pre["max_seq_len"]) == ("4096", "8192")
    assert pre["tokenizer_dir"] == str((engine / "tokenizer").resolve())
    spec = read_repo_spec(result.path)
    assert (spec.tp, spec.pp, spec.kv_cache_dtype, spec.trtllm_version) == (2, 1, "fp8", "1.2.1")
    assert spec.engine is not None and spec.engine.rank_files == 2


def test_version_decides_the_client_names(tmp_path: Path, llama3_tokenizer: Path) -> None:
    old = write_trtllm_engine(tmp_path / "e019", version="0.19.0", tokenizer=llama3_tokenizer)
    new = write_trtllm_engine(tmp_path / "e12", version="1.2.1", tokenizer=llama3_tokenizer)
    c019 = load_configs(render(old, tmp_path / "r019"))
    c12 = load_configs(render(new, tmp_path / "r12"))
    for model in ("ensemble", "tensorrt_llm", "tensorrt_llm_bls"):
        assert {"random_seed", "min_length"} <= names(c019[model])
        assert not {"seed", "min_tokens", "return_num_input_tokens"} & names(c019[model])
        assert {"seed", "min_tokens"} <= names(c12[model])
        assert not {"random_seed", "min_length"} & names(c12[model])
    assert "num_output_tokens" not in {o.name for o in c019["ensemble"].output}
    assert "num_output_tokens" in {o.name for o in c12["ensemble"].output}


def test_llmapi_model_yaml_holds_the_llm_arguments(tmp_path: Path, llama3_tokenizer: Path) -> None:
    ckpt = write_hf_checkpoint(
        tmp_path / "ckpt", llama3_tokenizer, quant_algo="FP8", kv_cache_quant_algo="FP8"
    )
    result = make_repository(
        RepoOptions(engine_dir=ckpt, out=tmp_path / "repo", runtime="llmapi", streaming=False)
    )
    args = yaml.safe_load((result.path / "tensorrt_llm/1/model.yaml").read_text())
    assert args["model"] == str(ckpt.resolve()) and args["backend"] == "pytorch"
    assert args["kv_cache_config"] == {
        "dtype": "fp8",  # pre-quantized checkpoint with an FP8 KV cache (hf_quant_config.json)
        "free_gpu_memory_fraction": 0.9,
        "enable_block_reuse": True,
    }
    assert args["triton_config"] == {"max_batch_size": 0, "decoupled": False}
    configs = load_configs(result.path)
    assert set(configs) == {"ensemble", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls"}
    assert {c.max_batch_size for c in configs.values()} == {0}
    assert not configs["tensorrt_llm"].model_transaction_policy.decoupled
    assert params(configs["tensorrt_llm"])["llmapi_model_py"] == (
        "/app/all_models/llmapi/tensorrt_llm/1/model.py"
    )
    assert any("pre-quantized" in n for n in result.notes)


def test_plan_sets_limits_memory_and_replicas(tmp_path: Path, llama3_tokenizer: Path) -> None:
    from trtbuild.plan import plan_from_spec
    from trtbuild.specs import PlanRequest, PlanSpec

    plan = plan_from_spec(
        PlanSpec(
            model=str(Path(__file__).parent / "data/configs/llama-3.1-8b.json"),
            gpu="h100-sxm",
            request=PlanRequest(gpus_per_node=4, max_input_len=2048, max_output_len=512),
        )
    )
    assert (plan.tp, plan.replicas) == (1, 4)
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    engine = write_trtllm_engine(tmp_path / "engine", max_batch_size=256,
                                 tokenizer=llama3_tokenizer)  # fmt: skip
    repo = render(engine, tmp_path / "repo", plan=tmp_path / "plan.json")
    configs = load_configs(repo)
    assert configs["ensemble"].max_batch_size == plan.max_batch_size
    core = configs["tensorrt_llm"]
    assert core.instance_group[0].count == 4
    assert params(core)["gpu_device_ids"] == "0;1;2;3"
    assert params(configs["preprocessing"])["max_seq_len"] == str(plan.max_seq_len)


# -- refusals: one line naming the fix, nothing written -----------------------------------------------
def _refused(exc: type[Exception], match: str, engine: Path, out: Path, **options: Any) -> str:
    with pytest.raises(exc, match=match) as info:
        render(engine, out, **options)
    assert not out.exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refuses_world_size_that_does_not_match_the_rank_files(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    engine = write_trtllm_engine(tmp_path / "e", tp=2, ranks=1, tokenizer=llama3_tokenizer)
    _refused(SpecError, r"\(world size 2\) but its directory holds 1 rank engine file\(s\).*rebuild", engine,
             tmp_path / "repo")  # fmt: skip


def test_refuses_a_plan_for_another_layout_or_larger_batch(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    from trtbuild.plan import plan_from_spec
    from trtbuild.specs import PlanRequest, PlanSpec

    plan = plan_from_spec(
        PlanSpec(
            model=str(Path(__file__).parent / "data/configs/llama-3.1-8b.json"),
            gpu="h100-sxm",
            request=PlanRequest(concurrency=64),
        )
    )
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    tp2 = write_trtllm_engine(tmp_path / "tp2", tp=2, tokenizer=llama3_tokenizer)
    _refused(SpecError, "plans TP 1 x PP 1 but the engine is TP 2", tp2, tmp_path / "r1",
             plan=tmp_path / "plan.json")  # fmt: skip
    small = write_trtllm_engine(tmp_path / "small", max_batch_size=8, tokenizer=llama3_tokenizer)
    message = _refused(SpecError, "max_batch_size .* exceeds the engine's 8", small,
                       tmp_path / "r2", plan=tmp_path / "plan.json")  # fmt: skip
    assert "--max-batch-size" in message


def test_refuses_fp8_kv_cache_the_engine_was_not_built_with(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    engine = write_trtllm_engine(tmp_path / "e", tokenizer=llama3_tokenizer)
    spec = build_repo_spec(engine, host=NOWHERE).spec
    wrong = spec.model_copy(update={"kv_cache_dtype": "fp8"})
    with pytest.raises(SpecError, match="built with no quantized KV cache.*--kv-cache-dtype fp8"):
        render_repository(wrong, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_refuses_an_engine_for_another_gpu_or_tensorrt_llm_unless_forced(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    engine = write_trtllm_engine(tmp_path / "e", tokenizer=llama3_tokenizer)
    write_manifest(engine, runtime="tensorrtllm", tokenizer_dir="tokenizer")
    a100 = ServingHost(sm=80, gpu_name="a100-80gb", trtllm_version="1.2.1")
    with pytest.raises(IncompatibleArtifact, match=r"built for h100-sxm \(SM 90\).*SM 80.*--force"):
        build_repo_spec(engine, host=a100)
    forced = build_repo_spec(engine, host=a100, force=True)
    assert any(n.startswith("warning (--force): built for h100-sxm") for n in forced.notes)
    # no manifest: the engine's own config.json version against the installed TensorRT-LLM
    bare = write_trtllm_engine(tmp_path / "bare", version="1.2.0", tokenizer=llama3_tokenizer)
    with pytest.raises(IncompatibleArtifact, match="TensorRT-LLM 1.2.0 but the runtime has 1.2.1"):
        build_repo_spec(bare, host=a100)


def test_refuses_versions_a_flavor_cannot_serve(tmp_path: Path, llama3_tokenizer: Path) -> None:
    e13 = write_trtllm_engine(tmp_path / "e13", version="1.3.0", tokenizer=llama3_tokenizer)
    _refused(SpecError, "1.3.0 has no engine .* --runtime llmapi", e13, tmp_path / "r1")
    ckpt = write_hf_checkpoint(tmp_path / "ckpt", llama3_tokenizer)
    spec = build_repo_spec(ckpt, runtime="llmapi", host=NOWHERE).spec
    with pytest.raises(SpecError, match="needs TensorRT-LLM >= 1.0"):
        render_repository(spec.model_copy(update={"trtllm_version": "0.19.0"}), tmp_path / "r2")


def test_refuses_unclear_runtime_tokenizer_or_end_token(
    tmp_path: Path, llama3_tokenizer: Path
) -> None:
    ckpt = write_hf_checkpoint(tmp_path / "ckpt", llama3_tokenizer)
    _refused(SpecError, "--runtime llmapi .* or --runtime torch", ckpt, tmp_path / "r1")
    _refused(SpecError, "render it with --runtime tensorrtllm",
             write_trtllm_engine(tmp_path / "e", tokenizer=llama3_tokenizer), tmp_path / "r2",
             runtime="llmapi")  # fmt: skip
    write_manifest(ckpt, runtime="llmapi")
    _refused(SpecError, "built for --runtime llmapi .* render it with --runtime llmapi", ckpt,
             tmp_path / "r3", runtime="torch")  # fmt: skip
    no_tok = write_trtllm_engine(tmp_path / "no-tok")
    _refused(SpecError, "no tokenizer.json in .* pass --tokenizer", no_tok, tmp_path / "r4")
    (llama3_tokenizer / "generation_config.json").unlink()
    config = json.loads((llama3_tokenizer / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (llama3_tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    _refused(SpecError, "no end token .* generation would never stop", no_tok, tmp_path / "r5",
             tokenizer=llama3_tokenizer)  # fmt: skip


def test_never_overwrites_without_force(tmp_path: Path, llama3_tokenizer: Path) -> None:
    engine = write_trtllm_engine(tmp_path / "e", tokenizer=llama3_tokenizer)
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExists, match="--force"):
        render(engine, out)
    assert (out / "mine.txt").read_text() == "keep"
    render(engine, out, force=True)
    assert not (out / "mine.txt").exists() and (out / SPEC_FILE).is_file()


def test_strings_are_escaped_in_pbtxt_and_yaml(tmp_path: Path, llama3_tokenizer: Path) -> None:
    odd = tmp_path / 'we"ird: #path\\ ✨'
    ckpt = write_hf_checkpoint(odd, llama3_tokenizer)
    with pytest.raises(SpecError, match="contains '\"', which Triton's Python backend"):
        render(ckpt, tmp_path / "repo", runtime="llmapi")  # `trtbuild repo` refuses such paths
    # the renderer itself (the library) still escapes whatever it is given
    spec = build_repo_spec(ckpt, runtime="llmapi", host=NOWHERE).spec
    repo = render_repository(spec, tmp_path / "repo")
    args = yaml.safe_load((repo / "tensorrt_llm/1/model.yaml").read_text())
    assert args["model"] == str(odd.resolve())
    assert params(load_configs(repo)["preprocessing"])["tokenizer_dir"] == str(odd.resolve())


# -- tokenizer ids ------------------------------------------------------------------------------------
def test_end_tokens_of_llama3_base_and_instruct(llama3_tokenizer: Path) -> None:
    ids = tokenizer_ids(llama3_tokenizer)
    assert (ids.end_id, ids.pad_id, ids.stop_token_ids) == (LLAMA3_EOT, LLAMA3_EOT, (LLAMA3_EOS,))
    config = json.loads((llama3_tokenizer / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|end_of_text|>"  # the original Llama-3 release
    (llama3_tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    (llama3_tokenizer / "generation_config.json").write_text('{"eos_token_id": 128001}')
    ids = tokenizer_ids(llama3_tokenizer)
    # <|eot_id|> ends chat turns even where generation_config forgets it
    assert (ids.end_id, ids.stop_token_ids) == (LLAMA3_EOS, (LLAMA3_EOT,))


def test_tiny_model_ids(tiny_model: Path) -> None:
    from trtbuild.tiny_model import EOS_ID, EOT_ID, PAD_ID

    ids = tokenizer_ids(tiny_model)
    assert (ids.end_id, ids.pad_id, ids.stop_token_ids) == (EOS_ID, PAD_ID, (EOT_ID,))


# -- with trtbuild's own engines ------------------------------------------------------------------------
def test_from_an_engine_trtbuild_built_tp2(tiny_model: Path, tmp_path: Path) -> None:
    """The real engine builder (fake TensorRT-LLM tools): manifest, tokenizer/ and two ranks."""
    from tests.builder.builder_fakes import FAKE_TOOLCHAIN, gpus
    from trtbuild.builder.engine import BuildEnv, build_engine
    from trtbuild.check import check_repository
    from trtbuild.specs import CheckOptions, EngineSpec

    out = tmp_path / "engine"
    build_engine(
        EngineSpec(
            checkpoint=tiny_model,
            out=out,
            tp=2,
            max_batch_size=8,
            max_input_len=256,
            max_seq_len=512,
            max_num_tokens=512,
        ),  # fmt: skip
        env=BuildEnv(gpus=gpus("h100-sxm", 2), toolchain=FAKE_TOOLCHAIN),
    )
    h100 = ServingHost(sm=90, gpu_name="h100-sxm", trtllm_version="1.2.1")
    result = make_repository(RepoOptions(engine_dir=out, out=tmp_path / "repo"), host=h100)
    spec = result.spec
    assert (spec.runtime, spec.tp, spec.limits.max_batch_size) == ("tensorrtllm", 2, 8)
    assert spec.tokenizer_dir == (out / "tokenizer").resolve()
    assert check_repository(CheckOptions(repo=result.path)) == []


def test_portable_engine_through_repo(portable_engine: Path, tmp_path: Path) -> None:
    from trtbuild.check import check_repository
    from trtbuild.specs import CheckOptions

    result = make_repository(RepoOptions(engine_dir=portable_engine, out=tmp_path / "repo"))
    assert result.spec.runtime == "torch"
    assert (result.path / "tensorrt_llm/1/_trtbuild_engine.py").is_file()
    assert check_repository(CheckOptions(repo=result.path)) == []


# -- the command line ---------------------------------------------------------------------------------
def test_cli_repo(runner: CliRunner, tmp_path: Path, llama3_tokenizer: Path) -> None:
    engine = write_trtllm_engine(tmp_path / "engine", tp=2, tokenizer=llama3_tokenizer)
    out = tmp_path / "repo"
    ok = runner.invoke(trtbuild_main, ["repo", str(engine), "--out", str(out), "--no-streaming"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[0] == str(out)
    assert "TP 2 x PP 1; TensorRT-LLM 1.2.1" in ok.stdout
    assert "note: tokenizer" in ok.stderr and "128009 (<|eot_id|>)" in ok.stderr
    assert read_repo_spec(out).streaming is False
    again = runner.invoke(trtbuild_main, ["repo", str(engine), "--out", str(out)])
    assert again.exit_code == 2
    assert again.stderr == f"Error: {out} exists and is not empty; pass --force to replace it.\n"
    bad = runner.invoke(
        trtbuild_main, ["repo", str(engine), "--out", str(tmp_path / "r2"), "--runtime", "torch"]
    )
    assert bad.exit_code == 2
    assert bad.stderr.startswith("Error: ") and "--runtime tensorrtllm" in bad.stderr
    assert not (tmp_path / "r2").exists()


def test_the_spec_round_trips(tmp_path: Path, llama3_tokenizer: Path) -> None:
    engine = write_trtllm_engine(tmp_path / "e", tokenizer=llama3_tokenizer)
    result = make_repository(RepoOptions(engine_dir=engine, out=tmp_path / "repo"))
    assert read_repo_spec(result.path) == result.spec
    # and re-renders to the same repository
    again = render_repository(RepoSpec.model_validate(result.spec.model_dump()), tmp_path / "r2")
    for path in result.path.rglob("config.pbtxt"):
        assert path.read_text() == (again / path.relative_to(result.path)).read_text()


# -- trtbuild repo --spec: a saved spec rendered again -------------------------------------------------
def test_a_saved_spec_renders_again_with_overrides(
    tmp_path: Path, llama3_tokenizer: Path, runner: CliRunner
) -> None:
    """The templates say "edit the spec (trtbuild-repo.json) and re-render": --spec does that,
    without the engine directory (here: moved away)."""
    engine = write_trtllm_engine(tmp_path / "engine", tp=2, tokenizer=llama3_tokenizer)
    first = make_repository(RepoOptions(engine_dir=engine, out=tmp_path / "repo")).path
    moved = engine.rename(tmp_path / "elsewhere")
    result = runner.invoke(
        trtbuild_main,
        [
            "repo",
            "--spec",
            str(first / SPEC_FILE),
            "--out",
            str(tmp_path / "again"),
            "--no-streaming",
        ],
    )
    assert result.exit_code == 0, result.output
    again = read_repo_spec(tmp_path / "again")
    assert again == read_repo_spec(first).model_copy(update={"streaming": False})
    assert (
        load_configs(tmp_path / "again")["tensorrt_llm"].model_transaction_policy.decoupled is False
    )
    # an edited spec is rendered as edited (and checked: a bad edit is refused, nothing written)
    data = json.loads((first / SPEC_FILE).read_text())
    data["spec"]["limits"]["max_batch_size"] = 999
    (first / SPEC_FILE).write_text(json.dumps(data))
    bad = runner.invoke(
        trtbuild_main, ["repo", "--spec", str(first), "--out", str(tmp_path / "bad")]
    )
    assert bad.exit_code == 2 and "max_batch_size 999 exceeds the engine's 64" in bad.stderr
    assert not (tmp_path / "bad").exists()
    assert moved.is_dir()


def test_spec_and_engine_dir_are_one_or_the_other(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(trtbuild_main, ["repo", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: give an engine directory or --spec FILE (a saved trtbuild-repo.json), one of them\n"
    )
