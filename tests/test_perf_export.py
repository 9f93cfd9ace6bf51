"""trtbuild._perf_export: perf_analyzer 2.51's profile export, quirks included."""

from __future__ import annotations

import json

import pytest

from trtbuild._perf_export import ExportError, parse_export, records

OUTPUTS = ["text_output", "batch_index", "num_output_tokens", "sequence_index"]


def _export(responses: str, inputs: str = '{"max_tokens":2}') -> str:
    return (
        '{"experiments":[{"experiment":{"mode":"concurrency","value":1},"requests":[{"timestamp":'
        f'100,"request_inputs":{inputs},"response_timestamps":[150,170],"response_outputs":'
        f'{responses}}}],"window_boundaries":[0,50,100,200]}}],"version":"2.51.0",'
        '"service_kind":"triton","endpoint":""}'
    )


def test_unescaped_response_strings_are_read_back() -> None:
    """2.51 writes generated text raw: quotes, backslashes, braces and control characters."""
    raw = _export(
        '[{"text_output":"say "hi"\\ \t},","batch_index":7,"num_output_tokens":1,'
        '"sequence_index":0},{"text_output":"}]\n","batch_index":-9,"num_output_tokens":2,'
        '"sequence_index":0}]'
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw, strict=False)
    export = parse_export(raw.encode(), outputs=OUTPUTS)
    (request,) = export.requests
    assert [o["text_output"] for o in request["response_outputs"]] == ['say "hi"\\ \t},', "}]\n"]
    assert export.window_boundaries == [0, 50, 100, 200] and export.version == "2.51.0"
    (record,) = records(export, "num_output_tokens")
    assert record.response_tokens == (1, 1) and record.expected_tokens == 2
    assert record.start_ns == 100 and record.response_ns == (150, 170)


def test_output_ids_count_whether_exported_as_a_list_or_a_number() -> None:
    raw = _export(
        '[{"output_ids":[5,6,7],"sequence_length":3},{"output_ids":9,"sequence_length":1}]',
        '{"request_output_len":4,"input_lengths":6}',
    )
    (record,) = records(
        parse_export(raw), "output_ids", input_tokens=lambda i: int(i["input_lengths"])
    )
    assert record.response_tokens == (3, 1) and record.expected_tokens == 4
    assert record.input_tokens == 6


def test_cumulative_num_output_tokens_become_per_response_counts() -> None:
    raw = _export('[{"num_output_tokens":3},{"num_output_tokens":5}]')
    (record,) = records(parse_export(raw), "num_output_tokens")
    assert record.response_tokens == (3, 2)


def test_text_only_responses_are_counted_with_the_tokenizer() -> None:
    raw = _export('[{"text_output":"ab"},{"text_output":"cde"}]')
    (record,) = records(parse_export(raw), "tokenizer", count_text=len)  # one token a character
    assert record.response_tokens == (2, 3)


def test_a_missing_count_or_an_unreadable_file_is_an_error() -> None:
    with pytest.raises(ExportError, match="num_output_tokens"):
        records(
            parse_export(_export('[{"text_output":"a"},{"text_output":"b"}]')), "num_output_tokens"
        )
    with pytest.raises(ExportError, match="not valid JSON"):
        parse_export(b'{"experiments": [')
    with pytest.raises(ExportError, match="one level"):
        parse_export(b'{"experiments": []}')
