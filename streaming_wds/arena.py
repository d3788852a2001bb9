"""Tensors of a batch that cross from a DataLoader worker to the main process without a copy.

In a worker, ``default_collate`` stacks every array or tensor field of a batch into a freshly
allocated shared-memory tensor, and pickling it hands the main process a file descriptor over a
socket, which maps it anew. Each of those fresh pages costs a page fault in both processes (3 µs
apiece on a VM; 2.2 million per epoch of ImageNet-size decoded images), and each tensor a socket
round trip (about 0.35 ms of CPU). Here each worker owns an *arena*, a file in ``/dev/shm`` that
it maps once, and stacks into regions of it that it reuses. The batch carries a small
:class:`TensorRef` per region instead of the tensor; unpickling one in the main process maps the
region and returns a tensor viewing it.

A region goes back to its worker only when both ends are done with it:

* the worker's own tensor over it has been freed (a finaliser on the array behind it says so),
  and
* if a ref to it was sent, the main process's mapping of it is gone. That ``mmap`` object is
  referenced only by the array behind the main process's tensor, so it is finalised when the
  tensor's storage is freed: when the last view of it (slices, ``.numpy()`` arrays, pinned
  copies' sources, …) is gone. Its finaliser writes the region's generation into the arena's
  header, where the worker reads it before allocating.

Regions come back in any order. The worker allocates first fit from the lowest address, so the
pages it touches stay close to what is in flight at once; it reserves them (``posix_fallocate``)
before use, so a full ``/dev/shm`` means no arena rather than a ``SIGBUS``. Nothing waits: a
field that does not fit is collated and sent the ordinary way.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np
import torch

from . import shm

log = logging.getLogger(__name__)

PAGE = mmap.ALLOCATIONGRANULARITY
SLOTS = 512  # regions live at once per worker; the header holds one 8-byte generation each
HEADER = max(PAGE, SLOTS * 8)
_GROW = 4 * 1024 * 1024  # reserve arena pages in steps of at least this much
INLINE_BYTES = 16 * 1024  # tensors this small travel inside the pickle, by value, not in a region


def plain_tensor(t: torch.Tensor) -> bool:
    """A tensor an arena can hold: an exact ``torch.Tensor``, dense, on the CPU, not quantized,
    not tracking gradients."""
    return (
        type(t) is torch.Tensor
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not t.is_quantized
        and not t.requires_grad
    )


class _Region:
    __slots__ = ("end", "gen", "held", "sent", "start")

    def __init__(self, start: int, end: int, gen: int) -> None:
        self.start, self.end, self.gen = start, end, gen
        self.held = True  # the worker's tensor over it is alive
        self.sent = False  # a TensorRef to it went to the main process


class TensorRef:
    """Stands for one tensor of a batch, in an arena region, while it crosses the pipe."""

    __slots__ = ("dtype", "gen", "nbytes", "path", "shape", "slot", "start")

    def __init__(
        self,
        path: str,
        slot: int,
        gen: int,
        start: int,
        nbytes: int,
        dtype: torch.dtype,
        shape: tuple[int, ...],
    ) -> None:
        self.path, self.slot, self.gen, self.start = path, slot, gen, start
        self.nbytes, self.dtype, self.shape = nbytes, dtype, shape

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        args = (self.path, self.slot, self.gen, self.start, self.nbytes, self.dtype, self.shape)
        return open_tensor, args


class WorkerArena:
    """The worker's end: ``capacity`` bytes of regions after a header of release generations."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path, self.capacity = path, capacity
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, HEADER + capacity)
            self.map = mmap.mmap(fd, HEADER + capacity)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self.fd = fd
        self.reserved = 0  # bytes of the region area backed by reserved pages
        self.regions: dict[int, _Region] = {}
        self.free_slots = list(range(SLOTS - 1, -1, -1))  # pop() gives the lowest
        self.generation = 0
        self.dropped: deque[int] = deque()  # slots whose worker tensor died (any thread appends)
        self._issued: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor, slot), this batch

    def _released(self, slot: int) -> int:
        value: int = struct.unpack_from("<Q", self.map, slot * 8)[0]
        return value

    def _reclaim(self) -> None:
        dropped = self.dropped
        while dropped:
            self.regions[dropped.popleft()].held = False
        done = [
            slot
            for slot, r in self.regions.items()
            if not r.held and (not r.sent or self._released(slot) == r.gen)
        ]
        for slot in done:
            del self.regions[slot]
            self.free_slots.append(slot)

    def tensor(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor | None:
        """An uninitialised tensor in a free region, or ``None`` if none is free now."""
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if nbytes <= 0:
            return None
        self._reclaim()
        if not self.free_slots:
            return None
        size = -(-nbytes // PAGE) * PAGE
        start = 0
        for r in sorted(self.regions.values(), key=lambda r: r.start):
            if r.start - start >= size:
                break
            start = max(start, r.end)
        end = start + size
        if end > self.capacity or (end > self.reserved and not self._reserve(end)):
            return None
        slot = self.free_slots.pop()
        self.generation += 1
        self.regions[slot] = _Region(start, end, self.generation)
        arr = np.frombuffer(self.map, np.uint8, count=nbytes, offset=HEADER + start)
        weakref.finalize(arr, self.dropped.append, slot).atexit = False
        out = torch.from_numpy(arr).view(dtype).view(shape)
        self._issued[id(out)] = (out, slot)
        return out

    def _reserve(self, end: int) -> bool:
        new = min(self.capacity, max(end, self.reserved + _GROW))
        try:
            os.posix_fallocate(self.fd, HEADER + self.reserved, new - self.reserved)
        except OSError as e:  # once per arena: the capacity stops here
            log.warning(
                "shared-memory arena %s cannot grow to %d bytes (%s): further tensors take torch's "
                "own shared memory (is /dev/shm too small? a container's default is often 64 MB)",
                self.path,
                new,
                e,
            )
            self.capacity = self.reserved
            return False
        self.reserved = new
        return True

    def issued(self) -> dict[int, tuple[torch.Tensor, int]]:
        """The tensors handed out since the last call, by ``id``, with their slots (and forget
        them here: a tensor not sent frees its region when it dies)."""
        issued, self._issued = self._issued, {}
        return issued

    def ref(self, tensor: torch.Tensor, slot: int) -> TensorRef:
        """The ref that carries ``tensor`` (handed out by :meth:`tensor` as ``slot``)."""
        r = self.regions[slot]
        r.sent = True
        return TensorRef(self.path, slot, r.gen, r.start, tensor.nbytes, tensor.dtype, tuple(tensor.shape))

    def copy(self, tensor: torch.Tensor) -> TensorRef | None:
        """A ref to a copy of ``tensor`` in a free region, or ``None`` if none is free now."""
        out = self.tensor(tensor.dtype, tuple(tensor.shape))
        if out is None:
            return None
        out.copy_(tensor)
        _, slot = self._issued.pop(id(out))
        return self.ref(out, slot)

    def unlink(self) -> None:
        # the main process unlinks it as soon as it has opened it; this is for the other cases
        shm.unlink(self.path)


_arenas: dict[tuple[str, int], WorkerArena | None] = {}


def worker_arena(token: str, capacity: int) -> WorkerArena | None:
    """This worker process's arena for ``token`` (created on first use), or ``None`` if shared
    memory is not available here."""
    key = (token, os.getpid())
    if key in _arenas:
        return _arenas[key]
    arena: WorkerArena | None = None
    if capacity > 0 and shm.available():
        try:
            arena = WorkerArena(shm.path("arena", token), capacity)
        except OSError as e:
            log.debug("no shared-memory arena (%s): tensors go the ordinary way", e)
    if arena is not None:
        from multiprocessing import util

        util.Finalize(arena, arena.unlink, exitpriority=10)
    _arenas[key] = arena
    return arena


# -- the main process ---------------------------------------------------------------------------


class _Opened:
    """The main process's end of one worker's arena: its file, kept open to map regions and to
    write release generations; closed when the loader's iterator is gone."""

    __slots__ = ("closed", "fd", "lock", "pid")

    def __init__(self, fd: int) -> None:
        self.fd, self.pid, self.closed = fd, os.getpid(), False
        self.lock = threading.RLock()  # a collection inside close() may finalise a mapping

    def release(self, slot: int, gen: int) -> None:
        # Runs when a mapping is finalised, in whichever thread freed the last view. A forked
        # child that inherited the mapping must not hand back its parent's region.
        with self.lock:
            if self.closed or os.getpid() != self.pid:
                return
            os.pwrite(self.fd, struct.pack("<Q", gen), slot * 8)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)


_opened: dict[str, _Opened] = {}
_opened_lock = threading.Lock()


def _open_arena(path: str) -> _Opened:
    with _opened_lock:
        found = _opened.get(path)
        if found is None or found.pid != os.getpid():
            found = _opened[path] = _Opened(os.open(path, os.O_RDWR))
            os.unlink(path)  # open in both processes now; the memory goes when both let go
        return found


def open_tensor(
    path: str, slot: int, gen: int, start: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """Unpickling a :class:`TensorRef`: a tensor viewing its region, handed back when freed."""
    arena = _open_arena(path)
    region = mmap.mmap(arena.fd, nbytes, offset=HEADER + start)
    weakref.finalize(region, arena.release, slot, gen).atexit = False  # nothing to give back then
    arr = np.frombuffer(region, np.uint8, count=nbytes)
    return torch.from_numpy(arr).view(dtype).view(shape)


def forget_arenas(token: str) -> None:
    """Close the arenas of the workers started with ``token`` (once they are gone), and remove
    the files of arenas never opened here. Tensors still viewing them stay valid."""
    mark = shm.prefix("arena", token)
    with _opened_lock:
        for path in [p for p in _opened if p.startswith(mark)]:
            _opened.pop(path).close()
    shm.remove_left("arena", token)
