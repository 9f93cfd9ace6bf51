"""A Triton model repository's ``config.pbtxt`` files, parsed as Triton's ``ModelConfig`` proto
(tritonclient's ``model_config_pb2``): the one parser, for rendering, serving and ``check``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtbuild.errors import SpecError

CONFIG = "config.pbtxt"


class ConfigParseError(SpecError):
    """A config.pbtxt that is not a valid ``ModelConfig``; ``detail`` is protobuf's message."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(
            f"{where}: not a valid Triton model config: {detail}; fix it, or render the "
            "repository again with 'trtbuild repo'"
        )
        self.where = where
        self.detail = detail


def parse_config(text: str, where: str) -> Any:
    """``text`` as a ``ModelConfig``; raises ``ConfigParseError`` naming the file and the line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigParseError(where, str(exc)) from exc
    return config


def config_files(repo: Path) -> list[Path]:
    return sorted(Path(repo).glob(f"*/{CONFIG}"))


def read_config(path: Path) -> Any:
    """One ``config.pbtxt``, parsed; not UTF-8 or not valid raises ``ConfigParseError``."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise ConfigParseError(str(path), f"it is not UTF-8 text ({exc})") from exc
    return parse_config(text, str(path))


def load_configs(repo: Path) -> dict[str, Any]:
    """Every ``<model>/config.pbtxt`` of a repository, parsed (the first bad one raises)."""
    return {p.parent.name: read_config(p) for p in config_files(repo)}


@dataclass
class ModelFile:
    """One model directory as ``trtbuild check`` sees it: the text, and the config when it parses."""

    name: str
    dir: Path
    rel: str  # "<model>/config.pbtxt", relative to the repository
    text: str
    config: Any  # ModelConfig, or None when it does not parse
    error: str | None = None  # protobuf's message when it does not

    @property
    def params(self) -> dict[str, str]:
        if self.config is None:
            return {}
        return {k: v.string_value for k, v in self.config.parameters.items()}

    @property
    def decoupled(self) -> bool:
        return bool(self.config is not None and self.config.model_transaction_policy.decoupled)


def set_parameters(path: Path, parameters: dict[str, str]) -> None:
    """Set (or add) string ``parameters`` of one ``config.pbtxt`` and write it back, in
    protobuf's text format (the rendered comments are lost; benchmarks use it to vary a
    model's knobs without re-rendering)."""
    from google.protobuf import text_format

    config = read_config(path)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    Path(path).write_text(text_format.MessageToString(config))


def read_model_files(repo: Path) -> list[ModelFile]:
    """Every model of a repository, parsed where it parses (nothing raises for a bad config)."""
    models = []
    for path in config_files(repo):
        rel = path.relative_to(repo).as_posix()
        text = path.read_text(errors="replace")
        try:
            models.append(
                ModelFile(path.parent.name, path.parent, rel, text, parse_config(text, rel))
            )
        except ConfigParseError as exc:
            models.append(ModelFile(path.parent.name, path.parent, rel, text, None, exc.detail))
    return models


__all__ = [
    "CONFIG",
    "ConfigParseError",
    "ModelFile",
    "config_files",
    "load_configs",
    "parse_config",
    "read_config",
    "read_model_files",
    "set_parameters",
]
