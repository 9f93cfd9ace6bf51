"""Tensor parallelism for trtbuild's portable runtime: one process per rank, torch.distributed.

This module is copied verbatim next to the Triton ``model.py`` (as ``_trtbuild_parallel.py``), so
it imports only the standard library at import time (torch when a group is joined) and nothing of
trtbuild.

- The split (Megatron-style, for the Llama family): q/k/v and gate/up are split by output rows
  (column-parallel), o_proj and down_proj by input columns (row-parallel); each rank's o_proj and
  down_proj outputs are partial sums, added up by an ``all_reduce`` (a forward hook). Norms,
  embeddings and lm_head are replicated. ``trtbuild engine --runtime torch --tp N`` writes each
  rank's part as a checkpoint of its own (``rank{N}/``: the config with the rank's head and MLP
  counts, and its weights), which transformers loads as an ordinary, narrower model.
- The rank group: rank, world size and local rank from Open MPI's environment (``mpirun``), or
  from Slurm's (``srun --mpi=pmix``); the rendezvous address and port from ``TRTBUILD_TP_ADDR`` /
  ``TRTBUILD_TP_PORT`` (``trtbuild serve`` sets them); gloo on CPU, NCCL on CUDA. Every collective
  has a timeout (``TRTBUILD_TP_TIMEOUT_S``, default 60 s), so a dead or stuck peer ends the group
  instead of hanging it.
- Rank 0 schedules. Before each operation on the model or the KV cache it broadcasts a step
  descriptor (an op code and a few integers: the prefill's slots and prompts, the decode step's
  tokens and positions, a slot move); the other ranks run the same operation on their shard and
  their own KV cache. Tokens are sampled on rank 0 only and reach the others as the next step's
  inputs, so random sampling cannot diverge. While idle, rank 0 sends a heartbeat every
  ``HEARTBEAT_S`` so that the followers' wait never reaches the timeout.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

RANK_DIR = "rank{}"  # each rank's checkpoint inside a sharded portable engine directory
ADDR_ENV = "TRTBUILD_TP_ADDR"
PORT_ENV = "TRTBUILD_TP_PORT"
TIMEOUT_ENV = "TRTBUILD_TP_TIMEOUT_S"
TIMEOUT_S = 60.0
HEARTBEAT_S = 2.0
SLURM_PORT = 29517  # the rendezvous port of the sbatch script (Slurm allocates whole nodes)
CONFIG_KEY = "trtbuild_tensor_parallel"  # {"rank": r, "world_size": n} in a rank's config.json

# the models the slot KV cache serves exactly (the engine's fast path), and so the ones a rank
# group splits: full causal attention, Llama-family parameter names
SLOT_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# parameter names (Hugging Face Llama-family checkpoints) by how they are split
COLUMN_PARALLEL = (
    ".self_attn.q_proj.",
    ".self_attn.k_proj.",
    ".self_attn.v_proj.",
    ".mlp.gate_proj.",
    ".mlp.up_proj.",
)
ROW_PARALLEL = (".self_attn.o_proj.", ".mlp.down_proj.")
SPLIT_CONFIG = ("num_attention_heads", "num_key_value_heads", "intermediate_size")

# step descriptor op codes
OP_NOOP, OP_PREFILL, OP_DECODE, OP_MOVE, OP_STOP = range(5)


def shard_tensor(name: str, tensor: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s part of parameter ``name`` (a torch tensor)."""
    if any(part in name for part in COLUMN_PARALLEL):
        return tensor.chunk(world, dim=0)[rank].contiguous()
    if any(part in name for part in ROW_PARALLEL):
        if tensor.dim() == 2:
            return tensor.chunk(world, dim=1)[rank].contiguous()
        return tensor if rank == 0 else tensor.new_zeros(tensor.shape)  # a bias is added once
    return tensor


def shard_config(config: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Rank ``rank``'s ``config.json``: its share of the heads and of the MLP, head size kept."""
    out = dict(config)
    heads = int(config["num_attention_heads"])
    out["head_dim"] = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    out.setdefault("num_key_value_heads", heads)
    for key in SPLIT_CONFIG:
        out[key] = int(out[key]) // world
    out[CONFIG_KEY] = {"rank": rank, "world_size": world}
    return out


def launched_rank() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, ranks on this host) from the launcher's environment:
    Open MPI, then Slurm; (0, 1, 0, 1) when neither set them."""
    env = os.environ
    for rank, size, local, local_size in (
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
         "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
    ):  # fmt: skip
        if rank in env and size in env:
            world = int(env[size])
            return int(env[rank]), world, int(env.get(local, "0")), int(env.get(local_size, world))
    return 0, 1, 0, 1


class RankGroup:
    """This process's place in a tensor-parallel group, and the collectives the engine uses."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: Any,
        *,
        addr: str | None = None,
        port: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        import torch
        import torch.distributed as dist

        addr = addr or os.environ.get(ADDR_ENV, "127.0.0.1")
        port = port or int(os.environ.get(PORT_ENV, "0"))
        if not port:
            raise RuntimeError(
                f"rank {rank} of {world_size}: {PORT_ENV} is not set; launch the rank group "
                "with 'trtbuild serve', which chooses the rendezvous port"
            )
        self.timeout_s = float(timeout_s or os.environ.get(TIMEOUT_ENV) or TIMEOUT_S)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            self.backend,
            init_method=f"tcp://{addr}:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=self.timeout_s),
        )
        self._dist = dist
        self._torch = torch
        self._header = torch.zeros(2, dtype=torch.long, device=self.comm_device)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> Any:
        """Where collective buffers live: NCCL needs CUDA tensors, gloo takes CPU ones."""
        return self.device if self.backend == "nccl" else self._torch.device("cpu")

    def sum_outputs(self, model: Any) -> None:
        """Add every rank's partial o_proj and down_proj outputs (the row-parallel layers)."""

        def all_reduce(module: Any, args: Any, output: Any) -> Any:
            self._dist.all_reduce(output)
            return output

        for layer in model.get_decoder().layers:
            layer.self_attn.o_proj.register_forward_hook(all_reduce)
            layer.mlp.down_proj.register_forward_hook(all_reduce)

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` of any rank (e.g. the KV slots every rank's memory holds)."""
        t = self._torch.tensor([value], dtype=self._torch.long, device=self.comm_device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        self.agree_min(0)  # a collective every rank must reach (gloo and NCCL alike)

    def send(self, op: int, args: list[int]) -> None:
        """Rank 0: broadcast one step descriptor."""
        header = self._torch.tensor([op, len(args)], dtype=self._torch.long)
        self._header.copy_(header)
        self._dist.broadcast(self._header, src=0)
        if args:
            payload = self._torch.tensor(args, dtype=self._torch.long, device=self.comm_device)
            self._dist.broadcast(payload, src=0)

    def recv(self) -> tuple[int, list[int]]:
        """The other ranks: the next step descriptor from rank 0."""
        self._dist.broadcast(self._header, src=0)
        op, n = (int(x) for x in self._header.tolist())
        if not n:
            return op, []
        payload = self._torch.zeros(n, dtype=self._torch.long, device=self.comm_device)
        self._dist.broadcast(payload, src=0)
        return op, [int(x) for x in payload.tolist()]

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
