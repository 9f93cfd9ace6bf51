"""Read perf_analyzer 2.51's ``--profile-export-file`` into ``RequestRecord``s. Pure: text in.

Two quirks of 2.51 shape this reader:

- response strings are copied into the file without JSON escaping, so a generated ``"`` or
  ``\\`` makes it invalid JSON. The string outputs are re-escaped before parsing: each one ends
  at the first ``"`` that is followed by the next output's key (``,"name":``) or by the end of
  the response object; what lies between is the value.
- every output the model declares appears in every response, those the model did not send
  filled with whatever the buffer held. Only outputs that were asked for are read: ``output_ids``
  (the core model always sends them), ``num_output_tokens`` (only when the request set
  ``return_num_output_tokens``) and the text.

Token counts come from the responses, never from the request: the length of ``output_ids`` of
each response (exported as a number when it holds one id), the growth of ``num_output_tokens``
(cumulative while streaming), or the tokenizer over the text received so far.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trtbuild._perf_metrics import RequestRecord

TokenSource = Literal["output_ids", "num_output_tokens", "tokenizer"]
TEXT_OUTPUTS = ("text_output", "output_text")


class ExportError(ValueError):
    """The export cannot be read; the message says what was wrong."""


@dataclass(frozen=True)
class ProfileExport:
    version: str
    requests: list[dict[str, Any]]
    window_boundaries: list[int]


def _escape_strings(text: str, string_outputs: Sequence[str], all_outputs: Sequence[str]) -> str:
    """Re-escape the raw values of ``string_outputs`` (see the module docstring)."""
    if not string_outputs:
        return text
    names = "|".join(re.escape(n) for n in sorted(set(all_outputs), key=len, reverse=True))
    end_re = re.compile(rf'"(?=,"(?:{names})":|\}}\s*(?:,\s*\{{|\]))')
    key_re = re.compile('"(?:' + "|".join(re.escape(n) for n in string_outputs) + ')":"')
    out: list[str] = []
    pos = 0
    while True:
        match = key_re.search(text, pos)
        if match is None:
            out.append(text[pos:])
            return "".join(out)
        value_start = match.end()
        end = end_re.search(text, value_start)
        if end is None:
            raise ExportError("a response string has no end")
        out.append(text[pos:value_start])
        out.append(json.dumps(text[value_start : end.start()], ensure_ascii=False)[1:-1])
        out.append('"')
        pos = end.start() + 1


def parse_export(
    raw: bytes | str, *, string_outputs: Sequence[str] = TEXT_OUTPUTS, outputs: Sequence[str] = ()
) -> ProfileExport:
    """Parse an export; ``outputs``: every output name the model declares (for re-escaping)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text, strict=False)
    except json.JSONDecodeError:
        try:
            repaired = _escape_strings(text, string_outputs, outputs or string_outputs)
            data = json.loads(repaired, strict=False)
        except (json.JSONDecodeError, ExportError) as exc:
            raise ExportError(f"not valid JSON even with its strings re-escaped ({exc})") from exc
    try:
        (experiment,) = data["experiments"]
        requests = list(experiment["requests"])
        bounds = [int(b) for b in experiment.get("window_boundaries") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"not a perf_analyzer profile export of one level ({exc!r})") from exc
    return ProfileExport(str(data.get("version", "")), requests, bounds)


def _ids_count(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    return 0 if value is None else 1


def _scalar(value: Any) -> int | None:
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    return "" if value is None else str(value)


def response_tokens(
    outputs: Sequence[dict[str, Any]],
    source: TokenSource,
    count_text: Callable[[str], int] | None = None,
) -> tuple[int, ...]:
    """Output tokens each response carried, from ``source``."""
    if source == "output_ids":
        return tuple(_ids_count(o.get("output_ids")) for o in outputs)
    if source == "num_output_tokens":
        counts, seen = [], 0
        for o in outputs:
            total = _scalar(o.get("num_output_tokens"))
            if total is None:
                raise ExportError("a response has no num_output_tokens")
            counts.append(max(0, total - seen))
            seen = max(seen, total)
        return tuple(counts)
    if count_text is None:
        raise ValueError("counting tokens from text needs a tokenizer")
    counts, text, seen = [], "", 0
    for o in outputs:
        text += _text(next((o[k] for k in TEXT_OUTPUTS if k in o), ""))
        total = count_text(text) if text else 0
        counts.append(max(0, total - seen))
        seen = max(seen, total)
    return tuple(counts)


def records(
    export: ProfileExport,
    source: TokenSource,
    *,
    count_text: Callable[[str], int] | None = None,
    input_tokens: Callable[[dict[str, Any]], int | None] | None = None,
) -> list[RequestRecord]:
    """One ``RequestRecord`` per request of the export."""
    found = []
    for request in export.requests:
        stamps = tuple(int(t) for t in request.get("response_timestamps") or [])
        outputs = list(request.get("response_outputs") or [])
        if len(outputs) != len(stamps):  # an older export without outputs: nothing to count
            raise ExportError("responses and their outputs do not pair up")
        inputs = request.get("request_inputs") or {}
        expected = _scalar(inputs.get("max_tokens", inputs.get("request_output_len")))
        found.append(
            RequestRecord(
                start_ns=int(request["timestamp"]),
                response_ns=stamps,
                response_tokens=response_tokens(outputs, source, count_text),
                expected_tokens=expected,
                input_tokens=input_tokens(inputs) if input_tokens is not None else None,
            )
        )
    return found


__all__ = ["ExportError", "ProfileExport", "TokenSource", "parse_export", "records"]
