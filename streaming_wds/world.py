"""Who is reading: the (rank, DataLoader worker) consumer, resolved at iteration time."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class World:
    """One consumer among ``world_size * num_workers``.

    Attributes:
        rank: Index of this process among the distributed ranks.
        world_size: Number of distributed ranks.
        worker_id: Index of the DataLoader worker within this rank (0 without workers).
        num_workers: DataLoader workers per rank (1 without workers).
    """

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not in range for world_size {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker_id < self.num_workers:
            raise ConfigError(
                f"worker_id {self.worker_id} is not in range for num_workers {self.num_workers}"
            )

    @property
    def num_consumers(self) -> int:
        """Total consumers: ranks times workers per rank."""
        return self.world_size * self.num_workers

    @property
    def consumer(self) -> int:
        """This consumer's index in ``range(num_consumers)``, rank-major."""
        return self.rank * self.num_workers + self.worker_id


def distributed_rank_world() -> tuple[int, int]:
    """Rank and world size from ``torch.distributed`` when initialised, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_world(rank: int | None, world_size: int | None) -> World:
    """Build the :class:`World` of the calling process, at iteration time.

    Explicit ``rank``/``world_size`` win; otherwise ``torch.distributed`` is asked. Worker
    indices come from ``torch.utils.data.get_worker_info()``.
    """
    from torch.utils.data import get_worker_info

    if (rank is None) != (world_size is None):
        raise ConfigError("pass both rank= and world_size=, or neither")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank_world()
    info = get_worker_info()
    if info is None:
        return World(rank=rank, world_size=world_size)
    return World(rank=rank, world_size=world_size, worker_id=info.id, num_workers=info.num_workers)
