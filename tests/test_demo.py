"""`trtbuild demo`: the whole path on the embedded model, through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtbuild.cli import cli

pytestmark = pytest.mark.server


def test_demo_serves_and_keeps_its_workdir(runner: CliRunner, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = runner.invoke(cli, ["demo", "--workdir", str(work)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = re.findall(r"\| (\d+) tokens, TTFT ([\d.]+) ms, (\d+) tokens/s", result.stdout)
    texts = re.findall(r"\| -> '(.*)'", result.stdout)
    assert len(stats) == 3 and len(texts) == 3  # two gRPC and one HTTP streamed generation
    for (tokens, ttft, rate), text in zip(stats, texts, strict=True):
        assert 1 <= int(tokens) <= 48 and float(ttft) > 0 and int(rate) > 0 and text
    assert result.stdout.count("GRPC |") == 2 and result.stdout.count("HTTP |") == 1
    for sub in (
        "model/config.json",
        "engine/trtbuild-engine.json",
        "repository/ensemble/config.pbtxt",
    ):
        assert (work / sub).is_file(), sub
    assert f"trtbuild serve {work}/repository" in result.stderr
    # running it again must not silently replace what is there
    again = runner.invoke(cli, ["demo", "--workdir", str(work)])
    assert again.exit_code != 0
