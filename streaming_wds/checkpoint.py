"""The checkpoint contract of one consumer (a DataLoader worker of one rank), version 1.

The state holds positions, never data. The epoch's order is recomputed from (seed, epoch,
shard-list fingerprint, world), so the state only says how far each open shard got::

    {
      "version": 1,
      "fingerprint": "9f2c…",          # hash of the sorted shard names and sizes
      "num_shards": 128, "seed": 0, "shuffle": true,
      "interleave": 16, "shuffle_block": 8,     # the options that shape the order
      "rank": 0, "world_size": 1, "worker_id": 0, "num_workers": 2,
      "epoch": 3,
      "started": true,                 # false: nothing read yet this epoch
      "picks": 1234,                   # draws made from the pick sequence
      "opened": 20,                    # entries of this consumer's plan taken into slots
      "slots": [[shard, delivered, block_offset, block_pos] | null, …],
      "errors": {"decode": 1}          # skipped under on_error="skip", this epoch
    }

A slot ``[shard, delivered, block_offset, block_pos]`` reads shard index ``shard`` (into the
sorted listing): ``delivered`` samples of it were handed out, the current block of samples starts
at byte ``block_offset`` and ``block_pos`` samples of that block were handed out. Shards of the
plan before ``opened`` that are in no slot are complete, so the state also says what every shard
has delivered, which lets a later version re-plan on another topology.

Evolution rules (msgspec's): new fields get defaults; no field changes type; any other change
bumps ``version`` and is a breaking change noted in the CHANGELOG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec

from .errors import CheckpointError
from .storage.base import ObjectInfo

VERSION = 1


class SlotState(msgspec.Struct, array_like=True, frozen=True):
    """Position in one open shard."""

    shard: int
    delivered: int
    block_offset: int
    block_pos: int


class ConsumerState(msgspec.Struct, kw_only=True):
    """Position of one consumer in one epoch (see the module docstring)."""

    version: int
    fingerprint: str
    num_shards: int
    seed: int
    shuffle: bool
    interleave: int
    shuffle_block: int
    rank: int
    world_size: int
    worker_id: int
    num_workers: int
    epoch: int
    started: bool = False
    picks: int = 0
    opened: int = 0
    slots: list[SlotState | None] = msgspec.field(default_factory=list)
    errors: dict[str, int] = msgspec.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    @classmethod
    def from_dict(cls, state: Any) -> ConsumerState:
        """Parse a state dict, rejecting other versions and malformed content."""
        if not isinstance(state, dict):
            raise CheckpointError(f"expected a state dict, got {type(state).__name__}")
        version = state.get("version")
        if version != VERSION:
            raise CheckpointError(
                f"checkpoint version {version!r} is not supported by this streaming-wds (reads {VERSION})"
            )
        try:
            return msgspec.convert(state, cls)
        except msgspec.ValidationError as exc:
            raise CheckpointError(f"malformed streaming-wds checkpoint: {exc}") from exc

    def mismatches(self, expected: ConsumerState) -> list[str]:
        """Human-readable differences in what the order depends on."""
        keys = (
            "fingerprint",
            "num_shards",
            "seed",
            "shuffle",
            "interleave",
            "shuffle_block",
            "rank",
            "world_size",
            "worker_id",
            "num_workers",
        )
        return [
            f"{k}: checkpoint has {getattr(self, k)!r}, this run has {getattr(expected, k)!r}"
            for k in keys
            if getattr(self, k) != getattr(expected, k)
        ]


def fingerprint(shards: Sequence[ObjectInfo]) -> str:
    """A short hash of the shard names and sizes, in listing order."""
    h = hashlib.sha256()
    for info in shards:
        h.update(f"{info.name}\t{info.size}\n".encode())
    return h.hexdigest()[:16]
