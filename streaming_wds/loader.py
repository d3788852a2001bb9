"""``StreamingDataLoader``: torchdata's ``StatefulDataLoader`` with epochs driven from the main process.

Checkpoint (version 1), a plain JSON-serialisable dict::

    {
      "streaming_wds": 1,          # checkpoint format version
      "epoch": 3,                  # epoch of the iteration the state was taken in
      "num_workers": 4, "rank": 0, "world_size": 8,
      "fingerprint": "…", "seed": 0, "shuffle": true,
      "loader": {…}                # StatefulDataLoader's state; worker states are
                                   # streaming_wds.checkpoint.ConsumerState dicts
    }

Restoring a state taken after an epoch ended starts the next epoch (a plain
``StatefulDataLoader`` would replay the same epoch).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import warnings
import weakref
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from .arena import forget_arenas
from .collate import stacked_collate
from .dataset import StreamingWebDataset
from .errors import CheckpointError
from .transfer import PackingCollate, forget_rings
from .workers import WorkerInit, release_free_memory
from .world import distributed_rank_world

FORMAT_KEY = "streaming_wds"
VERSION = 1
SHARED_MEMORY_BYTES = 8 * 1024 * 1024
TENSOR_MEMORY_BYTES = 128 * 1024 * 1024
_tokens = itertools.count()


class StreamingDataLoader(StatefulDataLoader):  # type: ignore[misc]  # torchdata is untyped
    """A ``StatefulDataLoader`` for :class:`StreamingWebDataset` with exact mid-epoch resume.

    Each ``iter(loader)`` is a new epoch (0, 1, 2, … unless restored): the loader sets it on the
    dataset in the main process, so it holds with and without ``persistent_workers``. Shards are
    listed once, in the main process, before workers start.

    Batches from worker processes: every ``bytes`` object of at least 1 KB in a collated batch
    crosses from the worker to the main process through a shared-memory ring of
    ``shared_memory_bytes`` per worker (in ``/dev/shm``) instead of the result pipe, and arrives
    as ordinary ``bytes``. What does not fit at the moment goes through the pipe.

    With the default ``collate_fn`` (``default_collate``), the tensors of a batch (decoded
    images stacked into one tensor, labels, …) are built in a shared-memory arena of up to
    ``tensor_memory_bytes`` per worker that the worker reuses, and the main process receives
    tensors that view it: no per-batch shared-memory file, no copy. A region goes back to its
    worker only once every view of it is gone, so holding on to a batch is always safe; while
    held batches fill the arena, new tensors go torch's ordinary way. Such tensors equal
    ``default_collate``'s but are not ``is_shared()``; sending one to another process copies it.
    JPEGs that a schema decodes to ``rgb8`` (through ``simplejpeg``) are decoded straight into
    the slots of such a tensor, so a batch of them is not copied again (:mod:`streaming_wds.staging`).

    With ``num_workers=0`` and no ``collate_fn``, batches are ``default_collate``'s too, with
    numeric arrays stacked by numpy (torch's way warns about the read-only arrays that decoded
    images are).

    Args:
        dataset: The dataset to load.
        shared_memory_bytes: Size of each worker's ring; 0 sends ``bytes`` through the pipe.
        tensor_memory_bytes: Most shared memory each worker's arena uses (pages are reserved as
            it grows, so this is a cap, not an allocation); 0 leaves tensors to torch.
        keep_freed_memory: In each worker process, ask glibc's ``malloc`` to reuse freed memory
            rather than return it to the kernel at once (see :mod:`streaming_wds.workers`:
            decoded images otherwise cost a page fault per 4 KiB, every time); the user's
            ``worker_init_fn`` runs after it. False leaves ``malloc`` as it is.
        **kwargs: Passed to ``StatefulDataLoader`` (``batch_size``, ``num_workers``,
            ``collate_fn``, ``persistent_workers``, ``multiprocessing_context``, …).
    """

    _iterator: Any
    _initial_iter_for_state_dict: bool

    def __init__(
        self,
        dataset: StreamingWebDataset,
        *,
        shared_memory_bytes: int = SHARED_MEMORY_BYTES,
        tensor_memory_bytes: int = TENSOR_MEMORY_BYTES,
        keep_freed_memory: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(dataset, StreamingWebDataset):
            raise TypeError(f"StreamingDataLoader needs a StreamingWebDataset, got {type(dataset).__name__}")
        self._swds_packing: PackingCollate | None = None
        workers = kwargs.get("num_workers", 0)
        batch_size = kwargs.get("batch_size", 1)
        given = kwargs.get("collate_fn")
        if workers == 0 and given is None and batch_size is not None:
            kwargs["collate_fn"] = stacked_collate  # default_collate's batches, no warning
        if workers > 0:
            from torch.utils.data import default_collate, default_convert

            inner = given or (default_collate if batch_size is not None else default_convert)
            batched = batch_size is not None and inner is default_collate
            arena = max(tensor_memory_bytes, 0) if batched else 0
            if shared_memory_bytes > 0 or arena > 0:
                size = batch_size if arena > 0 else None
                made = PackingCollate(inner, max(shared_memory_bytes, 0), arena, size)
                self._swds_packing = kwargs["collate_fn"] = made
            packing = self._swds_packing
            start = packing.start_worker if packing is not None and packing.batch_size else None
            if keep_freed_memory or start is not None:
                user = kwargs.get("worker_init_fn")
                kwargs["worker_init_fn"] = WorkerInit(user, tune_malloc=keep_freed_memory, start=start)
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, deprecated in recent torch: not actionable here
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            super().__init__(dataset, **kwargs)
        self._swds_epoch = 0
        self._swds_epoch_used = False
        # Persistent workers advance their own epoch by one on every iteration; any other
        # epoch needs fresh workers that receive it.
        self._swds_workers_next: int | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the current iteration (or of the next, before any)."""
        return self._swds_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch``."""
        self._swds_epoch = epoch
        self._swds_epoch_used = False

    def _swds_dataset(self) -> StreamingWebDataset:
        ds = self.dataset
        assert isinstance(ds, StreamingWebDataset)
        return ds

    def _prepare(self) -> None:
        ds = self._swds_dataset()
        _ = ds.shards  # list once here, so workers inherit the listing
        if ds.rank is None:
            ds.bind_world(*distributed_rank_world())
        ds.set_epoch(self._swds_epoch)

    def _get_iterator(self) -> Any:
        self._prepare()
        if self.num_workers > 0 and self._start_method() == "fork":
            release_free_memory()  # forked workers would start with it (see workers.py)
        packing = self._swds_packing
        if packing is not None:  # new workers: new rings
            packing.token = f"{os.getpid()}-{id(self):x}-{next(_tokens)}"
        iterator = super()._get_iterator()
        if packing is not None:  # its rings go with it, even if a worker died holding one
            weakref.finalize(iterator, forget_rings, packing.token)
            weakref.finalize(iterator, forget_arenas, packing.token)
        return iterator

    def _start_method(self) -> str | None:
        ctx = self.multiprocessing_context
        if ctx is not None:
            return str(ctx.get_start_method())
        # the method fixed already, or the platform's default (first), without fixing it here
        return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]

    def __iter__(self) -> Any:
        if self._initial_iter_for_state_dict:
            # state_dict() already built this epoch's iterator
            self._swds_epoch_used = True
            self._swds_workers_next = self._swds_epoch + 1
            return super().__iter__()
        if self._swds_epoch_used:
            self._swds_epoch += 1
        self._swds_epoch_used = True
        if self._iterator is not None and self._swds_workers_next != self._swds_epoch:
            self._iterator = None  # persistent workers would run another epoch: restart them
        self._swds_workers_next = self._swds_epoch + 1
        self._prepare()
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: JSON-serialisable, positions only (see the module docstring)."""
        if self._iterator is None:
            self._prepare()
        return {
            FORMAT_KEY: VERSION,
            "epoch": self._swds_epoch,
            **self._identity(),
            "loader": super().state_dict(),
        }

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must have been taken with to apply here."""
        ds = self._swds_dataset()
        rank, world_size = self._rank_world()
        return {
            "num_workers": self.num_workers,
            "rank": rank,
            "world_size": world_size,
            "fingerprint": ds.fingerprint,
            "seed": ds.seed,
            "shuffle": ds.shuffle,
        }

    def _rank_world(self) -> tuple[int, int]:
        ds = self._swds_dataset()
        if ds.rank is not None and ds.world_size is not None:
            return ds.rank, ds.world_size
        return distributed_rank_world()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next ``iter()``.

        Raises:
            CheckpointError: If the state is not a streaming-wds checkpoint of this version, or was
                taken with other shards, seed, shuffle, ``num_workers`` or ranks.
        """
        if not isinstance(state_dict, dict) or FORMAT_KEY not in state_dict:
            raise CheckpointError("not a streaming-wds loader checkpoint (no 'streaming_wds' key)")
        if state_dict[FORMAT_KEY] != VERSION:
            raise CheckpointError(
                f"checkpoint version {state_dict[FORMAT_KEY]!r} is not supported "
                f"(this version reads {VERSION})"
            )
        expected = self._identity()
        problems = [
            f"{k}: checkpoint has {state_dict.get(k)!r}, this run has {v!r}"
            for k, v in expected.items()
            if state_dict.get(k) != v
        ]
        if problems:
            raise CheckpointError("checkpoint does not match this loader: " + "; ".join(problems))
        inner = state_dict["loader"]
        epoch = int(state_dict["epoch"])
        if inner.get("_iterator_finished", False):
            super().load_state_dict({})
            self.set_epoch(epoch + 1)
        else:
            super().load_state_dict(inner)
            self.set_epoch(epoch)

    def error_counts(self) -> dict[str, int]:
        """Samples and shards skipped under ``on_error="skip"`` this epoch, summed over workers,
        as of the last batch yielded."""
        inner: dict[str, Any] = super().state_dict() if self._iterator is not None else {}
        if "_snapshot" in inner:
            states = [w.get("dataset_state") for w in inner["_snapshot"]["_worker_snapshots"].values()]
        else:
            states = [inner.get("dataset_state")]
        total: dict[str, int] = {}
        for st in states:
            for kind, n in ((st or {}).get("errors") or {}).items():
                total[kind] = total.get(kind, 0) + n
        return total
