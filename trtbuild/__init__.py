"""trtbuild: from a Hugging Face LLM to a production Triton Inference Server deployment.

The Python API the README shows, importable from here (each name is loaded on first use, so
``import trtbuild`` stays quick for the CLI)::

    from trtbuild import (create_tiny_model, prepare_portable_engine, render_repository,
                          TritonServer, Client, RepoSpec, ServeSpec, InferSpec)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "Client": "trtbuild.client",
    "Generation": "trtbuild.client",
    "TritonServer": "trtbuild.server",
    "render_repository": "trtbuild.render",
    "make_repository": "trtbuild.repo",
    "build_repo_spec": "trtbuild.repo",
    "run_check": "trtbuild.check",
    "prepare_portable_engine": "trtbuild.builder.engine",
    "build_engine": "trtbuild.builder.engine",
    "plan_from_spec": "trtbuild.plan",
    "make_plan": "trtbuild.plan",
    "create_tiny_model": "trtbuild.tiny_model",
    "CheckOptions": "trtbuild.specs",
    "DownloadSpec": "trtbuild.specs",
    "EngineSpec": "trtbuild.specs",
    "InferSpec": "trtbuild.specs",
    "PlanRequest": "trtbuild.specs",
    "PlanSpec": "trtbuild.specs",
    "RepoOptions": "trtbuild.specs",
    "RepoSpec": "trtbuild.specs",
    "Limits": "trtbuild.specs",
    "ServingLimits": "trtbuild.specs",
    "ServeSpec": "trtbuild.specs",
    "TrtbuildError": "trtbuild.errors",
    "UserError": "trtbuild.errors",
    "RuntimeFailure": "trtbuild.errors",
}

if TYPE_CHECKING:
    from trtbuild.builder.engine import build_engine, prepare_portable_engine
    from trtbuild.check import run_check
    from trtbuild.client import Client, Generation
    from trtbuild.errors import RuntimeFailure, TrtbuildError, UserError
    from trtbuild.plan import make_plan, plan_from_spec
    from trtbuild.render import render_repository
    from trtbuild.repo import build_repo_spec, make_repository
    from trtbuild.server import TritonServer
    from trtbuild.specs import (
        CheckOptions,
        DownloadSpec,
        EngineSpec,
        InferSpec,
        Limits,
        PlanRequest,
        PlanSpec,
        RepoOptions,
        RepoSpec,
        ServeSpec,
        ServingLimits,
    )
    from trtbuild.tiny_model import create_tiny_model


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'trtbuild' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CheckOptions",
    "Client",
    "DownloadSpec",
    "EngineSpec",
    "Generation",
    "InferSpec",
    "PlanRequest",
    "PlanSpec",
    "RepoOptions",
    "RepoSpec",
    "RuntimeFailure",
    "Limits",
    "ServingLimits",
    "ServeSpec",
    "TritonServer",
    "TrtbuildError",
    "UserError",
    "build_engine",
    "build_repo_spec",
    "create_tiny_model",
    "make_plan",
    "make_repository",
    "plan_from_spec",
    "prepare_portable_engine",
    "render_repository",
    "run_check",
    "__version__",
]
