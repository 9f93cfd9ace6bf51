"""The portable runtime split across processes (``trtbuild engine --runtime torch --tp N``).

- Refusals: a TP that does not divide the heads, KV heads and MLP, and PP, exit 2 naming the fix.
- The sharded engine: one checkpoint per rank, the manifest's parallel record.
- In process: two ranks (gloo, two local processes) generate exactly what one process generates,
  with log probs equal to fp32 tolerance, through admission queues and slot moves.
- Served for real under ``mpirun`` (Open MPI from Debian's openmpi-bin): a TP=2 repository's
  greedy output equals TP=1's token for token; a killed rank (its stub or its tritonserver) ends
  the group with an error naming it, exit 1; Ctrl-C stops every rank; nothing is left behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.test_supervision import STUB, Serve, _running
from tests.triton_helpers import core_inputs, stream_core
from trtbuild.builder.engine import build_engine
from trtbuild.builder.manifest import read_manifest
from trtbuild.errors import SpecError
from trtbuild.specs import EngineSpec

GONE_WITHIN_S = 15.0
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [1, 2], [100, 200, 300, 400], [42] * 7, [17] * 20]
# CI must run these (its set-up installs Open MPI): only a developer's machine may skip them
needs_mpi = pytest.mark.skipif(
    shutil.which("mpirun") is None and not os.environ.get("CI"),
    reason="needs Open MPI (make setup installs openmpi-bin)",
)


@pytest.fixture(scope="session")
def tp2_engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tp2") / "engine"
    spec = EngineSpec(checkpoint=tiny_model, out=out, runtime="torch", tp=2, dtype="float32")
    return build_engine(spec).out_dir


# -- refusals and the sharded engine ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"tp": 3},
            "--tp 3 does not divide the model's num_attention_heads 4, num_key_value_heads 2, "
            "intermediate_size 352; use --tp 1 or 2",
        ),
        ({"tp": 4}, "--tp 4 does not divide the model's num_key_value_heads 2; use --tp 1 or 2"),
        (
            {"pp": 2},
            "the portable runtime (--runtime torch) has no pipeline parallelism; drop --pp",
        ),
    ],
)
def test_a_split_that_does_not_fit_is_refused(
    tiny_model: Path, tmp_path: Path, extra: dict[str, int], message: str
) -> None:
    with pytest.raises(SpecError) as info:
        build_engine(
            EngineSpec(checkpoint=tiny_model, out=tmp_path / "e", runtime="torch", **extra)
        )
    assert info.value.message.startswith(message), info.value.message
    assert not (tmp_path / "e").exists()


def test_the_cli_refuses_with_exit_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trtbuild.cli import main

    args = ["engine", str(tiny_model), "--out", str(tmp_path / "e"), "--runtime", "torch"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--tp", "3"])
    assert exit_info.value.code == 2
    assert "Error: --tp 3 does not divide" in capsys.readouterr().err


def test_each_rank_gets_its_own_checkpoint(tp2_engine: Path, tiny_model: Path) -> None:
    from safetensors import safe_open

    manifest = read_manifest(tp2_engine)
    assert (manifest.parallel.tp, manifest.parallel.pp, manifest.parallel.world_size) == (2, 1, 2)
    full = json.loads((tiny_model / "config.json").read_text())
    for rank in range(2):
        config = json.loads((tp2_engine / f"rank{rank}" / "config.json").read_text())
        assert config["num_attention_heads"] == full["num_attention_heads"] // 2
        assert config["num_key_value_heads"] == full["num_key_value_heads"] // 2
        assert config["intermediate_size"] == full["intermediate_size"] // 2
        assert config["head_dim"] == full["hidden_size"] // full["num_attention_heads"]
        assert config["trtbuild_tensor_parallel"] == {"rank": rank, "world_size": 2}
        assert f"rank{rank}/model.safetensors" in manifest.files
        with safe_open(str(tp2_engine / f"rank{rank}" / "model.safetensors"), "pt") as f:
            q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
            o = f.get_tensor("model.layers.0.self_attn.o_proj.weight")
        assert tuple(q.shape) == (full["hidden_size"] // 2, full["hidden_size"])
        assert tuple(o.shape) == (full["hidden_size"], full["hidden_size"] // 2)
    assert not list(tp2_engine.glob("*.safetensors"))  # each rank loads only its part


# -- two ranks in process (gloo) against one -------------------------------------------------------
def _rank(rank: int, engine_dir: str, port: int, out: Any) -> None:
    import torch

    torch.set_num_threads(1)
    from trtbuild.runtime.engine import Engine, EngineLimits
    from trtbuild.runtime.parallel import RankGroup

    group = RankGroup(rank, 2, "cpu", port=port, timeout_s=30)
    engine = Engine(
        str(Path(engine_dir) / f"rank{rank}"), device="cpu", dtype="float32", group=group,
        limits=EngineLimits(max_batch_size=4, max_seq_len=128, max_num_tokens=64),
    )  # fmt: skip
    if rank:
        engine.follow()
        out.put(("follower", None))
        return
    out.put(("leader", _generate(engine.start())))
    engine.stop()


def _generate(engine: Any) -> list[tuple[list[int], list[float]]]:
    """Every prompt at once (6 requests, 4 slots: some wait, finished rows' slots are refilled)."""
    results: dict[int, Any] = {}

    def one(i: int) -> None:
        done = threading.Event()
        tokens: list[int] = []
        lps: list[float] = []

        def on_event(ev: Any) -> None:
            tokens.extend(ev.tokens)
            lps.extend(ev.log_probs)
            if ev.finished:
                done.set()

        from trtbuild.runtime.engine import Request

        engine.submit(Request(PROMPTS[i], 10 + 2 * i, on_event, end_id=-1, return_log_probs=True))
        done.wait(60)
        results[i] = (tokens, lps)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(PROMPTS))]


def test_two_ranks_generate_what_one_process_generates(tp2_engine: Path, tiny_model: Path) -> None:
    import torch

    from trtbuild.runtime.engine import Engine, EngineLimits
    from trtbuild.server import free_port

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=_rank, args=(r, str(tp2_engine), port, out)) for r in range(2)]
    for p in ranks:
        p.start()
    try:
        got = dict(out.get(timeout=120) for _ in range(2))
    finally:
        for p in ranks:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in ranks] == [0, 0]
    one = Engine(
        str(tiny_model), device="cpu", dtype="float32",
        limits=EngineLimits(max_batch_size=4, max_seq_len=128, max_num_tokens=64),
    ).start()  # fmt: skip
    try:
        single = _generate(one)
    finally:
        one.stop()
    for (tp_tokens, tp_lps), (tokens, lps) in zip(got["leader"], single, strict=True):
        assert tp_tokens == tokens
        torch.testing.assert_close(torch.tensor(tp_lps), torch.tensor(lps), atol=1e-4, rtol=1e-4)


# -- served under mpirun --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tp2_repo(tp2_engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtbuild.render import render_repository
    from trtbuild.repo import build_repo_spec
    from trtbuild.specs import ServingLimits

    limits = ServingLimits(max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=128)
    spec = build_repo_spec(tp2_engine, runtime="torch").spec
    spec = spec.model_copy(update={"limits": limits})
    return render_repository(spec, tmp_path_factory.mktemp("tp2repo") / "repository")


class Group(Serve):
    """`trtbuild serve REPO` of a rank group, as a real subprocess, on free ports."""

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.grpc = self.popen.stdout.readline().split()[-1]  # type: ignore[union-attr]

    def servers(self) -> list[psutil.Process]:
        return [p for p in self.tree if p.name() == "tritonserver"]

    def rank_stub(self, rank: int) -> psutil.Process:
        return next(
            p
            for p in self.tree
            if p.name() == STUB and "/tensorrt_llm/1/" in p.cmdline()[1]
            and p.cmdline()[2].startswith(f"prefix{rank}_")
        )  # fmt: skip


def _left_behind(group: Group, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _running(group.tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [" ".join(p.cmdline()[:2]) for p in _running(group.tree)]


@pytest.fixture
def group(tp2_repo: Path) -> Iterator[Group]:
    served = Group(tp2_repo)
    yield served
    served.close()


@needs_mpi
def test_a_tp2_group_serves_greedy_output_identical_to_tp1(
    group: Group, reference: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(group.servers()) == 2
    assert sum(p.name() == STUB for p in group.tree) == 5  # rank 0: 4 models; rank 1: the core
    results: dict[int, Any] = {}
    started = time.perf_counter()

    def one(i: int) -> None:
        results[i] = stream_core(group.grpc, core_inputs(PROMPTS[i], 16, end_id=-1))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seconds = time.perf_counter() - started
    for i, prompt in enumerate(PROMPTS):
        assert results[i].error is None and results[i].finished, results[i].error
        assert results[i].tokens == reference.greedy(prompt, 16), f"prompt {i}"
    with capsys.disabled():
        print(f"\n[TP=2 under mpirun: {len(PROMPTS)} x 16 greedy tokens in {seconds:.2f} s]")
    # Ctrl-C: every rank, every stub, gone; serve exits 0
    os.kill(group.popen.pid, signal.SIGINT)
    code, err = group.finish(timeout=GONE_WITHIN_S)
    assert code == 0, err
    assert _left_behind(group) == []


@needs_mpi
@pytest.mark.parametrize("victim", ["stub", "tritonserver"])
def test_a_killed_rank_ends_the_group_naming_it(group: Group, victim: str) -> None:
    rank1 = next(p for p in group.servers() if "--load-model=tensorrt_llm" in p.cmdline())
    target = group.rank_stub(1) if victim == "stub" else rank1
    os.kill(target.pid, signal.SIGKILL)
    killed = time.monotonic()
    code, err = group.finish(timeout=GONE_WITHIN_S)
    assert time.monotonic() - killed < GONE_WITHIN_S
    assert code == 1, err
    error = next(line for line in err.splitlines() if line.startswith("Error:"))
    if victim == "stub":
        assert error.startswith(
            f"Error: model tensorrt_llm (rank 1) died: its Python-backend stub (pid {target.pid}"
        ), error
    else:  # mpirun ends the job, or the watcher sees rank 1's stub follow its tritonserver
        assert error.startswith(
            ("Error: mpirun (world size 2: a rank died) ended unexpectedly (",
             "Error: model tensorrt_llm (rank 1) died: ")
        ), error  # fmt: skip
    print(error)
    assert _left_behind(group) == []


def test_the_slurm_form_runs_one_task_per_rank(tp2_repo: Path, tmp_path: Path) -> None:
    from trtbuild.cli import main

    out = tmp_path / "serve.sbatch"
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "slurm", str(tp2_repo), "--out", str(out), "--nodes", "1", "--force"])
    assert exit_info.value.code == 0
    text = out.read_text()
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(out)], check=True)
    assert "export TRTBUILD_TP_PORT=29517" in text
    assert 'export TRTBUILD_TP_ADDR="${HOSTS[$((replica * 1))]}"' in text
    assert "--ntasks=2 " in text and "--mpi=pmix" in text
    assert text.count("--allow-http=false") == 1  # the worker's tritonserver only


@needs_mpi
def test_a_sigkilled_serve_takes_every_rank_with_it(group: Group) -> None:
    group.popen.kill()  # only the watchdog acts: mpirun's session (each rank its own group) goes
    group.popen.wait()
    assert _left_behind(group, timeout=25) == []
