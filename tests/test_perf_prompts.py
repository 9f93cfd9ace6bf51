"""trtbuild._perf_prompts and _perf_sampler: prompts of exact lengths, input data, server metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtbuild._perf_prompts import (
    PromptTokenizer,
    Target,
    input_data,
    read_dataset,
    synthetic_prompts,
)
from trtbuild._perf_sampler import Sample, parse_prometheus, summarize
from trtbuild.errors import SpecError


@pytest.fixture(scope="module")
def tok(portable_engine: Path) -> PromptTokenizer:
    return PromptTokenizer(portable_engine)  # the engine directory carries the tokenizer


@pytest.mark.parametrize("length", [2, 7, 64, 300])
def test_synthetic_prompts_encode_to_exactly_the_asked_length(
    tok: PromptTokenizer, length: int
) -> None:
    prompts = synthetic_prompts(tok, count=12, input_len=length, output_len=5, seed=3)
    assert all(len(tok.encode(p.text)) == length == len(p.ids) for p in prompts)
    if length >= 7:  # distinct: no prefix cache hit by accident (one word cannot be)
        assert len({p.text for p in prompts}) == 12
    again = synthetic_prompts(tok, count=12, input_len=length, output_len=5, seed=3)
    assert [p.text for p in again] == [p.text for p in prompts]  # seeded


def test_a_length_without_room_for_text_is_refused(tok: PromptTokenizer) -> None:
    with pytest.raises(SpecError, match="--input-len 2 or more"):
        synthetic_prompts(tok, count=1, input_len=1, output_len=1, seed=0)


def test_a_dataset_is_jsonl_with_optional_output_lengths(
    tok: PromptTokenizer, tmp_path: Path
) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"text_input": "Hello there"}\n\n{"prompt": "Bonjour", "output_len": 3}\n')
    prompts = read_dataset(data, tok, count=None, output_len=9, seed=0)
    assert [(p.text, p.output_len) for p in prompts] == [("Hello there", 9), ("Bonjour", 3)]
    data.write_text('{"text": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(SpecError, match=r"p.jsonl:2: not an object"):
        read_dataset(data, tok, count=None, output_len=9, seed=0)
    data.write_text('{"question": "a"}\n')
    with pytest.raises(SpecError, match='give it as "text_input"'):
        read_dataset(data, tok, count=None, output_len=9, seed=0)


def test_input_data_sends_only_what_the_model_declares(tok: PromptTokenizer) -> None:
    prompts = synthetic_prompts(tok, count=2, input_len=6, output_len=4, seed=0)
    core = Target(
        "tensorrt_llm",
        "core",
        True,
        frozenset({"input_ids", "input_lengths", "request_output_len", "streaming", "end_id"}),
        ("output_ids",),
        (),
    )
    row = input_data(core, prompts, stream=True)["data"][0]
    assert row["input_ids"]["shape"] == [6] and row["input_lengths"] == [6]
    assert row["request_output_len"] == [4] and row["end_id"] == [-1] and row["streaming"] == [True]
    assert "min_tokens" not in row and "exclude_input_in_output" not in row
    text = Target(
        "ensemble",
        "text",
        True,
        frozenset(
            {
                "text_input",
                "max_tokens",
                "stream",
                "end_id",
                "min_tokens",
                "return_num_output_tokens",
            }
        ),
        ("text_output", "num_output_tokens"),
        ("text_output",),
    )
    row = input_data(text, prompts, stream=False)["data"][1]
    assert row == {
        "text_input": [prompts[1].text],
        "max_tokens": [4],
        "stream": [False],
        "end_id": [-1],
        "min_tokens": [4],
        "return_num_output_tokens": [True],
    }
    assert text.token_source == "num_output_tokens" and core.token_source == "output_ids"


METRICS_TEXT = """# HELP nv_inference_queue_duration_us x
nv_inference_queue_duration_us{model="tensorrt_llm",version="1"} %d
nv_inference_request_success{model="tensorrt_llm",version="1"} %d
nv_inference_request_failure{model="tensorrt_llm",reason="OTHER",version="1"} 0
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} %d
nv_trt_llm_request_metrics{request_type="active"} %d
nv_trt_llm_request_metrics{request_type="waiting"} 1
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} %d
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 100
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 1e9
nv_cpu_utilization 0.25
"""


def test_server_metrics_are_summarized_per_level() -> None:
    first = Sample(0.0, parse_prometheus(METRICS_TEXT % (1000, 10, 0, 2, 10)))
    last = Sample(1.0, parse_prometheus(METRICS_TEXT % (5000, 30, 4, 4, 30)))
    ctx = summarize([first, last])
    assert ctx is not None and ctx.samples == 2
    assert ctx.queue_time_ms == {"tensorrt_llm": pytest.approx(4000 / 20 / 1000)}
    assert ctx.pending_requests_max == 4 and ctx.active_requests_mean == 3
    assert ctx.waiting_requests_max == 1
    assert ctx.kv_cache_used_percent_max == pytest.approx(30)
    assert ctx.gpu_utilization_percent_mean == pytest.approx(50)
    assert ctx.gpu_memory_used_bytes_max == 1e9 and ctx.cpu_utilization_percent_mean == 25
    assert summarize([]) is None
    bare = summarize([Sample(0.0, parse_prometheus("nv_cpu_utilization 0.1\n"))])
    assert bare is not None and bare.kv_cache_used_percent_max is None  # absent: None, not 0
