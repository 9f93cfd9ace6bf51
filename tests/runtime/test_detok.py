"""Incremental detokenization: streamed pieces add up to the full decode."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from trtbuild.runtime.detok import (
    Text,
    clean_up_tokenization,
)


@pytest.fixture(scope="module")
def text(tiny_model: Path) -> Text:
    return Text(str(tiny_model))


def stream(text: Text, ids: list[int], chunks: list[int]) -> list[str]:
    inc = text.incremental()
    pieces, k = [], 0
    for size in chunks:
        pieces.append(inc.add(ids[k : k + size]))
        k += size
    pieces.append(inc.finish())
    return pieces


@pytest.mark.parametrize("seed", range(40))
def test_random_ids_in_random_chunks_add_up_to_decode(text: Text, seed: int) -> None:
    rng = random.Random(seed)
    ids = [rng.randrange(5, text.vocab_size) for _ in range(rng.randint(1, 80))]
    chunks = []
    while sum(chunks) < len(ids):
        chunks.append(rng.randint(1, 3))
    assert "".join(stream(text, ids, chunks)) == text.decode(ids)


def test_multibyte_characters_are_held_back_until_complete(text: Text) -> None:
    ids = text.encode_plain("é 日本語 ✨")
    singles = [text.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in singles)  # the tokenizer really splits some characters
    pieces = stream(text, ids, [1] * len(ids))
    assert "".join(pieces) == "é 日本語 ✨"
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_skipped_like_decode(text: Text) -> None:
    ids = [1] + text.encode_plain("hello") + [4, 2]
    assert "".join(stream(text, ids, [1] * len(ids))) == text.decode(ids) == "hello"


def test_clean_up_tokenization_matches_transformers_rules() -> None:
    assert clean_up_tokenization("Hello , world ! I 'm here .") == "Hello, world! I'm here."


def test_missing_tokenizer_json_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Text(str(tmp_path))


@pytest.mark.parametrize(
    ("prompts", "max_tokens", "message"),
    [
        (None, 4, "exactly one string"),
        (["a", "b"], 4, "exactly one string"),
        ([""], 4, "text_input is empty"),
        (["word " * 50], 4, "accepts at most 20 \\(max_input_len\\)"),
        (["hello"], 0, "max_tokens must be >= 1, got 0"),
        (["hello"], None, "max_tokens must be >= 1, got None"),
        (["hello"], 40, "exceeds max_seq_len 32; ask for at most"),
    ],
)
def test_prompt_limits_name_the_fix(text: Text, prompts, max_tokens, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        text.prompt_ids(prompts, max_tokens, max_input_len=20, max_seq_len=32)


def test_prompt_ids_within_limits(text: Text) -> None:
    ids = text.prompt_ids(["hello"], 8, max_input_len=20, max_seq_len=32)
    assert ids == text.encode("hello") and ids[0] == 1  # BOS added
