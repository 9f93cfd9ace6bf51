"""Token ids to text, for Triton's pre/postprocessing models and the portable runtime.

Imports only ``tokenizers`` (fast to load, no torch), because ``trtbuild repo`` copies this file
verbatim next to the Triton ``model.py`` files that use it.

Streaming text is the hard part. Decoding each streamed token on its own loses the leading space
that SentencePiece-style tokenizers attach to a word and splits multi-byte UTF-8 characters
(emoji, CJK) into replacement characters. ``IncrementalDetokenizer`` decodes a short window of
recent tokens, emits only the text that is stable, and holds back a trailing partial character,
so the concatenation of its pieces equals ``decode(all ids)``.
"""

from __future__ import annotations

import json
import os
from typing import Any

REPLACEMENT = "\ufffd"


class Text:
    """A tokenizer directory's ``tokenizer.json`` plus the decode options of its config."""

    def __init__(self, tokenizer_dir: str, *, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer

        path = os.path.join(tokenizer_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: the portable pre/postprocessing models need a fast "
                "(tokenizers) tokenizer.json in tokenizer_dir"
            )
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.add_special_tokens = add_special_tokens
        config = _read_json(os.path.join(tokenizer_dir, "tokenizer_config.json"))
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids)

    def encode_plain(self, text: str) -> list[int]:
        """Ids without BOS/EOS, for stop and bad words."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_default(self, text: str) -> list[int]:
        """Ids as ``transformers``' ``tokenizer.encode(text)`` gives them by default (special tokens
        added whatever ``add_special_tokens`` says): how upstream's preprocessing encodes
        embedding-bias words."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def prompt_ids(
        self,
        prompts: list[str] | None,
        max_tokens: int | None,
        *,
        max_input_len: int | None = None,
        max_seq_len: int | None = None,
    ) -> list[int]:
        """Tokenize a request's one prompt and enforce the deployment's limits.

        Raises ``ValueError`` with a message that names the fix (preprocessing reports it to the
        client as an invalid argument).
        """
        if not prompts or len(prompts) != 1:
            raise ValueError("text_input must hold exactly one string per request")
        if not prompts[0]:
            raise ValueError("text_input is empty; send a prompt")
        ids = self.encode(prompts[0])
        if not ids:
            raise ValueError("text_input tokenized to nothing; send a non-empty prompt")
        if max_input_len and len(ids) > max_input_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; this deployment accepts at most "
                f"{max_input_len} (max_input_len)"
            )
        if max_tokens is None or max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_seq_len and len(ids) + max_tokens > max_seq_len:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds max_seq_len "
                f"{max_seq_len}; ask for at most {max(max_seq_len - len(ids), 0)} tokens"
            )
        return ids

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.tokenizer.decode(
            [i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=skip_special_tokens
        )
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def incremental(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces whose concatenation is ``decode(ids)``.

    ``prefix`` marks the start of the decode window and ``read`` the end of what was already
    turned into text: each call decodes ``ids[prefix:]`` and emits what goes beyond the text of
    ``ids[prefix:read]`` once it no longer ends in a partial character.
    """

    def __init__(self, text: Text, *, skip_special_tokens: bool = True) -> None:
        self.text = text
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.emitted = 0  # characters of decode(ids) emitted so far (for the final check)
        self.pieces: list[str] = []

    def add(self, new_ids: list[int]) -> str:
        """Feed new ids; return the text that became final (possibly empty)."""
        self.ids.extend(int(i) for i in new_ids)
        before = self.text.decode(self.ids[self.prefix : self.read], self.skip)
        after = self.text.decode(self.ids[self.prefix :], self.skip)
        if (
            len(after) > len(before)
            and not after.endswith(REPLACEMENT)
            and after.startswith(before)
        ):
            piece = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            return self._emit(piece)
        return ""

    def finish(self) -> str:
        """Flush what is held back; the pieces so far then add up to ``decode(ids)``."""
        full = self.text.decode(self.ids, self.skip)
        sent = "".join(self.pieces)
        if full.startswith(sent):
            return self._emit(full[len(sent) :])
        # The window's text disagreed with the full decode (a tokenizer whose decode of a prefix
        # is not a prefix of the full decode). We cannot take text back; send the rest we can.
        return self._emit(full[len(os.path.commonprefix([full, sent])) :])

    def _emit(self, piece: str) -> str:
        if piece:
            self.pieces.append(piece)
        return piece


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (used when a tokenizer config asks for it)."""
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
