"""The consistency rules (ensembles/_rules.py), one test each, over views from both sources: a
``RepoSpec`` (render time) and a repository's parsed configs (``trtbuild check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.repo_fakes import write_llama3_tokenizer, write_trtllm_engine
from trtbuild.builder.manifest import ServingHost
from trtbuild.ensembles._rules import RepoView, findings, view_from_spec
from trtbuild.ensembles._wiring import ensemble_findings
from trtbuild.errors import SpecError
from trtbuild.files.model_config import load_configs
from trtbuild.render import render_repository
from trtbuild.repo import build_repo_spec
from trtbuild.specs import EngineInfo, RepoSpec, ServingLimits


def spec(**update: Any) -> RepoSpec:
    base = RepoSpec(engine_dir=Path("/e"), tokenizer_dir=Path("/t"), end_id=2, pad_id=0)
    return base.model_copy(update=update)


def engine(**values: Any) -> EngineInfo:
    return EngineInfo(**{"runtime": "tensorrtllm", "tp": 1, "pp": 1, "world_size": 1, **values})


def messages(view: RepoView) -> list[str]:
    return [f.message for f in findings(view)]


def test_a_clean_spec_has_no_findings() -> None:
    assert findings(view_from_spec(spec())) == []
    assert findings(view_from_spec(spec(runtime="tensorrtllm", engine=engine()))) == []


def test_gpu_reuse_between_instances() -> None:
    view = view_from_spec(spec(runtime="tensorrtllm", gpu_device_ids=[[0], [0]], engine=engine()))
    assert messages(view) == ["gpu_device_ids[1] reuses GPU(s) [0]"]
    configs = RepoView(source="configs", runtime="tensorrtllm", gpu_device_ids=((1,), (1,)),
                       core_instances=2, engine=engine())  # fmt: skip
    assert [f.model for f in findings(configs)] == ["tensorrt_llm"]


def test_context_length_beyond_the_models_positions() -> None:
    e = EngineInfo(runtime="torch", max_position_embeddings=1024)
    view = view_from_spec(spec(engine=e))  # default max_seq_len 2048
    (finding,) = findings(view)
    assert finding.message == "max_seq_len 2048 exceeds the model's max_position_embeddings 1024"
    assert finding.fix == "lower max_seq_len to <= 1024 in the plan or spec and re-render"


def test_paged_kv_features_need_paged_context_fmha() -> None:
    e = engine(paged_context_fmha=False)
    view = view_from_spec(spec(runtime="tensorrtllm", engine=e, enable_kv_cache_reuse=True))
    assert messages(view) == [
        "enable_kv_cache_reuse needs an engine built with paged context FMHA (use_paged_context_fmha)"
    ]
    off = view_from_spec(spec(runtime="tensorrtllm", engine=e, enable_kv_cache_reuse=False))
    assert findings(off) == []


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype fp8 but the engine was built with no quantized KV cache"),
        ({"max_beam_width": 4}, "max_beam_width 4 exceeds the engine's 1"),
        ({"trtllm_version": "1.2.0"}, "the engine is TensorRT-LLM 1.2.1 but the repository targets 1.2.0"),
        ({"tp": 2}, "TP x PP = 2 x 1 = 2 but the engine was built for TP 1 x PP 1 = 1 GPU(s)"),
        ({"runtime": "llmapi"}, "the engine directory is for --runtime tensorrtllm"),
    ],
)  # fmt: skip
def test_what_the_engine_was_built_with_is_a_ceiling(update: dict[str, Any], message: str) -> None:
    e = engine(trtllm_version="1.2.1", max_batch_size=64)
    view = view_from_spec(spec(**{"runtime": "tensorrtllm", "engine": e, **update}))
    assert message in messages(view)


def test_a_streaming_bls_needs_a_decoupled_core() -> None:
    view = view_from_spec(spec(streaming=False, bls_decoupled=True))
    (finding,) = findings(view)
    assert finding.message.startswith("tensorrt_llm_bls streams (decoupled: true)")
    with pytest.raises(SpecError, match="tensorrt_llm_bls streams"):
        render_repository(spec(streaming=False, bls_decoupled=True), Path("/nonexistent/x"))


def test_spec_and_configs_agree(tmp_path: Path) -> None:
    """The same deployment, seen from its spec and from its rendered configs, gets the same
    verdict from each shared rule."""
    tok = write_llama3_tokenizer(tmp_path / "tok")
    eng = write_trtllm_engine(tmp_path / "engine", tp=2, tokenizer=tok)
    built = build_repo_spec(eng, host=ServingHost()).spec
    repo = render_repository(built, tmp_path / "repo")
    from trtbuild.check import run_check
    from trtbuild.specs import CheckOptions

    assert findings(view_from_spec(built)) == []
    assert run_check(CheckOptions(repo=repo)).findings == []
    # one GPU group per instance, but for a TP 2 engine each must list 2 GPUs
    wrong = built.model_copy(update={"gpu_device_ids": [[0], [1]]})
    spec_view = [f.message for f in findings(view_from_spec(wrong))]
    assert spec_view == [
        "gpu_device_ids[0] lists 1 GPU(s) but each tensorrt_llm instance needs TP x PP = 2",
        "gpu_device_ids[1] lists 1 GPU(s) but each tensorrt_llm instance needs TP x PP = 2",
    ]


def test_limits_validate_their_relations() -> None:
    with pytest.raises(ValueError, match="must be below max_seq_len"):
        ServingLimits(max_input_len=2048, max_seq_len=2048)
    with pytest.raises(ValueError, match="so the longest prompt can be prefilled"):
        ServingLimits(max_input_len=1024, max_seq_len=2048, max_num_tokens=512)


# -- wiring (ensembles/_wiring.py) ---------------------------------------------------------------------
@pytest.fixture
def wired(tmp_path: Path) -> dict[str, Any]:
    return load_configs(render_repository(spec(), tmp_path / "repo"))


def test_wiring_a_wrong_data_type(wired: dict[str, Any]) -> None:
    pre = wired["preprocessing"]
    next(t for t in pre.output if t.name == "INPUT_ID").data_type = 9  # TYPE_INT64
    found = ensemble_findings("ensemble", wired["ensemble"], wired)
    assert [f.message for f in found] == [
        "tensorrt_llm input 'input_ids' has another data type than '_INPUT_ID'"
    ]
    assert found[0].severity == "error"


def test_wiring_a_tensor_produced_but_never_used(wired: dict[str, Any]) -> None:
    step = wired["ensemble"].ensemble_scheduling.step[1]
    del step.input_map["embedding_bias"]  # _EMBEDDING_BIAS is still produced by preprocessing
    found = ensemble_findings("ensemble", wired["ensemble"], wired)
    assert [(f.message, f.severity) for f in found] == [
        ("ensemble tensor '_EMBEDDING_BIAS' is produced but never used", "warning")
    ]
