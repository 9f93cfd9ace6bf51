"""Model facts from Hugging Face configs, checked against arithmetic done by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtbuild._known_models import KNOWN_CONFIGS
from trtbuild.errors import SpecError
from trtbuild.files.checkpoint_manifest import read_model_facts as load_model_facts
from trtbuild.model_facts import facts_from_config, parse_quantization

CONFIGS = Path(__file__).parent / "data" / "configs"


def config(name: str) -> dict[str, object]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# Hand arithmetic (per layer: q = h*h, k = v = h*kv*hd, o = h*h, MLP 3*h*i, two norms 2*h):
# Llama-3.1-8B  h=4096 L=32 heads=32 kv=8 hd=128 i=14336 V=128256, untied
#   attention 16,777,216 + 2 x 4,194,304 + 16,777,216 = 41,943,040; MLP 3 x 4096 x 14336 = 176,160,768
#   layer 41,943,040 + 176,160,768 + 8,192 = 218,112,000; x32 = 6,979,584,000
#   embedding = lm_head = 128256 x 4096 = 525,336,576; total 6,979,584,000 + 2 x 525,336,576 + 4,096
#   = 8,030,261,248. KV/token bf16 = 2 x 32 x 8 x 128 x 2 = 131,072 B = 128 KiB.
# Llama-3.1-70B h=8192 L=80 heads=64 kv=8 hd=128 i=28672
#   attention 67,108,864 x 2 + 2 x 8,388,608 = 150,994,944; MLP 3 x 8192 x 28672 = 704,643,072
#   layer 855,654,400 (with norms 16,384); x80 = 68,452,352,000; embeddings 2 x 1,050,673,152
#   total 70,553,706,496. KV/token = 2 x 80 x 8 x 128 x 2 = 327,680 B = 320 KiB.
# Mixtral-8x7B h=4096 L=32 kv=8 i=14336, 8 experts, top 2, V=32000
#   experts 8 x 176,160,768 = 1,409,286,144 + router 4096 x 8 = 32,768; attention 41,943,040
#   layer 1,451,270,144 (norms 8,192); x32 = 46,440,644,608; + 2 x 131,072,000 + 4,096
#   = 46,702,792,704 total; active: 6 idle experts x 176,160,768 x 32 = 33,822,867,456 fewer
#   = 12,879,925,248. KV/token = 2 x 32 x 8 x 128 x 2 = 131,072 B.
# Qwen2.5-7B h=3584 L=28 heads=28 kv=4 hd=128 i=18944 V=152064, q/k/v biases
#   attention 12,845,056 x 2 + 2 x 1,835,008 + biases 3,584 + 2 x 512 = 29,364,736
#   MLP 3 x 3584 x 18944 = 203,685,888; layer 233,057,792 (norms 7,168); x28 = 6,525,618,176
#   + 2 x 544,997,376 + 3,584 = 7,615,616,512. KV/token = 2 x 28 x 4 x 128 x 2 = 57,344 B = 56 KiB.
CASES = [
    # name, layers, hidden, heads, kv, head_dim, vocab, max_pos, params, active, kv bytes bf16
    ("llama-3.1-8b", 32, 4096, 32, 8, 128, 128256, 131072, 8_030_261_248, 8_030_261_248, 131_072),
    (
        "llama-3.1-70b",
        80,
        8192,
        64,
        8,
        128,
        128256,
        131072,
        70_553_706_496,
        70_553_706_496,
        327_680,
    ),
    ("mixtral-8x7b", 32, 4096, 32, 8, 128, 32000, 32768, 46_702_792_704, 12_879_925_248, 131_072),
    ("qwen2.5-7b", 28, 3584, 28, 4, 128, 152064, 131072, 7_615_616_512, 7_615_616_512, 57_344),
]


@pytest.mark.parametrize(
    ("name", "layers", "hidden", "heads", "kv", "head_dim", "vocab", "max_pos", "params", "active",
     "kv_bytes"), CASES)  # fmt: skip
def test_facts_and_params(
    name: str, layers: int, hidden: int, heads: int, kv: int, head_dim: int, vocab: int,
    max_pos: int, params: int, active: int, kv_bytes: int,
) -> None:  # fmt: skip
    facts = facts_from_config(config(name), name=name)
    assert (facts.num_layers, facts.hidden_size, facts.num_attention_heads, facts.num_kv_heads) == (
        layers, hidden, heads, kv)  # fmt: skip
    assert (facts.head_dim, facts.vocab_size, facts.max_position_embeddings) == (
        head_dim,
        vocab,
        max_pos,
    )
    assert facts.dtype == "bfloat16"
    assert facts.params.total == params
    assert facts.params.active == active
    assert facts.kv_bytes_per_token(2) == kv_bytes
    assert facts.kv_bytes_per_token(1) == kv_bytes // 2  # FP8 / INT8 KV cache


def test_named_values() -> None:
    """The two numbers the issue quotes, and the MoE and bias details."""
    assert facts_from_config(config("llama-3.1-70b"), name="x").kv_bytes_per_token(2) == 320 * 1024
    assert facts_from_config(config("llama-3.1-8b"), name="x").kv_bytes_per_token(2) == 128 * 1024
    mixtral = facts_from_config(config("mixtral-8x7b"), name="x")
    assert (mixtral.is_moe, mixtral.num_experts, mixtral.experts_per_token) == (True, 8, 2)
    assert mixtral.moe_intermediate_size == 14336
    assert facts_from_config(config("qwen2.5-7b"), name="x").attention_bias
    assert not facts_from_config(config("llama-3.1-8b"), name="x").attention_bias


@pytest.mark.parametrize(
    ("repo_id", "file"),
    [
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
        ("Qwen/Qwen2.5-7B", "qwen2.5-7b"),
    ],
)
def test_builtin_configs_match_the_hub_configs(repo_id: str, file: str) -> None:
    builtin = load_model_facts(repo_id)
    assert builtin.name == repo_id
    assert builtin.model_copy(update={"name": "x"}) == facts_from_config(config(file), name="x")


def test_builtin_lookup_is_case_insensitive() -> None:
    assert load_model_facts("META-LLAMA/llama-3.1-8b").name == "meta-llama/Llama-3.1-8B"
    assert len(KNOWN_CONFIGS) >= 4


def test_load_from_directory_and_file(tmp_path: Path) -> None:
    model = tmp_path / "Llama-3.1-8B"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config("llama-3.1-8b")))
    assert load_model_facts(model).name == "Llama-3.1-8B"
    assert load_model_facts(model / "config.json").params.total == 8_030_261_248


def test_load_tiny_model(tiny_model: Path) -> None:
    facts = load_model_facts(tiny_model)
    assert (facts.architecture, facts.num_layers, facts.hidden_size) == ("LlamaForCausalLM", 4, 128)
    assert (facts.num_attention_heads, facts.num_kv_heads, facts.head_dim) == (4, 2, 32)
    assert facts.dtype == "float32"


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a checkpoint directory or config.json") as exc:
        load_model_facts("acme/unknown-model")
    assert "trtbuild download acme/unknown-model" in exc.value.message
    with pytest.raises(SpecError, match="has no config.json"):
        load_model_facts(tmp_path)


def test_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no layer count"):
        facts_from_config({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 4,
                           "max_position_embeddings": 8}, name="x")  # fmt: skip
    with pytest.raises(SpecError, match="multi-head latent attention"):
        facts_from_config({**config("llama-3.1-8b"), "kv_lora_rank": 512}, name="deepseek")
    with pytest.raises(SpecError, match="must be an integer"):
        facts_from_config({**config("llama-3.1-8b"), "num_hidden_layers": "32"}, name="x")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_model_facts(bad)


@pytest.mark.parametrize(
    ("config_quant", "hf_quant", "method", "bits", "kv", "trtbuild"),
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, None, "awq", 4, None, "int4-awq"),
        ({"quant_method": "fp8"}, None, "fp8", 8, None, "fp8"),
        ({"quant_method": "gptq", "bits": 4}, None, "gptq", 4, None, None),
        (
            None,
            {
                "producer": {"name": "modelopt"},
                "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
            },
            "modelopt",
            8,
            "fp8",
            "fp8",
        ),  # fmt: skip
        (
            None,
            {"quantization": {"quant_algo": "W4A16_AWQ", "group_size": 128}},
            "modelopt",
            4,
            None,
            "int4-awq",
        ),  # fmt: skip
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
                "kv_cache_scheme": {"num_bits": 8, "type": "float"},
            },
            None,
            "fp8",
            8,
            "fp8",
            "fp8",
        ),  # fmt: skip
    ],
)
def test_quantization(
    config_quant: dict[str, object] | None, hf_quant: dict[str, object] | None, method: str,
    bits: int, kv: str | None, trtbuild: str | None,
) -> None:  # fmt: skip
    cfg = {**config("llama-3.1-8b"), "quantization_config": config_quant}
    info = parse_quantization(cfg, hf_quant)
    assert info is not None
    assert (info.method, info.weight_bits, info.kv_cache, info.trtbuild_quant) == (
        method,
        bits,
        kv,
        trtbuild,
    )


def test_unquantized_has_no_quantization() -> None:
    assert facts_from_config(config("llama-3.1-8b"), name="x").quantization is None
