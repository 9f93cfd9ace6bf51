"""The ``docker run`` line that builds an engine inside the NGC TensorRT-LLM container.

Printed when TensorRT-LLM is not installed here. Pure string work: it mounts the checkpoint (the
whole Hub-cache repo folder when the checkpoint is a snapshot, so its blob symlinks resolve), the
output's parent, trtbuild's home (so the build lands in this machine's engine cache) and
trtbuild's source tree, installs trtbuild without dependencies (the container has them) and runs
``trtbuild engine`` with every resolved setting spelled out.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from trtbuild import __version__
from trtbuild.builder._trtllm import CONTAINER
from trtbuild.builder.checkpoint import mount_root
from trtbuild.builder.settings import BuildSettings
from trtbuild.builder.validate import Target
from trtbuild.gpus import find_gpu
from trtbuild.paths import home
from trtbuild.specs import EngineSpec

SRC_IN = "/opt/trtbuild-src"
HOME_IN = "/trtbuild-home"
PLAN_IN = "/trtbuild-plan.json"


def source_root() -> Path | None:
    """trtbuild's source tree when it is installed from one (editable install), else None."""
    import trtbuild

    root = Path(trtbuild.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "trtbuild"' in pyproject.read_text():
        return root
    return None


def engine_argv(
    settings: BuildSettings,
    checkpoint: str,
    out: str,
    *,
    gpu: str | None,
    plan: str | None,
    force: bool,
) -> list[str]:
    """``trtbuild engine`` with every resolved setting explicit (the plan only adds the rest)."""
    lim = settings.limits
    argv = ["trtbuild", "engine", checkpoint, "--out", out, "--runtime", settings.runtime]
    if gpu:
        argv += ["--gpu", gpu]
    argv += ["--tp", str(settings.tp), "--pp", str(settings.pp), "--dtype", settings.dtype]
    if settings.quant:
        argv += ["--quant", settings.quant]
    if settings.kv_cache_dtype:
        argv += ["--kv-cache-dtype", settings.kv_cache_dtype]
    argv += [
        "--max-batch-size", str(lim.max_batch_size),
        "--max-input-len", str(lim.max_input_len),
        "--max-seq-len", str(lim.max_seq_len),
        "--max-num-tokens", str(lim.max_num_tokens),
    ]  # fmt: skip
    if settings.calib_size is not None:
        argv += ["--calib-size", str(settings.calib_size)]
    if plan:
        argv += ["--plan", plan]
    if force:
        argv.append("--force")
    return argv


def docker_command(
    spec: EngineSpec, settings: BuildSettings, target: Target | None, *, src: Path | None = None
) -> list[str]:
    """The full ``docker run ...`` argv (``src``: trtbuild's source tree, default ``source_root()``)."""
    ckpt = Path(os.path.abspath(spec.checkpoint))
    root = mount_root(ckpt)
    ckpt_in = f"/models/{root.name}" + (f"/{ckpt.relative_to(root)}" if ckpt != root else "")
    out = Path(os.path.abspath(spec.out))
    src = src if src is not None else source_root()
    mounts = [
        "-v", f"{root}:/models/{root.name}:ro",
        "-v", f"{out.parent}:/engines",
        "-v", f"{home()}:{HOME_IN}", "-e", f"TRTBUILD_HOME={HOME_IN}",
    ]  # fmt: skip
    if spec.plan:
        mounts += ["-v", f"{Path(os.path.abspath(spec.plan))}:{PLAN_IN}:ro"]
    if src is not None:
        mounts += ["-v", f"{src}:{SRC_IN}:ro"]
        install = (
            f"mkdir -p /tmp/trtbuild && tar -C {SRC_IN} --exclude=./.venv --exclude=./.git -cf - . "
            "| tar -C /tmp/trtbuild -xf - && pip install -q --no-deps /tmp/trtbuild"
        )
    else:
        install = f"pip install -q --no-deps trtbuild=={__version__}"
    inner = engine_argv(
        settings,
        ckpt_in,
        f"/engines/{out.name}",
        gpu=target.name if target and find_gpu(target.name) else None,
        plan=PLAN_IN if spec.plan else None,
        force=spec.force,
    )
    return [
        "docker", "run", "--gpus", "all", "--rm", "--ipc=host", *mounts, CONTAINER,
        "bash", "-c", f"{install} && {shlex.join(inner)}",
    ]  # fmt: skip
