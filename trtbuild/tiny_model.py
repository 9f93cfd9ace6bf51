"""The embedded default model: a tiny Llama checkpoint trtbuild makes from a seed, offline.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on a synthetic corpus
(English, code, CJK and emoji, so multi-byte characters span several tokens), saved in Hugging
Face layout with ``tokenizer_class: PreTrainedTokenizerFast`` so transformers 4.x loads it too.
The model has random weights: its text is gibberish, but every serving path is exercised for real.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from trtbuild._atomic import atomic_dir
from trtbuild.specs import RepoSpec, ServingLimits

BOS, EOS, PAD, UNK, EOT = "<s>", "</s>", "<pad>", "<unk>", "<|eot|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, EOT]  # ids 0..4
EOS_ID, EOT_ID, PAD_ID, BOS_ID = 2, 4, 3, 1

_WORDS = (  # noqa: SIM905 - a sentence reads better than a 100-item list
    "the of and to in is that for it as with was on be by this are from or at an not which "
    "have has but all they can more one will their were when there been would what so if out "
    "about into who time some could them other than then these two may first any new like our "
    "model server token engine batch cache memory tensor stream request response latency "
    "throughput replica pipeline parallel kernel layer attention decode prefill quantize "
    "def return import class self None True False yield async await lambda print range len "
    "GPU CPU NVLink FP8 INT8 BF16 Triton TensorRT Llama Hugging Face"
).split()
_CJK = "推理服务器模型张量流水线并行量化缓存批处理延迟吞吐你好世界日本語の文章韓國어문장"
_EMOJI = "🚀🔥✨🤖🧠💾⚡🎉🙂👍🌍📦"
_PUNCT = [".", ",", "!", "?", ":", ";", " -", "()", "[]", "{}", "=", "+", "'", '"']


def corpus(seed: int, sentences: int = 6000) -> list[str]:
    """A deterministic multilingual training corpus (same seed, same text, any machine)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        parts = []
        for _ in range(rng.randint(4, 16)):
            r = rng.random()
            if r < 0.78:
                parts.append(rng.choice(_WORDS))
            elif r < 0.88:
                parts.append("".join(rng.choice(_CJK) for _ in range(rng.randint(1, 4))))
            elif r < 0.94:
                parts.append(rng.choice(_EMOJI))
            else:
                parts.append(str(rng.randint(0, 4096)))
        line = " ".join(parts) + rng.choice(_PUNCT)
        lines.append(line[0].upper() + line[1:])
    return lines


def create_tiny_model(
    out_dir: Path,
    *,
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    force: bool = False,
) -> Path:
    """Write a tiny Llama checkpoint + tokenizer to ``out_dir`` (atomically) and return it."""
    with atomic_dir(out_dir, force=force) as tmp:
        _write_tokenizer(tmp, seed=seed, vocab_size=vocab_size)
        _write_model(
            tmp,
            seed=seed,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
        )
    return out_dir


def _write_tokenizer(out: Path, *, seed: int, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    tok.save(str(out / "tokenizer.json"))
    # Written by hand, not by transformers 5 (which writes a class transformers 4.x cannot load).
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": [EOT],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "add_bos_token": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": [EOT],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_model(
    out: Path, *, seed: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int
) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=int(hidden_size * 2.75),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # N(0, 0.08) keeps greedy output from collapsing to one token
                param.copy_(torch.randn(param.shape, generator=gen) * 0.08)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=[EOS_ID, EOT_ID], pad_token_id=PAD_ID, do_sample=False
    ).save_pretrained(out)


def repo_spec(
    engine_dir: Path,
    *,
    extra_end_ids: tuple[int, ...] = (),
    limits: ServingLimits | None = None,
    num_threads: int = 1,
) -> RepoSpec:
    """The portable-runtime repository spec for an engine made from the tiny model.

    One torch thread: the model's matrices are tiny, and on a small machine the other cores are
    better spent on tritonserver and the Python-backend processes (measured with `make bench`).
    """
    return RepoSpec(
        runtime="torch",
        engine_dir=engine_dir,
        tokenizer_dir=engine_dir,
        end_id=EOS_ID,
        pad_id=PAD_ID,
        stop_token_ids=[EOT_ID, *extra_end_ids],
        num_threads=num_threads,
        limits=limits or ServingLimits(),
    )
