"""One vocabulary: every command takes the canonical names and their spellings, prints canonical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtbuild.cli import cli
from trtbuild.specs import EngineSpec, PlanRequest, RepoSpec
from trtbuild.vocab import ALIASES, DTYPES, KV_DTYPES, QUANTS, accepted, canonical

CONFIG = Path(__file__).parent / "data" / "configs" / "llama-3.1-8b.json"


@pytest.mark.parametrize(("kind", "alias", "name"), [
    ("dtype", "bf16", "bfloat16"), ("dtype", "BF16", "bfloat16"), ("dtype", "fp16", "float16"),
    ("dtype", "bfloat16", "bfloat16"), ("quant", "int8", "int8-sq"), ("quant", "awq", "int4-awq"),
    ("quant", "int8-sq", "int8-sq"), ("kv_cache_dtype", "fp16", "auto"),
    ("kv_cache_dtype", "int8", "int8"),
])  # fmt: skip
def test_canonical_names(kind: str, alias: str, name: str) -> None:
    assert canonical(kind, alias) == name


def test_every_alias_points_at_a_canonical_name() -> None:
    names = {"dtype": DTYPES, "quant": QUANTS, "kv_cache_dtype": KV_DTYPES}
    for kind, table in ALIASES.items():
        assert set(table.values()) <= set(names[kind]), kind
        assert set(accepted(kind, names[kind])) == set(names[kind]) | set(table)


@pytest.mark.parametrize("spelling", ["bfloat16", "bf16"])
def test_plan_accepts_both_spellings_and_prints_the_canonical_one(spelling: str) -> None:
    result = CliRunner().invoke(
        cli, ["plan", str(CONFIG), "--gpu", "h100-sxm", "--dtype", spelling, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dtype"] == "bfloat16"


@pytest.mark.parametrize("spelling", ["bfloat16", "bf16"])
def test_engine_accepts_both_spellings(spelling: str, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    args = ["engine", str(tiny_model), "--out", str(out), "--runtime", "torch"]
    result = CliRunner().invoke(cli, [*args, "--dtype", spelling, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "bfloat16" in result.output and "bf16" not in result.output.replace("bfloat16", "")


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("plan", "--quant", "int8"), ("plan", "--quant", "int8-sq"), ("plan", "--kv-cache-dtype", "fp16"),
    ("engine", "--quant", "int8"), ("engine", "--quant", "int8-sq"),
])  # fmt: skip
def test_quant_spellings_are_accepted_by_every_command(command: str, flag: str, value: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert flag in result.output
    from click import Choice

    option = next(p for p in cli.commands[command].params if p.opts[0] == flag)
    assert isinstance(option.type, Choice)
    converted = option.type.convert(value, option, None)
    assert converted == canonical(flag.lstrip("-").replace("-", "_"), value)


def test_specs_store_the_canonical_name(tmp_path: Path) -> None:
    assert PlanRequest(dtype="bf16", quant="int8", kv_cache_dtype="fp16").model_dump() == {
        **PlanRequest().model_dump(),
        "dtype": "bfloat16",
        "quant": "int8-sq",
        "kv_cache_dtype": "auto",
    }
    spec = EngineSpec(checkpoint=tmp_path, out=tmp_path / "e", dtype="fp16", quant="awq")
    assert (spec.dtype, spec.quant) == ("float16", "int4-awq")
    repo = RepoSpec(engine_dir=tmp_path, tokenizer_dir=tmp_path, end_id=1, pad_id=1, dtype="bf16")
    assert repo.dtype == "bfloat16"
    assert RepoSpec.model_validate_json(repo.model_dump_json()).dtype == "bfloat16"


def test_an_unknown_name_names_the_choices() -> None:
    result = CliRunner().invoke(cli, ["plan", str(CONFIG), "--gpu", "h100-sxm", "--dtype", "fp9"])
    assert result.exit_code == 2
    assert "bfloat16" in result.output
