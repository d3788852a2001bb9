"""Pure planning: which shards each consumer reads in an epoch, and in which order.

Nothing here imports torch or touches I/O: the plan is a function of (number of shards, seed,
epoch, shuffle, world), so every consumer computes the same global order independently.
"""

from __future__ import annotations

import hashlib
import random

from .errors import PlanningError
from .world import World


def derive_seed(*parts: int | str) -> int:
    """A stable 64-bit seed from parts, identical in every process and Python run."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def epoch_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The global shard order of an epoch: listing order, or a seeded permutation."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(derive_seed("shards", seed, epoch)).shuffle(order)
    return order


def rank_shards(
    num_shards: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int
) -> list[int]:
    """Shard indices of one rank this epoch: the epoch's order dealt round-robin over the ranks.

    A rank's share does not depend on how many DataLoader workers split it further.
    """
    return epoch_order(num_shards, seed=seed, epoch=epoch, shuffle=shuffle)[rank::world_size]


def plan_epoch(num_shards: int, *, seed: int, epoch: int, shuffle: bool, world: World) -> list[int]:
    """Shard indices that ``world.consumer`` reads this epoch, in reading order.

    The epoch's global order is dealt round-robin over the ranks, and each rank's share
    round-robin over its workers: each shard goes to exactly one consumer and counts differ by
    at most one.

    Raises:
        PlanningError: If there are fewer shards than consumers (some would get nothing,
            which leaves distributed ranks with unequal work).
    """
    if num_shards < world.num_consumers:
        raise PlanningError(
            f"{num_shards} shard(s) cannot feed {world.num_consumers} consumers "
            f"(world_size={world.world_size} x num_workers={world.num_workers}); "
            "use fewer DataLoader workers or ranks, or write more, smaller shards"
        )
    mine = rank_shards(
        num_shards, seed=seed, epoch=epoch, shuffle=shuffle, rank=world.rank, world_size=world.world_size
    )
    return mine[world.worker_id :: world.num_workers]
