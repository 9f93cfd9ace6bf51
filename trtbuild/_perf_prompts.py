"""Prompts for ``trtbuild perf`` and the ``--input-data`` file perf_analyzer sends them from.

Synthetic prompts have exactly the asked number of input tokens as the served model sees them:
they are encoded with the served tokenizer the way its preprocessing model encodes them (special
tokens included when it adds them), words are drawn from a fixed list with a seeded generator,
and a prompt is grown until it encodes to exactly that length. A dataset is a JSONL file, one
object per line with the prompt in ``text_input`` (or ``prompt``, or ``text``) and, optionally,
its own ``output_len``.

Every request asks for a fixed number of output tokens and sets ``end_id`` to -1 (the portable
runtime and TensorRT-LLM then ignore end tokens, and trtbuild's preprocessing drops the extra end
tokens it would add as stop words) plus ``min_tokens`` where the model declares it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError

# common English words: any tokenizer splits these into few tokens
WORDS = (  # noqa: SIM905 - a sentence reads better than a long list
    "the of and to in is that for it as with was on be by this are from or at an not which have "
    "has but all they can more one will their were when there been would what so if out about "
    "into who time some could them other than then these two may first any new like our over "
    "only also after most made many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three "
    "model server token engine batch cache memory tensor stream request response latency "
    "throughput replica pipeline parallel kernel layer attention decode prefill quantize"
).split()


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: tuple[int, ...]  # as the served preprocessing encodes the text
    output_len: int


class PromptTokenizer:
    """The served tokenizer (a ``tokenizer.json`` directory), encoding like its preprocessing."""

    def __init__(self, directory: Path, *, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer

        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise SpecError(
                f"{directory} has no tokenizer.json; pass --tokenizer with the served model's "
                "Hugging Face tokenizer directory (a fast tokenizer)"
            )
        self.directory = Path(directory)
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.add_special_tokens = add_special_tokens

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids)

    def special_tokens(self) -> int:
        """Tokens the encoding adds to every prompt (BOS, ...)."""
        plain = len(self._tok.encode("x", add_special_tokens=False).ids)
        return len(self.encode("x")) - plain

    def count_plain(self, text: str) -> int:
        """Tokens of generated text (no special tokens added)."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def exact_prompt(
    tok: PromptTokenizer, length: int, rng: random.Random, *, attempts: int = 400
) -> Prompt:
    """A prompt of random words that encodes to exactly ``length`` tokens."""
    base = tok.special_tokens()
    if length <= base:
        raise SpecError(
            f"--input-len {length} leaves no room for text: the tokenizer adds {base} special "
            f"token(s) to every prompt; pass --input-len {base + 1} or more"
        )
    words: list[str] = []
    count = base
    for _ in range(attempts):
        # grow in steps that cannot overshoot much, then word by word
        step = max(1, (length - count) // 3)
        candidate = words + [rng.choice(WORDS) for _ in range(step)]
        n = len(tok.encode(" ".join(candidate)))
        if n < length:
            words, count = candidate, n
            continue
        if n == length:
            text = " ".join(candidate)
            return Prompt(text, tuple(tok.encode(text)), 0)
        if step == 1 and words and rng.random() < 0.3:  # stuck: give back a word and retry
            words = words[:-1]
            count = len(tok.encode(" ".join(words))) if words else base
    raise SpecError(
        f"could not build a prompt of exactly {length} tokens with this tokenizer; pass another "
        "--input-len or a --dataset"
    )


def synthetic_prompts(
    tok: PromptTokenizer, *, count: int, input_len: int, output_len: int, seed: int
) -> list[Prompt]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        p = exact_prompt(tok, input_len, rng)
        prompts.append(Prompt(p.text, p.ids, output_len))
    return prompts


def read_dataset(
    path: Path, tok: PromptTokenizer, *, count: int | None, output_len: int, seed: int
) -> list[Prompt]:
    """The prompts of a JSONL file (``count`` of them, a seeded sample, when it holds more)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text; a dataset is JSONL, one prompt a line") from exc
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}:{number}: not JSON ({exc.msg}); one object a line") from exc
        if not isinstance(row, dict):
            raise SpecError(f'{path}:{number}: not an object; write {{"text_input": "..."}}')
        text = next((row[k] for k in ("text_input", "prompt", "text") if k in row), None)
        if not isinstance(text, str) or not text:
            raise SpecError(
                f'{path}:{number}: no prompt; give it as "text_input" (or "prompt", "text")'
            )
        out = row.get("output_len", output_len)
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            raise SpecError(f"{path}:{number}: output_len must be an integer >= 1")
        prompts.append(Prompt(text, tuple(tok.encode(text)), out))
    if not prompts:
        raise SpecError(f"{path} holds no prompt; write one JSON object a line")
    if count is not None and count < len(prompts):
        prompts = random.Random(seed).sample(prompts, count)
    return prompts


# -- perf_analyzer's --input-data ---------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a served model takes and returns, as ``trtbuild perf`` drives it."""

    model: str
    kind: str  # "core" (token ids in) or "text"
    decoupled: bool
    inputs: frozenset[str]
    outputs: tuple[str, ...]
    string_outputs: tuple[str, ...]

    @property
    def token_source(self) -> str:
        if "output_ids" in self.outputs:
            return "output_ids"
        if "num_output_tokens" in self.outputs and "return_num_output_tokens" in self.inputs:
            return "num_output_tokens"
        return "tokenizer"


def target_from_config(model: str, config: Mapping[str, Any], decoupled: bool) -> Target:
    inputs = frozenset(str(t["name"]) for t in config.get("input", []))
    outputs = [t for t in config.get("output", [])]
    if "input_ids" in inputs and "request_output_len" in inputs:
        kind = "core"
    elif "text_input" in inputs and "max_tokens" in inputs:
        kind = "text"
    else:
        raise SpecError(
            f"model {model!r} takes neither text_input/max_tokens nor input_ids/"
            "request_output_len; trtbuild perf drives TensorRT-LLM's ensemble, BLS and core models"
        )
    return Target(
        model=model,
        kind=kind,
        decoupled=decoupled,
        inputs=inputs,
        outputs=tuple(str(t["name"]) for t in outputs),
        string_outputs=tuple(
            str(t["name"]) for t in outputs if t.get("data_type") in ("TYPE_STRING", "BYTES")
        ),
    )


def input_data(target: Target, prompts: list[Prompt], *, stream: bool) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON: one row per prompt, only inputs the model declares."""
    rows = []
    for p in prompts:
        if target.kind == "core":
            row: dict[str, Any] = {
                "input_ids": {"content": list(p.ids), "shape": [len(p.ids)]},
                "input_lengths": [len(p.ids)],
                "request_output_len": [p.output_len],
            }
            optional: dict[str, Any] = {"streaming": stream, "exclude_input_in_output": True}
        else:
            row = {"text_input": [p.text], "max_tokens": [p.output_len]}
            optional = {"stream": stream}
        optional.update(end_id=-1, min_tokens=p.output_len, return_num_output_tokens=True)
        for name, value in optional.items():
            if name in target.inputs:
                row[name] = [value]
        rows.append(row)
    return {"data": rows}


__all__ = [
    "Prompt",
    "PromptTokenizer",
    "Target",
    "input_data",
    "read_dataset",
    "synthetic_prompts",
    "target_from_config",
]
