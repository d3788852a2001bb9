"""``StreamingWebDataset``: WebDataset tar shards from S3 or disk as a PyTorch IterableDataset."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .checkpoint import ConsumerState, fingerprint
from .config import S3Options, StreamOptions
from .decoders import SchemaValue, resolve_schema
from .epoch import EpochSpec, EpochStream, OnError
from .errors import CheckpointError, ConfigError, NoShardsError
from .index import DatasetIndex, read_index
from .planner import plan_epoch, rank_shards
from .storage import Storage, open_storage
from .storage.base import ObjectInfo
from .world import World, resolve_world


class StreamingWebDataset(IterableDataset[Any]):
    """Streams the ``*.tar`` shards directly under ``remote[/split]`` as decoded samples.

    Each sample is a dict of field -> value plus ``__key__`` and ``__url__``. Fields named in the
    ``schema`` are decoded (and required); other fields stay ``bytes``.

    Every (rank, DataLoader worker) reads its own shards, planned from ``seed`` and the epoch.
    Use it with :class:`~streaming_wds.StreamingDataLoader` for epochs and exact resume; the
    dataset itself is also ``Stateful`` (``state_dict()``/``load_state_dict()``).

    Args:
        remote: ``s3://bucket/prefix``, a local directory, a ``file://`` URL, or a ``Storage``.
        split: Optional sub-prefix under ``remote`` (for example ``"train"``).
        schema: Field -> decoder name or callable. Keys may have a leading dot (``".jpg"``).
        shuffle: Shuffle shard order and samples within a bounded window, from (seed, epoch).
        seed: Seed of every random choice; the same arguments give the same order.
        transform: Called on every decoded sample; its result is yielded.
        on_error: ``"raise"`` (default) or ``"skip"``: skip and count bad shards and samples.
        rank: This process's rank; with ``world_size``, overrides ``torch.distributed``.
        world_size: Number of ranks; with ``rank``.
        s3: How to reach S3 (profile, endpoint, region, anonymous).
        options: Read-ahead, buffering and mixing (:class:`~streaming_wds.StreamOptions`).
        allow_pickle: Allow the ``pickle`` and ``torch`` decoders, which can run arbitrary code.

    Raises:
        ConfigError: For invalid arguments or schema.
    """

    def __init__(
        self,
        remote: str | os.PathLike[str] | Storage,
        split: str | None = None,
        *,
        schema: Mapping[str, SchemaValue] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        on_error: OnError = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        s3: S3Options | None = None,
        options: StreamOptions | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if (rank is None) != (world_size is None):
            raise ConfigError("pass both rank= and world_size=, or neither")
        if rank is not None and world_size is not None:
            World(rank=rank, world_size=world_size)  # validates the range
        self.storage = open_storage(remote, split, s3)
        self.decoders = resolve_schema(schema, allow_pickle=allow_pickle)
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.on_error: OnError = on_error
        self.rank = rank
        self.world_size = world_size
        self.options = options or StreamOptions()
        reserve = getattr(self.storage, "reserve_connections", None)
        if reserve is not None:  # a connection per download thread
            reserve(self.options.max_workers)
        self._shards: list[ObjectInfo] | None = None
        self._index: DatasetIndex | None = None
        self._fingerprint = ""
        self._bound: tuple[int, int] | None = None
        self._epoch = 0
        self._epoch_used = False
        self._pending: ConsumerState | None = None
        self._stream: EpochStream | None = None
        self._past_errors: collections.Counter[str] = collections.Counter()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"] = None  # threads and buffers stay in their process
        return state

    # -- listing -----------------------------------------------------------------------------

    @property
    def shards(self) -> list[ObjectInfo]:
        """The shards, sorted by name: from ``index.json`` when there is one (no listing),
        else listed. Found once, on first use.

        Raises:
            NoShardsError: If there is no shard directly under the location.
        """
        if self._shards is None:
            self._index = read_index(self.storage)
            shards = self._index.infos(self.storage) if self._index is not None else self.storage.list(".tar")
            if not shards:
                raise NoShardsError(self.storage.location)
            self._shards = shards
            self._fingerprint = fingerprint(shards)
        return self._shards

    @property
    def index(self) -> DatasetIndex | None:
        """The dataset index (``index.json``), or ``None`` if the shards were listed."""
        _ = self.shards
        return self._index

    @property
    def num_samples(self) -> int | None:
        """Samples in the whole dataset, where an index says; else ``None``."""
        index = self.index
        return index.total_samples if index is not None else None

    def __len__(self) -> int:
        """Samples this rank reads in the current epoch (the next, before any iteration).

        Exact, from the dataset index; shard order depends on the epoch when shuffling, so the
        count may differ between epochs by up to one shard's samples.

        Raises:
            TypeError: Without a dataset index, the length is unknown.
        """
        shards = self.shards
        if self._index is None:
            raise TypeError(
                f"the length of {self.storage.location} is unknown without a dataset index "
                "(index.json); write one with ShardWriter or build_index()"
            )
        world = self._world()
        mine = rank_shards(
            len(shards),
            seed=self.seed,
            epoch=self._epoch,
            shuffle=self.shuffle,
            rank=world.rank,
            world_size=world.world_size,
        )
        return sum(shards[i].samples or 0 for i in mine)

    @property
    def fingerprint(self) -> str:
        """Hash of the shard names and sizes; checkpoints must match it."""
        _ = self.shards
        return self._fingerprint

    # -- epochs and world --------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration. Without it, each new iteration advances by one."""
        self._epoch = epoch
        self._epoch_used = False

    @property
    def epoch(self) -> int:
        """The epoch of the current iteration (or of the next, before any)."""
        return self._epoch

    def bind_world(self, rank: int, world_size: int) -> None:
        """Fix rank and world size resolved by the caller (the loader, in the main process).

        Explicit ``rank``/``world_size`` given to the constructor still win.
        """
        self._bound = (rank, world_size)

    def _world(self) -> World:
        if self.rank is None and self._bound is not None:
            return resolve_world(*self._bound)
        return resolve_world(self.rank, self.world_size)

    def _spec(self, epoch: int, world: World) -> EpochSpec:
        return EpochSpec(
            storage=self.storage,
            shards=self.shards,
            fingerprint=self.fingerprint,
            decoders=self.decoders,
            transform=self.transform,
            on_error=self.on_error,
            options=self.options,
            seed=self.seed,
            shuffle=self.shuffle,
            epoch=epoch,
            world=world,
        )

    def __iter__(self) -> EpochStream:
        world = self._world()
        pending, self._pending = self._pending, None
        if pending is not None:
            self._epoch = pending.epoch
        elif self._epoch_used:
            self._epoch += 1
        self._epoch_used = True
        spec = self._spec(self._epoch, world)
        if pending is not None:
            problems = pending.mismatches(spec.blank_state())
            if problems:
                raise CheckpointError("checkpoint does not match this dataset: " + "; ".join(problems))
        plan = plan_epoch(
            len(spec.shards), seed=self.seed, epoch=self._epoch, shuffle=self.shuffle, world=world
        )
        if self._stream is not None:
            self._past_errors.update(self._stream.errors)
            self._stream.close()
        self._stream = EpochStream(spec, plan, pending)
        if get_worker_info() is not None:
            # A DataLoader worker creates its iterator at start-up, before the main process
            # asks for the first batch: the requests go out while that handshake runs.
            self._stream.start()
        return self._stream

    # -- Stateful ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This consumer's position: a plain, JSON-serialisable dict (see ``checkpoint``)."""
        if self._pending is not None:
            return self._pending.to_dict()
        if self._stream is not None:
            return self._stream.state_dict()
        epoch = self._epoch + 1 if self._epoch_used else self._epoch
        return self._spec(epoch, self._world()).blank_state().to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from ``state_dict`` at the next ``iter()``.

        Raises:
            CheckpointError: If the state has another version or is malformed. A state made for
                other shards, seed or topology is rejected when iteration starts.
        """
        self._pending = ConsumerState.from_dict(state_dict)

    @property
    def error_counts(self) -> dict[str, int]:
        """Bad shards and samples skipped under ``on_error="skip"`` in this process, by kind."""
        total = collections.Counter(self._past_errors)
        if self._stream is not None:
            total.update(self._stream.errors)
        return dict(total)
