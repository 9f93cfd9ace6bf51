"""``trtbuild engine`` and ``trtbuild cache`` through the real CLI handler: exit codes, messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.builder.builder_fakes import trtbuild_main
from trtbuild.builder import _trtllm
from trtbuild.builder.engine import BuildEnv, detect_env

SMALL = [
    "--max-batch-size",
    "4",
    "--max-input-len",
    "128",
    "--max-seq-len",
    "256",
    "--max-num-tokens",
    "256",
]


@pytest.fixture
def use_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[BuildEnv], None]:
    def use(env: BuildEnv) -> None:
        monkeypatch.setattr("trtbuild.builder.engine.detect_env", lambda runtime: env)

    return use


def engine(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(trtbuild_main, ["engine", *args])


def test_without_tensorrt_llm_exit_2_with_the_container_line(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    no_gpu_env: BuildEnv,
) -> None:
    use_env(no_gpu_env)
    result = engine(
        runner, str(tiny_model), "--out", str(tmp_path / "e"), "--gpu", "h100-sxm", *SMALL
    )
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "Error: TensorRT-LLM not found. Engines are built inside "
        "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 (TensorRT-LLM 1.2.1) on a machine "
        "with the target GPU; run this there:"
    )
    assert lines[1].startswith("docker run --gpus all --rm --ipc=host -v ")
    assert lines[1].endswith(
        "trtbuild engine /models/model --out /engines/e --runtime tensorrtllm --gpu h100-sxm --tp 1 "
        "--pp 1 --dtype bfloat16 --max-batch-size 4 --max-input-len 128 --max-seq-len 256 "
        "--max-num-tokens 256'"
    )
    assert result.stdout == "" and not (tmp_path / "e").exists()


def test_dry_run_prints_every_command(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    no_gpu_env: BuildEnv,
) -> None:
    use_env(no_gpu_env)
    out = tmp_path / "e"
    result = engine(
        runner,
        str(tiny_model),
        "--out",
        str(out),
        "--gpu",
        "l40s",
        "--tp",
        "2",
        "--pp",
        "2",
        "--kv-cache-dtype",
        "int8",
        "--dry-run",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"# plan for {out}: tensorrtllm, l40s (SM 89), TP 2 x PP 2, bfloat16, int8 KV cache"
    )
    assert lines[1].startswith("python3 -m trtbuild.builder._trtllm quantize --model_dir ")
    assert lines[2].startswith("trtllm-build --checkpoint_dir ") and "--workers 4" in lines[2]
    assert len(lines) == 4
    assert result.stderr == (
        "note: INT8 KV cache: paged context FMHA is off, so KV-cache reuse and chunked context are "
        "unavailable with this engine\n"
    )
    assert not out.exists()


def test_build_with_fakes_then_cache_hit(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    fake_env: Callable[..., BuildEnv],
) -> None:
    use_env(fake_env("h100-sxm", 2))
    first = engine(runner, str(tiny_model), "--out", str(tmp_path / "a"), "--tp", "2", *SMALL)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(
        f"Engine ready: {tmp_path / 'a'} (tensorrtllm, h100-sxm (SM 90), TensorRT-LLM 1.2.1, "
        "TP 2 x PP 1, bfloat16; built in "
    )
    assert "+ " in first.stderr and "fake_trtllm-build" in first.stderr  # each child announced
    second = engine(runner, str(tiny_model), "--out", str(tmp_path / "b"), "--tp", "2", *SMALL)
    assert (
        second.exit_code == 0 and "; cache hit in " in second.stdout and "+ " not in second.stderr
    )

    listed = runner.invoke(trtbuild_main, ["cache", "list"])
    assert listed.exit_code == 0 and listed.stdout.count("\n") == 1
    assert " tensorrtllm " in listed.stdout and str(tiny_model.resolve()) in listed.stdout
    assert listed.stderr.startswith("1 cached engine in ")
    pruned = runner.invoke(trtbuild_main, ["cache", "prune", "--all"])
    assert pruned.exit_code == 0 and pruned.stderr == "removed 1 cached engine\n"
    assert runner.invoke(trtbuild_main, ["cache", "list"]).stdout == ""


def test_failing_rank_exit_1_with_phase_rank_and_tail(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    fake_env: Callable[..., BuildEnv],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_env(fake_env("h100-sxm", 4))
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "build:3")
    result = engine(runner, str(tiny_model), "--out", str(tmp_path / "e"), "--tp", "4", *SMALL)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("+ ")]
    assert errors[0].startswith("Error: build (rank 3 of 4) failed with exit code 1: ")
    assert "[fake TensorRT-LLM] [E] rank 3: builder ran out of GPU memory (FAKE failure)" in errors
    assert errors[-1].startswith("full log: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tp", "3"],
            "Error: --tp 3 does not divide the model's 4 attention heads; use one of 1, 2, 4",
        ),
        (
            ["--gpu", "a100-80gb", "--quant", "fp8"],
            "Error: FP8 weights need SM >= 89 (Ada, Hopper or "
            "newer); a100-80gb (SM 80) lacks FP8, use --quant int8-sq or int4-awq",
        ),
        (
            ["--gpu", "v100"],
            "Error: unknown GPU 'v100'; known GPUs: a100-40gb, a100-80gb, "
            "a100-80gb-pcie, h100-sxm, h100-pcie, h100-nvl, h200, gh200, l40s, l4, a10, b200.",
        ),
        (
            ["--max-batch-size", "0"],
            "Error: invalid max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            ["--runtime", "torch", "--pp", "2"],
            "Error: the portable runtime (--runtime torch) has no pipeline parallelism; drop "
            "--pp (--tp splits the model across processes) or use --runtime tensorrtllm",
        ),
    ],
)
def test_bad_input_exit_2_one_line(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    fake_env: Callable[..., BuildEnv],
    args: list[str],
    message: str,
) -> None:
    use_env(fake_env("h100-sxm", 4))
    result = engine(runner, str(tiny_model), "--out", str(tmp_path / "e"), *args)
    assert (result.exit_code, result.stderr) == (2, message + "\n")
    assert not (tmp_path / "e").exists()


def test_plan_file_errors_and_existing_output(
    runner: CliRunner,
    tiny_model: Path,
    tmp_path: Path,
    use_env: Callable[[BuildEnv], None],
    fake_env: Callable[..., BuildEnv],
) -> None:
    use_env(fake_env())
    plan = tmp_path / "plan.json"
    plan.write_text('{"tp": "two"}')
    result = engine(runner, str(tiny_model), "--out", str(tmp_path / "e"), "--plan", str(plan))
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: {plan} is not a trtbuild plan (model: Field required); regenerate it with "
        "'trtbuild plan ... --json'\n",
    )
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("x")
    result = engine(runner, str(tiny_model), "--out", str(tmp_path / "e"))
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: {tmp_path / 'e'} exists and is not empty; pass --force to replace it.\n",
    )


def test_usage_errors(runner: CliRunner, tiny_model: Path) -> None:
    result = engine(runner, str(tiny_model))
    assert result.exit_code == 2 and "Missing option '--out'" in result.stderr
    result = runner.invoke(trtbuild_main, ["cache", "prune"])
    assert (result.exit_code, result.stderr) == (
        2,
        "Error: say what to prune: --older-than DAYS or --all\n",
    )


def test_help_has_examples(runner: CliRunner) -> None:
    for args in (
        ["engine", "--help"],
        ["cache", "--help"],
        ["cache", "list", "--help"],
        ["cache", "prune", "--help"],
    ):
        result = runner.invoke(trtbuild_main, args)
        assert result.exit_code == 0 and "Examples:" in result.stdout


@pytest.mark.skipif(
    _trtllm.installed_version("tensorrt_llm") is not None, reason="TensorRT-LLM installed"
)
def test_this_machine_has_no_toolchain() -> None:
    assert detect_env("tensorrtllm").toolchain is None
