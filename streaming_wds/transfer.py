"""Moving batches of raw bytes from DataLoader workers to the main process through shared memory.

A DataLoader worker normally pickles each batch into its result pipe, and the main process reads
the pipe and unpickles it: for a batch of 32 samples of 100 KB that is four copies of 3.2 MB and
dozens of system calls, more CPU than parsing the shards. Here each worker owns a ring buffer in
a shared-memory file (``/dev/shm``); :class:`PackingCollate` copies every ``bytes`` object of a
collated batch into the ring and leaves a small :class:`_RingRef` in its place, so the pipe
carries only the batch's structure. Unpickling a ``_RingRef`` in the main process copies its
bytes out of the ring (the user gets plain ``bytes``) and hands the space back to the worker.
With ``default_collate``, tensors travel through the worker's arena instead (see
:mod:`streaming_wds.arena`): the ones it stacked in place, and copies of the other plain ones.

Regions are handed back in the order the worker wrote them (a worker's batches are unpickled in
order), so the ring is a head and a tail. Each blob gets its own region, so a batch never needs
one contiguous stretch; the blobs that do not fit in the free space travel the ordinary way, so
a worker never waits for the main process. Without an arena, tensors are left alone: torch
moves them through shared memory of its own.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

import torch

from . import shm, staging
from .arena import INLINE_BYTES, TensorRef, WorkerArena, plain_tensor, worker_arena
from .collate import arena_collate

_HEADER = 64  # the first 8 bytes: how far the main process has consumed (absolute position)
_MIN_BYTES = 1024  # smaller bytes objects are cheaper to pickle than to reference


class _WorkerRing:
    """The writing end, in a worker: ``capacity`` bytes after the header."""

    def __init__(self, token: str, capacity: int) -> None:
        self.capacity = capacity
        self.path = shm.path("ring", token)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, _HEADER + capacity)
            self.map = mmap.mmap(fd, _HEADER + capacity)
        finally:
            os.close(fd)
        self.view = memoryview(self.map)
        self.head = 0  # absolute position of the next byte written

    def consumed(self) -> int:
        value: int = struct.unpack_from("<Q", self.map, 0)[0]
        return value

    def reserve(self, n: int) -> int | None:
        """Absolute start of ``n`` contiguous free bytes, or ``None`` if they do not fit now."""
        used = self.head - self.consumed()
        pos = self.head % self.capacity
        skip = self.capacity - pos if pos + n > self.capacity else 0
        if used + skip + n > self.capacity:
            return None
        start = self.head + skip
        self.head = start + n
        return start

    def write(self, start: int, data: bytes) -> None:
        pos = _HEADER + start % self.capacity
        self.view[pos : pos + len(data)] = data

    def unlink(self) -> None:
        # the main process unlinks it as soon as it has mapped it; this is for the other cases
        shm.unlink(self.path)


class _RingRef:
    """Stands for one ``bytes`` object of a batch while it crosses the pipe."""

    __slots__ = ("end", "path", "start")

    def __init__(self, path: str, start: int, end: int) -> None:
        self.path, self.start, self.end = path, start, end

    def __reduce__(self) -> tuple[Callable[..., bytes], tuple[str, int, int]]:
        return _read_ring, (self.path, self.start, self.end)


# -- the main process ---------------------------------------------------------------------------

# path -> (file descriptor, the header mapped, capacity). The main process reads the data with
# pread() rather than mapping it: the ring's pages then count in the memory of the worker that
# writes them only (not twice), and the read completes before the consumed mark is stored.
_readers: dict[str, tuple[int, mmap.mmap, int]] = {}
_readers_lock = threading.Lock()


def _reader(path: str) -> tuple[int, mmap.mmap, int]:
    with _readers_lock:
        found = _readers.get(path)
        if found is None:
            fd = os.open(path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                found = (fd, mmap.mmap(fd, _HEADER), size - _HEADER)
            except BaseException:
                os.close(fd)
                raise
            os.unlink(path)  # open in both processes now; the memory goes when both close it
            _readers[path] = found
        return found


def _read_ring(path: str, start: int, end: int) -> bytes:
    """Unpickling a :class:`_RingRef`: the bytes, copied out; their space is given back."""
    fd, header, capacity = _reader(path)
    data = os.pread(fd, end - start, _HEADER + start % capacity)
    if len(data) != end - start:
        raise OSError(
            f"shared-memory ring {path} is shorter than expected ({len(data)} of {end - start} bytes)"
        )
    if end > struct.unpack_from("<Q", header, 0)[0]:
        struct.pack_into("<Q", header, 0, end)
    return data


def forget_rings(token: str) -> None:
    """Unmap the rings of the workers started with ``token`` (once they are gone), and remove
    the files of rings never mapped here (a worker killed before its first batch was read)."""
    mark = shm.prefix("ring", token)
    with _readers_lock:
        for path in [p for p in _readers if p.startswith(mark)]:
            fd, header, _ = _readers.pop(path)
            header.close()
            os.close(fd)
    shm.remove_left("ring", token)


# -- the worker ---------------------------------------------------------------------------------

_rings: dict[tuple[str, int], _WorkerRing] = {}


def _worker_ring(token: str, capacity: int) -> _WorkerRing | None:
    key = (token, os.getpid())
    ring = _rings.get(key)
    if ring is None:
        if not shm.available():
            return None
        ring = _rings[key] = _WorkerRing(token, capacity)
        from multiprocessing import util

        util.Finalize(ring, ring.unlink, exitpriority=10)
    return ring


_WALKED = frozenset({bytes, dict, list, tuple, torch.Tensor})  # what _Packer.walk looks into or replaces


class _Packer:
    """Moves the large ``bytes`` objects of one batch into this worker's ring, in the order met,
    until one does not fit; that one and all later ones stay in the batch and cross the pipe.
    With an ``arena``, replaces its tensors by refs: the ones the arena handed out for this
    batch, and copies of other plain CPU tensors that own their whole storage, where they fit;
    tensors of at most 16 KiB of either kind travel by value instead.

    It descends into plain dicts, lists and tuples only (subclasses such as named tuples are left
    as they are). The same ``bytes`` object met twice is two blobs, each with its own region:
    the main process reads regions in order and hands each back. The same tensor met twice is one
    ref object, which pickle sends once: one region, handed back when its last view is gone.
    """

    __slots__ = ("arena", "capacity", "full", "issued", "refs", "ring", "token")

    def __init__(self, token: str, capacity: int, arena: WorkerArena | None = None) -> None:
        self.token, self.capacity = token, capacity
        self.ring: _WorkerRing | None = None
        self.full = capacity <= 0
        self.arena = arena
        self.issued = arena.issued() if arena is not None else {}
        self.refs: dict[int, TensorRef | _InlineTensor] = {}

    def blob(self, data: bytes) -> bytes | _RingRef:
        if self.full:
            return data
        ring = self.ring
        if ring is None:  # created with the first blob: a batch without any needs no ring
            ring = self.ring = _worker_ring(self.token, self.capacity)
            if ring is None:
                self.full = True
                return data
        start = ring.reserve(len(data))
        if start is None:
            self.full = True
            return data
        ring.write(start, data)
        return _RingRef(ring.path, start, start + len(data))

    def tensor(self, t: torch.Tensor) -> torch.Tensor | TensorRef | _InlineTensor:
        arena = self.arena
        if arena is None:
            return t
        ref = self.refs.get(id(t))
        if ref is None:
            hit = self.issued.get(id(t))
            slot = hit[1] if hit is not None and hit[0] is t else None
            if slot is None and not _owns_storage(t):
                return t
            if t.nbytes <= INLINE_BYTES:
                ref = _InlineTensor(t)
            elif slot is not None:
                ref = arena.ref(t, slot)
            else:
                ref = arena.copy(t)
                if ref is None:
                    return t
            self.refs[id(t)] = ref
        return ref

    def walk(self, obj: Any) -> Any:
        t = type(obj)
        if t is bytes:
            return self.blob(obj) if len(obj) >= _MIN_BYTES else obj
        if t is torch.Tensor:
            return self.tensor(obj)
        if t is dict:
            return {k: self.walk(v) if type(v) in _WALKED else v for k, v in obj.items()}
        if t is list or t is tuple:
            items = [self.walk(v) if type(v) in _WALKED else v for v in obj]
            return items if t is list else tuple(items)
        return obj


class _InlineTensor:
    """A small tensor (labels, scalars) carried by value: cheaper than mapping a region."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, t: torch.Tensor) -> None:
        self.data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        self.dtype, self.shape = t.dtype, tuple(t.shape)

    def __reduce__(self) -> tuple[Callable[..., torch.Tensor], tuple[Any, ...]]:
        return _inline_tensor, (self.data, self.dtype, self.shape)


def _inline_tensor(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).view(shape)


def _owns_storage(t: torch.Tensor) -> bool:
    """A plain, contiguous CPU tensor that is its whole storage (nothing else can alias it
    through another view), not already in shared memory."""
    return (
        plain_tensor(t)
        and t.is_contiguous()
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == t.nbytes
        and not t.untyped_storage().is_shared()
    )


def pack(batch: Any, token: str, capacity: int, arena: WorkerArena | None = None) -> Any:
    """``batch`` with its large ``bytes`` objects moved into this worker's ring, in order, as
    many as fit (the rest stay in the batch and cross the pipe), and with ``arena``, its tensors
    replaced by refs to arena regions where they fit."""
    return _Packer(token, capacity, arena).walk(batch)


class PackingCollate:
    """Wraps a ``collate_fn``; in a worker process, packs its batches into the worker's ring.

    With ``arena_capacity``, ``collate`` must be ``default_collate``: batches are collated by
    :func:`~streaming_wds.collate.arena_collate` into the worker's arena of that many bytes.
    """

    def __init__(
        self,
        collate: Callable[[Any], Any],
        capacity: int,
        arena_capacity: int = 0,
        batch_size: int | None = None,
    ) -> None:
        self.collate = collate
        self.capacity = capacity
        self.arena_capacity = arena_capacity
        self.batch_size = batch_size  # with an arena: rgb8 JPEGs are decoded into batch tensors
        self.token = ""  # set by the loader each time it starts workers

    def start_worker(self) -> None:
        """In a worker process, before its first sample: make its arena and, with a batch size,
        the stager that decodes images straight into batch tensors in it."""
        if self.arena_capacity and self.batch_size:
            arena = worker_arena(self.token, self.arena_capacity)
            if arena is not None:
                staging.activate(arena, self.batch_size)

    def __call__(self, samples: Any) -> Any:
        from torch.utils.data import get_worker_info

        if get_worker_info() is None:
            return self.collate(samples)
        arena = worker_arena(self.token, self.arena_capacity) if self.arena_capacity else None
        if arena is None:
            return pack(self.collate(samples), self.token, self.capacity)
        stager = staging.activate(arena, self.batch_size) if self.batch_size else None
        try:
            return pack(arena_collate(samples, arena, stager), self.token, self.capacity, arena)
        finally:
            if stager is not None:
                stager.reset()
