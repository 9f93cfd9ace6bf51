"""The planner: hand-computed arithmetic, the layout rules, "does not fit", and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from trtbuild.errors import SpecError
from trtbuild.files.checkpoint_manifest import read_model_facts as load_model_facts
from trtbuild.files.plan_file import read_plan
from trtbuild.gpus import get_gpu
from trtbuild.model_facts import facts_from_config
from trtbuild.plan import Plan, PlanDoesNotFit, _valid_tp, make_plan
from trtbuild.specs import PlanRequest

CONFIGS = Path(__file__).parent / "data" / "configs"
GiB = 2**30


def facts(name: str):  # type: ignore[no-untyped-def]
    return facts_from_config(json.loads((CONFIGS / f"{name}.json").read_text()), name=name)


def plan(model: str, gpu: str, **request: object) -> Plan:
    return make_plan(facts(model), get_gpu(gpu), PlanRequest.model_validate(request))


def run_main(runner: CliRunner, *args: str) -> Result:
    """Invoke ``trtbuild.cli.main`` (the real error handler and exit codes), not just the group."""
    from trtbuild.cli import main

    @click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def entry(argv: tuple[str, ...]) -> None:
        main(list(argv))

    return runner.invoke(entry, list(args))


# -- arithmetic, by hand ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "quant", "weight_bytes", "kv_bytes"),
    [
        # bf16: every parameter is 2 bytes -> 2 x params (test_model_facts.py has the params)
        ("llama-3.1-8b", "none", 2 * 8_030_261_248, 128 * 1024),
        ("llama-3.1-70b", "none", 2 * 70_553_706_496, 320 * 1024),
        ("mixtral-8x7b", "none", 2 * 46_702_792_704, 128 * 1024),  # all experts, not 2 of 8
        ("qwen2.5-7b", "none", 2 * 7_615_616_512, 56 * 1024),
        # fp8: 80 x 855,638,016 = 68,451,041,280 linear params at 1 B, plus embedding, lm_head and
        # norms (2,102,665,216 params) at 2 B = 68,451,041,280 + 4,205,330,432
        ("llama-3.1-70b", "fp8", 72_656_371_712, 320 * 1024),
        # int4-awq: 0.5 B + one fp16 scale per 128 weights = 0.515625 B per linear param
        # 8B: 32 x 218,103,808 = 6,979,321,856 x 0.515625 = 3,598,712,832 + 1,050,939,392 x 2
        ("llama-3.1-8b", "int4-awq", 3_598_712_832 + 2_101_878_784, 128 * 1024),
    ],
)
def test_weight_and_kv_bytes(model: str, quant: str, weight_bytes: int, kv_bytes: int) -> None:
    p = plan(model, "h200", gpus_per_node=8, quant=quant, concurrency=1)
    assert p.weight_bytes == weight_bytes
    assert p.kv_bytes_per_token == kv_bytes


def test_llama_8b_on_one_h100_by_hand() -> None:
    """Every number of the 8B BF16 plan on one H100 SXM (79.6 GiB = 85,469,849,190 B)."""
    p = plan("llama-3.1-8b", "h100-sxm")
    assert (p.tp, p.pp, p.replicas) == (1, 1, 1)
    assert p.weight_bytes_per_rank == 16_060_522_496
    # reserve: 2 GiB + activations 8192 x 2 B x (4 x 4096 + 3 x 14336) = 973,078,528
    #   + logits: max_batch cap 296 (989 TFLOPS / 3.35 TB/s = 295.2 FLOP/B, rounded up to 8)
    #     x 128,256 x 4 B = 151,855,104  -> 3,272,417,280
    assert p.reserve_bytes_per_rank == 2 * GiB + 973_078_528 + 151_855_104
    # KV: (85,469,849,190 - 16,060,522,496 - 3,272,417,280) x 0.9 = 59,523,218,472
    assert p.kv_cache_bytes_per_rank == 59_523_218_472
    # / (128 KiB x 32-token blocks = 4,194,304 B) = 14,191 blocks = 454,112 tokens
    assert p.kv_cache_tokens == 454_112
    # 2,560-token sequences take 80 blocks: 14,191 // 80 = 177
    assert p.max_concurrent_sequences == 177
    assert (p.max_batch_size, p.max_num_tokens, p.max_seq_len) == (177, 8192, 2560)
    # batch 1 decode: (16,060,522,496 - 1,050,673,152 embedding rows not read
    #   + 2,304 avg context x 131,072 KV) / 3.35e12 B/s = 4.5707 ms -> 218.8 tokens/s
    assert p.decode_roofline_tokens_per_s_per_sequence == pytest.approx(218.8, abs=0.1)
    # prefill: 2 x (8,030,261,248 - 2 x 525,336,576) + 2 x 32 x 4096 x 2048 = 14,496,067,584 FLOP
    #   per token; 989e12 / that = 68,225.5 tokens/s
    assert p.prefill_tokens_per_s == pytest.approx(68_225.5, abs=0.1)


def test_the_portable_runtime_takes_one_slot_per_sequence_by_hand() -> None:
    """--runtime torch: the KV cache is max_batch_size slots of max_seq_len (64 x 256 tokens x
    128 KiB = 2 GiB, not 0.9 of the free memory), so the memory served is weights + that + the
    reserve. docs/perf/h200.md compares this with what the served runtime took on an H200."""
    p = plan("llama-3.1-8b", "h200", max_input_len=128, max_output_len=128, runtime="torch")
    assert (p.runtime, p.tp, p.pp, p.max_batch_size) == ("torch", 1, 1, 64)
    assert p.kv_cache_bytes_per_rank == 64 * 256 * 128 * 1024 == 2 * GiB
    assert (p.kv_cache_tokens, p.max_concurrent_sequences) == (64 * 256, 64)
    # reserve: 1.5 GiB (one GPU, no TensorRT or NCCL workspaces) + activations 8192 x 2 B x
    #   (4 x 4096 + 3 x 14336) = 973,078,528 + logits 64 rows (not the ridge batch: each row is a
    #   preallocated slot) x 128,256 x 4 B = 32,833,536
    assert p.reserve_bytes_per_rank == 3 * GiB // 2 + 973_078_528 + 32_833_536
    assert p.gpu_memory_used_bytes_per_rank == (16_060_522_496 + 2 * GiB + p.reserve_bytes_per_rank)
    trt = plan("llama-3.1-8b", "h200", max_input_len=128, max_output_len=128)
    assert (
        trt.runtime == "tensorrtllm"
        and trt.kv_cache_bytes_per_rank > 50 * p.kv_cache_bytes_per_rank
    )
    # more GPUs: replicas (no PP), each with the slots of its share of the traffic
    four = plan("llama-3.1-8b", "h200", gpus_per_node=2, nodes=2, runtime="torch")
    assert (four.pp, four.replicas, four.max_batch_size) == (1, 4, 16)
    # split over GPUs, its ranks keep NCCL workspaces too: the 2 GiB reserve
    split = plan("llama-3.1-70b", "h100-sxm", gpus_per_node=8, runtime="torch")
    activations = 8192 * 2 * (4 * 8192 + 3 * 28672 // split.tp)
    logits = split.reserve_bytes_per_rank - 2 * GiB - activations  # fp32, at most 64 rows
    assert split.tp > 1 and 0 < logits <= 64 * -(-128_256 // split.tp) * 4


def test_the_portable_runtime_plan_refuses_quantization() -> None:
    with pytest.raises(
        SpecError, match=r"^the portable runtime \(--runtime torch\) does not quantize"
    ):
        plan("llama-3.1-8b", "h200", quant="fp8", runtime="torch")


def test_llama_70b_tp2_per_rank_by_hand() -> None:
    p = plan("llama-3.1-70b", "h100-sxm", gpus_per_node=8)
    # 68,451,041,280 x 2 B / 2 + embedding 2,101,346,304 (replicated) + lm_head 2,101,346,304 / 2
    #   + norms (80 x 16,384 + 8,192) x 2 B = 71,605,698,560
    assert p.weight_bytes_per_rank == 71_605_698_560
    assert p.kv_bytes_per_token_per_rank == 160 * 1024  # 4 of the 8 KV heads per GPU


def test_cost_per_million_output_tokens() -> None:
    p = plan("llama-3.1-8b", "h100-sxm", gpus_per_node=8, price_per_gpu_hour=3.0)
    per_replica_per_s = 3.0 * p.tp * p.pp / 3600
    roofline = per_replica_per_s / p.decode_roofline_tokens_per_s * 1e6
    assert p.cost_per_million_output_tokens_roofline == pytest.approx(roofline, abs=1e-3)
    assert p.cost_per_million_output_tokens == pytest.approx(roofline / 0.6, abs=1e-3)
    assert plan("llama-3.1-8b", "h100-sxm").cost_per_million_output_tokens is None


# -- layout rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "gpu", "request_", "layout", "reason"),
    [
        # fits one GPU -> replicas only
        ("llama-3.1-8b", "h100-sxm", {"gpus_per_node": 8}, (1, 1, 8), "scale with replicas only"),
        # 141.1 GB of weights > one H100 -> the smallest TP within the node
        (
            "llama-3.1-70b",
            "h100-sxm",
            {"gpus_per_node": 8},
            (2, 1, 4),
            "not TP=1: llama-3.1-70b BF16 weights are 131.4 GiB",
        ),
        # MoE: 93.4 GB of experts decide memory even though 2 of 8 experts (25.8 GB) run per token
        (
            "mixtral-8x7b",
            "h100-sxm",
            {"gpus_per_node": 2},
            (2, 1, 1),
            "mixtral-8x7b BF16 weights are 87.0 GiB",
        ),
        # 70B FP8 fits one H100's memory but not the KV for 16 sequences each: TP2 instead
        (
            "llama-3.1-70b",
            "h100-sxm",
            {"gpus_per_node": 2, "quant": "fp8", "concurrency": 32},
            (2, 1, 1),
            "holds 9 sequences of 2,560 tokens, fewer than the 16 per replica",
        ),
        # ... unless the target is small enough for its KV
        (
            "llama-3.1-70b",
            "h100-sxm",
            {"gpus_per_node": 2, "quant": "fp8", "concurrency": 8},
            (1, 1, 2),
            "scale with replicas only",
        ),
        # H200's 141 GB holds 70B FP8 and the KV for 64 sequences on one GPU
        ("llama-3.1-70b", "h200", {"quant": "fp8"}, (1, 1, 1), "scale with replicas only"),
        # one GPU per node is not enough: pipeline across nodes
        ("llama-3.1-70b", "h100-sxm", {"nodes": 2, "concurrency": 16}, (1, 2, 1), "PP=2"),
        ("qwen2.5-7b", "l4", {"gpus_per_node": 8}, (1, 1, 8), "scale with replicas only"),
    ],
)
def test_layouts(
    model: str, gpu: str, request_: dict[str, object], layout: tuple[int, int, int], reason: str
) -> None:
    p = plan(model, gpu, **request_)
    assert (p.tp, p.pp, p.replicas) == layout
    assert any(reason in r for r in p.reasons), p.reasons


def test_request_accepts_short_names() -> None:
    r = PlanRequest.model_validate({"dtype": "BF16", "quant": "int8", "kv_cache_dtype": "fp16"})
    assert (r.dtype, r.quant, r.kv_cache_dtype) == ("bfloat16", "int8-sq", "auto")
    r = PlanRequest.model_validate({"quant": "awq", "kv_cache_dtype": "int8"})
    assert (r.quant, r.kv_cache_dtype) == ("int4-awq", "int8")


def test_tp_must_divide_heads() -> None:
    qwen = facts("qwen2.5-7b")  # 28 heads, 4 KV heads
    assert [tp for tp in range(1, 9) if _valid_tp(qwen, tp)] == [1, 2, 4]
    llama = facts("llama-3.1-70b")  # 64 heads, 8 KV heads
    assert [tp for tp in range(1, 17) if _valid_tp(llama, tp)] == [1, 2, 4, 8, 16]


def test_reasons_explain_every_limit() -> None:
    p = plan("llama-3.1-70b", "h100-sxm", gpus_per_node=8)
    text = "\n".join(p.reasons)
    for key in ("TP=2:", "replicas=4:", "max_batch_size=", "max_num_tokens=8192", "max_seq_len=2560",
                "kv_cache_free_gpu_mem_fraction=0.9"):  # fmt: skip
        assert key in text
    assert "NVLink 900 GB/s" in text


def test_pcie_only_gpus_say_so() -> None:
    p = plan("llama-3.1-70b", "l40s", gpus_per_node=8, quant="fp8", concurrency=8)
    assert p.tp > 1
    assert any("PCIe only (no NVLink)" in r for r in p.reasons)


def test_kv_cache_dtype_fp8_doubles_the_tokens() -> None:
    bf16 = plan("llama-3.1-8b", "h100-sxm")
    fp8 = plan("llama-3.1-8b", "h100-sxm", kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert fp8.kv_cache_tokens // 32 == 2 * (bf16.kv_cache_tokens // 32) or (
        abs(fp8.kv_cache_tokens - 2 * bf16.kv_cache_tokens) <= 32)  # fmt: skip
    assert (fp8.kv_cache_quant_algo, bf16.kv_cache_quant_algo) == ("FP8", None)


def test_plan_is_deterministic_and_frozen() -> None:
    a, b = plan("mixtral-8x7b", "h200"), plan("mixtral-8x7b", "h200")
    assert a == b
    with pytest.raises(ValueError):
        a.tp = 4  # type: ignore[misc]


# -- refusals ---------------------------------------------------------------------------------------
def test_does_not_fit_says_what_would() -> None:
    with pytest.raises(PlanDoesNotFit) as exc:
        plan("llama-3.1-70b", "h100-sxm")
    err = exc.value
    assert err.exit_code == 2
    assert err.message.startswith(
        "llama-3.1-70b BF16 does not fit on 1 x h100-sxm: weights are 131.4 GiB"
    )
    assert err.details is not None and err.details.startswith("To make it fit:")
    assert "--gpus 4 (TP=4, PP=1, 1 replica(s))" in err.details
    assert "--quant fp8 --concurrency 9" in err.details


def test_kv_headroom_refusal_names_the_concurrency_that_fits() -> None:
    with pytest.raises(PlanDoesNotFit) as exc:
        plan("llama-3.1-70b", "h100-sxm", quant="fp8")
    assert (
        "fits on 1 x h100-sxm but leaves KV-cache room for at most 9 concurrent"
        in exc.value.message
    )
    assert exc.value.details and "--concurrency 9" in exc.value.details
    assert "--gpus 2 (TP=2" in exc.value.details and "--gpu h200" in exc.value.details


def test_fp8_needs_sm89() -> None:
    with pytest.raises(SpecError, match="FP8 weights need SM >= 89.*a100-80gb is SM 80"):
        plan("llama-3.1-8b", "a100-80gb", quant="fp8")
    with pytest.raises(SpecError, match="an FP8 KV cache need"):
        plan("llama-3.1-8b", "a100-80gb", kv_cache_dtype="fp8")
    assert plan("llama-3.1-8b", "a100-80gb", kv_cache_dtype="int8").kv_cache_quant_algo == "INT8"


def test_sequence_longer_than_the_model_context(runner: CliRunner, tiny_model: Path) -> None:
    with pytest.raises(SpecError, match="exceeds mixtral-8x7b's context of 32,768 tokens"):
        plan("mixtral-8x7b", "h200", max_input_len=32000, max_output_len=1000)
    result = run_main(runner, "plan", str(tiny_model), "--gpu", "l4")  # a 2,048-token model
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: max_input_len + max_output_len = 2,560 exceeds model's context of 2,048 tokens; "
        "lower --max-input-len or --max-output-len.\n"
    )


def test_prequantized_checkpoint() -> None:
    cfg = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
    awq = facts_from_config(
        {**cfg, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}},
        name="awq",
    )
    p = make_plan(awq, get_gpu("l4"), PlanRequest(concurrency=16))
    assert (p.quant, p.quant_algo) == ("int4-awq", "W4A16_AWQ")
    with pytest.raises(SpecError, match="already quantized"):
        make_plan(awq, get_gpu("l4"), PlanRequest(quant="fp8"))
    gptq = facts_from_config(
        {**cfg, "quantization_config": {"quant_method": "gptq", "bits": 4}}, name="g"
    )
    with pytest.raises(SpecError, match="pre-quantized with gptq"):
        make_plan(gptq, get_gpu("l4"), PlanRequest())


# -- plan.json: what engine and repo read -----------------------------------------------------------
REQUIRED_KEYS = {"params", "weight_bytes", "kv_bytes_per_token", "tp", "pp", "replicas",
                 "kv_cache_tokens", "max_concurrent_sequences", "decode_roofline_tokens_per_s",
                 "max_batch_size", "max_num_tokens", "reasons"}  # fmt: skip


def test_cli_json(runner: CliRunner, tmp_path: Path) -> None:
    result = run_main(runner, "plan", "meta-llama/Llama-3.1-70B", "--gpu", "h100-sxm", "--gpus", "8",
                      "--price-per-gpu-hour", "2.5", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= REQUIRED_KEYS
    assert (data["tp"], data["replicas"], data["kv_bytes_per_token"]) == (2, 4, 327_680)
    assert data["gpu"] == "h100-sxm" and data["dtype"] == "bfloat16" and data["quant"] == "none"
    path = tmp_path / "plan.json"
    path.write_text(result.stdout)
    loaded = read_plan(path)
    assert loaded.serving_limits().max_batch_size == data["max_batch_size"]
    assert loaded.serving_limits().max_seq_len == 2560


def test_plan_json_flows_into_the_engine_builder(tmp_path: Path) -> None:
    """The engine builder's plan reader takes the planner's JSON unchanged."""
    p = plan("llama-3.1-70b", "h100-sxm", gpus_per_node=2, quant="fp8", kv_cache_dtype="fp8",
             concurrency=32)  # fmt: skip
    path = tmp_path / "plan.json"
    path.write_text(p.model_dump_json())
    loaded = read_plan(path)
    assert (loaded.tp, loaded.pp, loaded.quant, loaded.kv_cache_dtype) == (p.tp, p.pp, "fp8", "fp8")
    assert loaded.dtype == "bfloat16" and loaded.gpu == "h100-sxm"
    assert (loaded.max_batch_size, loaded.max_num_tokens) == (p.max_batch_size, p.max_num_tokens)


def test_read_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        read_plan(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tp": 2}')
    with pytest.raises(SpecError, match="is not a trtbuild plan"):
        read_plan(bad)


# -- the command ------------------------------------------------------------------------------------
def test_cli_table(runner: CliRunner) -> None:
    result = run_main(runner, "plan", "meta-llama/Llama-3.1-8B", "--gpu", "H100", "--gpus", "8")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "meta-llama/Llama-3.1-8B on 8 x h100-sxm: BF16 weights, BF16 KV cache" in out
    assert "TP=1 x PP=1, 8 replica(s)" in out
    assert "128 KiB per token" in out and "Arithmetic" in out and "Why" in out
    assert result.stderr == ""


def test_cli_does_not_fit_exits_2(runner: CliRunner) -> None:
    result = run_main(runner, "plan", "meta-llama/Llama-3.1-70B", "--gpu", "l4")
    assert result.exit_code == 2
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    assert first.startswith("Error: meta-llama/Llama-3.1-70B BF16 does not fit on 1 x l4")
    assert rest[0] == "To make it fit:"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "v100"], "Error: unknown GPU 'v100'; known GPUs: a100-40gb"),
        (["--gpu", "a100-40gb", "--quant", "fp8"], "Error: FP8 weights need SM >= 89"),
        (
            ["--gpu", "h100", "--concurrency", "0"],
            "Error: invalid concurrency: Input should be greater",
        ),
        (["--gpu", "h100", "--quant", "int3"], "Error: Invalid value for '--quant'"),
    ],
)
def test_cli_bad_input_exits_2(runner: CliRunner, args: list[str], message: str) -> None:
    result = run_main(runner, "plan", "meta-llama/Llama-3.1-8B", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_cli_unknown_model_exits_2(runner: CliRunner) -> None:
    result = run_main(runner, "plan", "acme/nothing", "--gpu", "h100")
    assert result.exit_code == 2
    assert "Error: acme/nothing is not a checkpoint directory or config.json" in result.stderr


def test_cli_plans_a_checkpoint_dir(runner: CliRunner, tiny_model: Path) -> None:
    result = run_main(runner, "plan", str(tiny_model), "--gpu", "l4", "--max-input-len", "1024",
                      "--max-output-len", "512", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "model" and data["tp"] == 1 and data["dtype"] == "bfloat16"
    assert any("the checkpoint is float32" in r for r in data["reasons"])
    assert load_model_facts(tiny_model).kv_bytes_per_token(2) == data["kv_bytes_per_token"]


# -- docs/plan.md and README.md show real output -----------------------------------------------------------------
def _doc_examples() -> list[tuple[str, str]]:
    import re

    root = Path(__file__).parent.parent
    text = (root / "docs" / "plan.md").read_text() + (root / "README.md").read_text()
    blocks = re.findall(r"```console\n\$ (trtbuild plan [^\n]*)\n(.*?)```", text, flags=re.S)
    return [(cmd, out) for cmd, out in blocks if not any(c in cmd.split(";")[0] for c in "|>")]


@pytest.mark.parametrize(("command", "output"), _doc_examples())
def test_docs_examples_are_real(runner: CliRunner, command: str, output: str) -> None:
    import shlex

    command, _, tail = command.partition(";")
    result = run_main(runner, *shlex.split(command)[1:])
    shown = result.stdout if result.exit_code == 0 else result.stderr
    if "exit code" in tail:
        shown += f"exit code {result.exit_code}\n"
    assert [line.rstrip() for line in shown.splitlines()] == output.splitlines()
