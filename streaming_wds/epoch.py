"""One consumer's pass over its shards in one epoch: the iterator that yields samples.

Order (all of it a function of seed, epoch, shard list and world, never of thread timing):

* The consumer's plan (see :mod:`~streaming_wds.planner`) is opened in order into ``interleave``
  slots (one slot without shuffle).
* Each step draws a number from a counter-based sequence (seeded by seed, epoch, consumer and
  step // 1024) and picks one of the open slots with it; the slot hands out its next sample. A
  slot whose shard is done takes the next shard of the plan.
* A slot reads ``shuffle_block`` samples at a time and, when shuffling, hands them out in a
  permutation seeded by (seed, epoch, shard, byte offset of the block).

Only handed-out samples are decoded. The checkpoint (:mod:`~streaming_wds.checkpoint`) records
each slot's shard, samples delivered, block offset and position in the block, so a resume reads
from the block's byte offset: consumed samples are neither downloaded again nor decoded.
"""

from __future__ import annotations

import collections
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .checkpoint import VERSION, ConsumerState, SlotState
from .config import StreamOptions
from .decoders import Decoder
from .errors import DataError, DecodeError, MissingFieldError, SampleError
from .fetch import Fetcher, ShardReader
from .planner import derive_seed
from .samples import RawSample, SampleReader
from .storage.base import ObjectInfo, Storage
from .tar import TarReader
from .world import World

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
_DRAWS_PER_SEED = 1024


@dataclass(frozen=True)
class EpochSpec:
    """Everything that determines one consumer's epoch."""

    storage: Storage
    shards: Sequence[ObjectInfo]
    fingerprint: str
    decoders: dict[str, Decoder]
    transform: Callable[[dict[str, Any]], Any] | None
    on_error: OnError
    options: StreamOptions
    seed: int
    shuffle: bool
    epoch: int
    world: World

    def blank_state(self) -> ConsumerState:
        """The state before anything of this epoch was read."""
        w = self.world
        return ConsumerState(
            version=VERSION,
            fingerprint=self.fingerprint,
            num_shards=len(self.shards),
            seed=self.seed,
            shuffle=self.shuffle,
            interleave=self.options.interleave,
            shuffle_block=self.options.shuffle_block,
            rank=w.rank,
            world_size=w.world_size,
            worker_id=w.worker_id,
            num_workers=w.num_workers,
            epoch=self.epoch,
        )


class _Slot:
    """An open shard: its parser and what is left of the current block, in hand-out order."""

    def __init__(
        self,
        shard: int,
        info: ObjectInfo,
        reader: ShardReader,
        delivered: int,
        block_offset: int,
        max_member_bytes: int,
    ) -> None:
        self.shard = shard
        self.info = info
        self.reader = reader
        self.samples = SampleReader(TarReader(reader, info.url, max_member_bytes=max_member_bytes))
        self.delivered = delivered
        self.block_offset = block_offset
        # The block's samples not handed out yet, the next one last: a sample handed out is no
        # longer held here, so a worker keeps about half of ``interleave * shuffle_block``.
        self.pending: list[RawSample] = []
        self.block_size = 0
        self.broken: DataError | None = None

    @property
    def pos(self) -> int:
        """Samples of the current block handed out."""
        return self.block_size - len(self.pending)

    def load_block(self, size: int, permute_seed: int | None) -> None:
        self.block_offset = self.samples.next_offset
        self.pending, self.block_size = [], 0
        block: list[RawSample] = []
        try:
            while len(block) < size:
                sample = self.samples.next_sample()
                if sample is None:
                    break
                block.append(sample)
        except DataError as exc:  # a corrupt, truncated, changed or vanished shard
            self.broken = exc  # surfaces after the good samples before it are handed out
        order = list(range(len(block)))
        if permute_seed is not None:
            random.Random(permute_seed).shuffle(order)
        self.pending = [block[i] for i in reversed(order)]
        self.block_size = len(block)

    def skip(self, n: int) -> None:
        """Drop the next ``n`` samples of the block (handed out before a checkpoint)."""
        del self.pending[max(len(self.pending) - n, 0) :]

    def take(self) -> RawSample:
        self.delivered += 1
        return self.pending.pop()


class EpochStream:
    """Iterator over one consumer's samples for one epoch; stateful and closeable."""

    def __init__(self, spec: EpochSpec, plan: Sequence[int], state: ConsumerState | None = None) -> None:
        self.spec = spec
        self.plan = plan
        opts = spec.options
        self.width = opts.interleave if spec.shuffle else 1
        self.errors: collections.Counter[str] = collections.Counter(state.errors if state else {})
        self._restore = state if state is not None and state.started else None
        self._started = False
        self._closed = False
        self._picks = 0
        self._opened = 0
        self._slots: list[_Slot | None] = []
        self._prefetched: dict[int, ShardReader] = {}
        self._fetcher: Fetcher | None = None
        self._draws: list[float] = []
        self._draws_block = -1
        self._pid = os.getpid()  # threads, locks and streams belong to this process only

    def __iter__(self) -> EpochStream:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            if not self._started:
                self._start()
            while True:
                picked = self._next_raw()
                if picked is None:
                    self.close()
                    raise StopIteration
                raw, info = picked
                try:
                    sample = self._decode(raw, info)
                except DataError as exc:
                    self._fail(exc)
                    continue
                transform = self.spec.transform
                return transform(sample) if transform is not None else sample
        except StopIteration:
            raise
        except BaseException:
            self.close()
            raise

    # -- order -------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the first shards and request them now; otherwise the first ``next()`` does."""
        if self._started or self._closed:
            return
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        warm_up = getattr(self.spec.storage, "warm_up", None)
        if warm_up is not None:  # before any download thread starts
            warm_up()
        self._fetcher = Fetcher(self.spec.storage, self.spec.options, self.width + self.spec.options.prefetch)
        self._started = True
        state = self._restore
        if state is None:
            self._slots = [self._open_next() for _ in range(self.width)]
        else:
            self._picks, self._opened = state.picks, state.opened
            self._slots = [self._reopen(s) if s is not None else None for s in state.slots]
            self._restore = None
        self._top_up_prefetch()
        self._fetcher.pump()  # the rest of the read-ahead, once every first piece is queued
        if state is not None:  # every shard is requested before any block is waited for
            for slot, s in zip(self._slots, state.slots, strict=True):
                if slot is not None and s is not None:
                    slot.load_block(self.spec.options.shuffle_block, self._permute_seed(slot))
                    slot.skip(s.block_pos)

    def _reopen(self, s: SlotState) -> _Slot:
        """The slot of ``s``, its shard opened at the block's offset; its block is loaded later."""
        assert self._fetcher is not None
        info = self.spec.shards[s.shard]
        reader = self._fetcher.open(info, s.block_offset)
        return _Slot(s.shard, info, reader, s.delivered, s.block_offset, self.spec.options.max_member_bytes)

    def _open_next(self) -> _Slot | None:
        assert self._fetcher is not None
        if self._opened >= len(self.plan):
            return None
        shard = self.plan[self._opened]
        info = self.spec.shards[shard]
        reader = self._prefetched.pop(self._opened, None) or self._fetcher.open(info)
        self._opened += 1
        return _Slot(shard, info, reader, 0, 0, self.spec.options.max_member_bytes)

    def _top_up_prefetch(self) -> None:
        assert self._fetcher is not None
        stop = min(self._opened + self.spec.options.prefetch, len(self.plan))
        for p in range(self._opened, stop):
            if p not in self._prefetched:
                self._prefetched[p] = self._fetcher.open(self.spec.shards[self.plan[p]])

    def _permute_seed(self, slot: _Slot) -> int | None:
        if not self.spec.shuffle:
            return None
        return derive_seed("block", self.spec.seed, self.spec.epoch, slot.shard, slot.samples.next_offset)

    def _draw(self) -> float:
        block, i = divmod(self._picks, _DRAWS_PER_SEED)
        if block != self._draws_block:
            s = self.spec
            rng = random.Random(derive_seed("picks", s.seed, s.epoch, s.world.consumer, block))
            self._draws = [rng.random() for _ in range(_DRAWS_PER_SEED)]
            self._draws_block = block
        self._picks += 1
        return self._draws[i]

    def _next_raw(self) -> tuple[RawSample, ObjectInfo] | None:
        while True:
            active = [i for i, s in enumerate(self._slots) if s is not None]
            if not active:
                return None
            j = active[int(self._draw() * len(active))] if len(active) > 1 else active[0]
            slot = self._slots[j]
            assert slot is not None
            if not slot.pending and not self._advance(slot):
                self._slots[j] = self._open_next()
                self._top_up_prefetch()
                continue
            return slot.take(), slot.info

    def _advance(self, slot: _Slot) -> bool:
        """Load the slot's next block; False when its shard is done (or broken and skipped)."""
        if slot.broken is None:
            slot.load_block(self.spec.options.shuffle_block, self._permute_seed(slot))
            if slot.pending:
                return True
            if slot.broken is None:
                try:
                    slot.reader.finish()
                except DataError as exc:
                    slot.broken = exc
        slot.reader.close()
        if slot.broken is not None:
            self._fail(slot.broken)
        return False

    # -- samples -----------------------------------------------------------------------------

    def _decode(self, raw: RawSample, info: ObjectInfo) -> dict[str, Any]:
        if raw.error is not None:
            raise SampleError(info.url, raw.offset, raw.key, raw.error)
        for field in self.spec.decoders:
            if field not in raw.fields:
                raise MissingFieldError(info.url, raw.offset, raw.key, field, sorted(raw.fields))
        out: dict[str, Any] = {"__key__": raw.key, "__url__": info.url}
        decoders = self.spec.decoders
        for field, data in raw.fields.items():
            decoder = decoders.get(field)
            if decoder is None:
                out[field] = data
                continue
            try:
                out[field] = decoder(data)
            except Exception as exc:
                raise DecodeError(info.url, raw.offset, raw.key, field, exc) from exc
        return out

    def _fail(self, exc: DataError) -> None:
        if self.spec.on_error == "raise":
            raise exc
        self.errors[exc.kind] += 1
        log.warning("on_error='skip': skipped (%s #%d) %s", exc.kind, self.errors[exc.kind], exc)

    # -- state and cleanup -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Positions after the last sample handed out (see :mod:`~streaming_wds.checkpoint`)."""
        if self._restore is not None:
            return self._restore.to_dict()
        state = self.spec.blank_state()
        state.started = self._started
        state.picks = self._picks
        state.opened = self._opened
        state.slots = [
            SlotState(s.shard, s.delivered, s.block_offset, s.pos) if s is not None else None
            for s in self._slots
        ]
        state.errors = dict(self.errors)
        return state.to_dict()

    def close(self) -> None:
        """Stop downloads and join the download threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            # a copy in a forked DataLoader worker: the download threads stayed in the parent,
            # and a lock one of them held at the fork would never be released here
            return
        if self._fetcher is not None:
            self._fetcher.close()
        self._prefetched.clear()

    def __del__(self) -> None:
        if hasattr(self, "_closed"):
            self.close()
