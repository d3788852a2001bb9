"""Moving batches of raw bytes from DataLoader workers to the main process through shared memory.

A DataLoader worker normally pickles each batch into its result pipe, and the main process reads
the pipe and unpickles it: for a batch of 32 samples of 100 KB that is four copies of 3.2 MB and
dozens of system calls, more CPU than parsing the shards. Here each worker owns a ring buffer in
a shared-memory file (``/dev/shm``); :class:`PackingCollate` copies every ``bytes`` object of a
collated batch into the ring and leaves a small :class:`_RingRef` in its place, so the pipe
carries only the batch's structure. Unpickling a ``_RingRef`` in the main process copies its
bytes out of the ring (the user gets plain ``bytes``) and hands the space back to the worker.

Regions are handed back in the order the worker wrote them (a worker's batches are unpickled in
order), so the ring is a head and a tail. Each blob gets its own region, so a batch never needs
one contiguous stretch; the blobs that do not fit in the free space travel the ordinary way, so
a worker never waits for the main process. Tensors are left alone: torch already moves them
through shared memory.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

_HEADER = 64  # the first 8 bytes: how far the main process has consumed (absolute position)
_MIN_BYTES = 1024  # smaller bytes objects are cheaper to pickle than to reference
_SHM_DIR = "/dev/shm"


class _WorkerRing:
    """The writing end, in a worker: ``capacity`` bytes after the header."""

    def __init__(self, token: str, capacity: int) -> None:
        self.capacity = capacity
        self.path = os.path.join(_SHM_DIR, f"swds-ring-{token}-{os.getpid()}")
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


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
    name = f"swds-ring-{token}-"
    mark = os.path.join(_SHM_DIR, name)
    with _readers_lock:
        for path in [p for p in _readers if p.startswith(mark)]:
            fd, header, _ = _readers.pop(path)
            header.close()
            os.close(fd)
    if os.path.isdir(_SHM_DIR):
        for left in os.listdir(_SHM_DIR):
            if left.startswith(name):
                with contextlib.suppress(FileNotFoundError):  # its worker may have just removed it
                    os.unlink(os.path.join(_SHM_DIR, left))


# -- the worker ---------------------------------------------------------------------------------

_rings: dict[tuple[str, int], _WorkerRing] = {}


def _worker_ring(token: str, capacity: int) -> _WorkerRing | None:
    key = (token, os.getpid())
    ring = _rings.get(key)
    if ring is None:
        if not os.path.isdir(_SHM_DIR):
            return None
        ring = _rings[key] = _WorkerRing(token, capacity)
        from multiprocessing import util

        util.Finalize(ring, ring.unlink, exitpriority=10)
    return ring


# Both walks descend into exactly the same containers (plain dicts, lists and tuples; subclasses
# such as named tuples are left as they are) in the same order, so the k-th blob ``_blobs``
# collects is the k-th one ``_swap`` replaces. The same ``bytes`` object met twice is two blobs,
# each with its own region: the main process reads regions in order and hands each back.


def _blobs(obj: Any, out: list[bytes]) -> None:
    if type(obj) is bytes:
        if len(obj) >= _MIN_BYTES:
            out.append(obj)
    elif type(obj) is dict:
        for v in obj.values():
            _blobs(v, out)
    elif type(obj) is list or type(obj) is tuple:
        for v in obj:
            _blobs(v, out)


def _swap(obj: Any, refs: Iterator[_RingRef | None]) -> Any:
    if type(obj) is bytes:
        if len(obj) < _MIN_BYTES:
            return obj
        ref = next(refs)
        return obj if ref is None else ref
    if type(obj) is dict:
        return {k: _swap(v, refs) for k, v in obj.items()}
    if type(obj) is list:
        return [_swap(v, refs) for v in obj]
    if type(obj) is tuple:
        return tuple(_swap(v, refs) for v in obj)
    return obj


def pack(batch: Any, token: str, capacity: int) -> Any:
    """``batch`` with its large ``bytes`` objects moved into this worker's ring, in order, as
    many as fit; the rest (once the ring is full) stay in the batch and cross the pipe."""
    blobs: list[bytes] = []
    _blobs(batch, blobs)
    if not blobs:
        return batch
    ring = _worker_ring(token, capacity)
    if ring is None:
        return batch
    refs: list[_RingRef | None] = []
    for blob in blobs:  # one region each: a batch never needs one contiguous stretch of the ring
        start = ring.reserve(len(blob))
        if start is None:
            break
        ring.write(start, blob)
        refs.append(_RingRef(ring.path, start, start + len(blob)))
    if not refs:
        return batch
    return _swap(batch, itertools.chain(refs, itertools.repeat(None)))


class PackingCollate:
    """Wraps a ``collate_fn``; in a worker process, packs its batches into the worker's ring."""

    def __init__(self, collate: Callable[[Any], Any], capacity: int) -> None:
        self.collate = collate
        self.capacity = capacity
        self.token = ""  # set by the loader each time it starts workers

    def __call__(self, samples: Any) -> Any:
        batch = self.collate(samples)
        from torch.utils.data import get_worker_info

        if get_worker_info() is None:
            return batch
        return pack(batch, self.token, self.capacity)
