"""What a tokenizer directory says about generation: the end token, the pad token, and every other
token that ends a turn (Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``), added as stop tokens.
The files are read by ``trtbuild.files.hf``; this module interprets them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError
from trtbuild.files.hf import TOKENIZER_JSON, read_tokenizer_files
from trtbuild.specs import Runtime

# chat end tokens that end a turn beside the tokenizer's eos (added as stop tokens when present)
CHAT_END_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class TokenIds:
    end_id: int
    pad_id: int
    stop_token_ids: tuple[int, ...] = ()
    tokens: dict[int, str] = field(default_factory=dict)  # id -> text, for notes

    def describe(self) -> str:
        def name(i: int) -> str:
            return f"{i} ({self.tokens[i]})" if i in self.tokens else str(i)

        extra = ", ".join(name(i) for i in self.stop_token_ids) or "none"
        return f"end_id {name(self.end_id)}, pad_id {name(self.pad_id)}, more end tokens: {extra}"


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def tokenizer_ids(tokenizer_dir: Path, *, model_dir: Path | None = None) -> TokenIds:
    """End, pad and extra end token ids of a Hugging Face tokenizer directory.

    ``end_id`` is the tokenizer's eos (what TensorRT-LLM's preprocessing defaults to), else the
    first ``eos_token_id`` of ``generation_config.json``; every other id there, and chat end tokens
    the vocabulary has, become ``stop_token_ids``. ``pad_id`` falls back to ``end_id``.
    """
    tokenizer_dir = Path(tokenizer_dir)
    files = read_tokenizer_files(tokenizer_dir, model_dir=model_dir)
    vocab: dict[str, int] = {}
    tok = files.tokenizer
    model_vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update({k: v for k, v in model_vocab.items() if isinstance(v, int)})
    for added in tok.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("id"), int):
            vocab[str(added.get("content"))] = added["id"]
    config = files.config
    for key, added in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(added, dict) and str(key).isdigit():
            vocab.setdefault(str(added.get("content")), int(key))
    special = files.special_tokens
    gen = files.generation

    def token_id(value: Any) -> int | None:
        text = value.get("content") if isinstance(value, dict) else value
        return vocab.get(text) if isinstance(text, str) else None

    eos_ids = _ids(gen.get("eos_token_id"))
    eos_token = _first(token_id(config.get("eos_token")), token_id(special.get("eos_token")))
    end_id = eos_token if eos_token is not None else (eos_ids[0] if eos_ids else None)
    if end_id is None:
        raise SpecError(
            f"no end token in {tokenizer_dir} (generation_config.json eos_token_id, or "
            "tokenizer_config.json eos_token): generation would never stop; pass --tokenizer with "
            "the model's Hugging Face tokenizer"
        )
    chat_ends = [vocab[t] for t in CHAT_END_TOKENS if t in vocab]
    stops = tuple(dict.fromkeys(i for i in [*eos_ids, *chat_ends] if i != end_id))
    pad_ids = _ids(gen.get("pad_token_id"))
    pad_token = _first(token_id(config.get("pad_token")), token_id(special.get("pad_token")))
    pad_id = pad_ids[0] if pad_ids else (pad_token if pad_token is not None else end_id)
    names = {v: k for k, v in vocab.items() if v in {end_id, pad_id, *stops}}
    return TokenIds(end_id=end_id, pad_id=pad_id, stop_token_ids=stops, tokens=names)


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def find_tokenizer(
    engine_dir: Path, runtime: Runtime, explicit: Path | None, manifest_dir: str | None
) -> Path:
    """``--tokenizer``, else the manifest's tokenizer dir, else ``tokenizer/`` or the engine dir."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif manifest_dir is not None:
        candidates = [engine_dir / manifest_dir]
    else:
        candidates = [engine_dir / "tokenizer", engine_dir]
    for candidate in candidates:
        if (candidate / TOKENIZER_JSON).is_file():
            return candidate
    where = candidates[0]
    raise SpecError(
        f"no {TOKENIZER_JSON} in {where}: trtbuild's pre/postprocessing need the model's fast "
        "tokenizer; pass --tokenizer with the Hugging Face checkpoint directory (or save one "
        "with AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
    )


__all__ = ["CHAT_END_TOKENS", "TokenIds", "find_tokenizer", "tokenizer_ids"]
