"""The CLI's one error handler and the shape of every command's help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from trtbuild import cli as cli_module
from trtbuild.cli import cli, main
from trtbuild.errors import RuntimeFailure, SpecError


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_examples(runner: CliRunner, command: str) -> None:
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    group = cli.commands[command]
    if hasattr(group, "commands"):  # a group: its subcommands carry the examples
        for sub in group.commands:  # type: ignore[attr-defined]
            assert "Examples:" in runner.invoke(cli, [command, sub, "--help"]).output
    else:
        assert "Examples:" in result.output


def test_user_error_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(spec, out):  # type: ignore[no-untyped-def]
        raise SpecError("bad thing; pass --good to fix it")

    monkeypatch.setattr("trtbuild.client.run_infer", boom)
    code, out, err = run_main(["infer", "hello"], capsys)
    assert code == 2 and out == "" and err == "Error: bad thing; pass --good to fix it\n"


def test_runtime_failure_exits_1_with_details(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(spec, out):  # type: ignore[no-untyped-def]
        raise RuntimeFailure("it broke", details="last log line")

    monkeypatch.setattr("trtbuild.client.run_infer", boom)
    code, _, err = run_main(["infer", "hello"], capsys)
    assert code == 1 and err == "Error: it broke\nlast log line\n"


def test_invalid_option_values_are_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["infer", "hello", "--max-tokens", "0"], capsys)
    assert code == 2 and err.startswith("Error: invalid max_tokens: ")
    code, _, err = run_main(["infer", "hello", "--protocol", "smtp"], capsys)
    assert code == 2 and "Invalid value for '--protocol'" in err


def test_no_server_is_a_clear_runtime_failure(capsys: pytest.CaptureFixture[str]) -> None:
    from trtbuild.server import free_port

    code, _, err = run_main(
        ["infer", "hello", "--url", f"127.0.0.1:{free_port()}", "--timeout", "3"], capsys
    )
    assert code == 1 and "Is the server running (trtbuild serve)" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.startswith("trtbuild, version ")
    assert cli_module.__version__ in out
