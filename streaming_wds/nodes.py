"""Which machine of a multi-node job this is, and its share of the inputs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Node:
    """Node ``rank`` of ``count`` machines running the same job."""

    rank: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise ConfigError(f"node_rank {self.rank} is not in range for num_nodes {self.count}")

    def share(self, num_inputs: int) -> range:
        """This node's contiguous share of ``range(num_inputs)``; shares differ by at most one."""
        return range(self.rank * num_inputs // self.count, (self.rank + 1) * num_inputs // self.count)


def _from_env(env: Mapping[str, str]) -> tuple[int, int] | None:
    if "NUM_NODES" in env and "NODE_RANK" in env:  # generic / Lightning-style launchers
        return int(env["NODE_RANK"]), int(env["NUM_NODES"])
    if "GROUP_RANK" in env and "WORLD_SIZE" in env and "LOCAL_WORLD_SIZE" in env:  # torchrun
        local = int(env["LOCAL_WORLD_SIZE"])
        if local < 1:
            raise ConfigError(f"launcher environment gives LOCAL_WORLD_SIZE={local}; expected at least 1")
        return int(env["GROUP_RANK"]), int(env["WORLD_SIZE"]) // local
    if "SLURM_NODEID" in env and ("SLURM_NNODES" in env or "SLURM_JOB_NUM_NODES" in env):
        count = env.get("SLURM_NNODES") or env["SLURM_JOB_NUM_NODES"]
        return int(env["SLURM_NODEID"]), int(count)
    return None


def resolve_node(num_nodes: int | None, node_rank: int | None, env: Mapping[str, str] | None = None) -> Node:
    """The :class:`Node` of this process.

    Explicit arguments win. Otherwise the launcher's environment is read: ``NODE_RANK`` and
    ``NUM_NODES``; torchrun's ``GROUP_RANK`` with ``WORLD_SIZE // LOCAL_WORLD_SIZE``; SLURM's
    ``SLURM_NODEID`` and ``SLURM_NNODES``. Without any, a single node.

    Raises:
        ConfigError: If only one of the arguments is given, or the values are out of range.
    """
    if (num_nodes is None) != (node_rank is None):
        raise ConfigError("pass both num_nodes= and node_rank=, or neither")
    if num_nodes is not None and node_rank is not None:
        return Node(rank=node_rank, count=num_nodes)
    found = _from_env(os.environ if env is None else env)
    if found is None:
        return Node()
    try:
        return Node(rank=found[0], count=found[1])
    except ConfigError as exc:
        raise ConfigError(f"launcher environment gives an invalid node: {exc}") from None
