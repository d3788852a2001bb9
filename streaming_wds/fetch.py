"""Bounded read-ahead: streamed reads of open shards on a thread pool, within a byte budget.

A :class:`Fetcher` belongs to one epoch of one consumer. Every :class:`ShardReader` it opens
streams its shard from the start offset with one request (``Storage.open_read``; a request costs
far more CPU than reading a few MB of its body) and reads it in ``chunk_size`` pieces, keeping up
to ``readahead`` pieces requested ahead. All bookkeeping happens on the consumer's thread; pool
threads only read the next planned piece of a stream (one at a time per shard, under its lock),
and their exceptions travel back through the futures. What the output contains never depends
on which download finishes first.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .checksum import crc32
from .config import StreamOptions
from .errors import ShardFormatError
from .storage.base import ByteStream, ObjectInfo, Storage

_Piece = tuple[int, int, bytearray, int]  # (offset, planned size, buffer, bytes read into it)
_EMPTY = memoryview(b"")


def _fill(stream: ByteStream, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; returns the bytes read."""
    readinto = getattr(stream, "readinto", None)
    if readinto is None:  # a stream with ``read`` only: read, then copy
        data = stream.read(len(view))
        view[: len(data)] = data
        return len(data)
    got: int = readinto(view)
    return got


class _RangeStream:
    """``open_read`` for a store that only implements ``read_range``."""

    def __init__(self, storage: Storage, name: str, start: int) -> None:
        self._storage, self._name, self._pos = storage, name, start

    def read(self, n: int) -> bytes:
        data = self._storage.read_range(self._name, self._pos, self._pos + n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        pass


def _started_pool(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` download threads, all started before it is handed out.

    ``ThreadPoolExecutor`` starts a thread per submission, and ``Thread.start`` waits until the new
    thread runs. Once the first threads are busy building requests (a few ms of CPU under the
    GIL each), every later start waits for the GIL too: starting 8 threads took 40-70 ms at the
    start of an epoch. Started while the others only wait, they take about a millisecond.
    """
    pool = ThreadPoolExecutor(n, thread_name_prefix="swds-fetch")
    barrier = threading.Barrier(n + 1)
    try:
        for _ in range(n):  # each task holds its thread until all n run, so n threads start
            pool.submit(barrier.wait)
        barrier.wait()
    except BaseException:  # a thread could not start: release the others, join them
        barrier.abort()
        pool.shutdown(wait=True)
        raise
    return pool


class Fetcher:
    """Owns the download threads and the byte budget of one consumer's epoch."""

    def __init__(self, storage: Storage, options: StreamOptions, max_readers: int) -> None:
        self.storage = storage
        self.options = options
        self.max_readers = max_readers
        self.charged = 0
        self._pool: ThreadPoolExecutor | None = None
        self._readers: list[ShardReader] = []
        # open readers short of their read-ahead for want of budget (or opened with a limit):
        # the only ones, besides the reader moving on, that a pump can give more
        self._hungry: set[ShardReader] = set()
        self._spare: list[bytearray] = []

    def lend(self) -> bytearray:
        """A piece buffer of ``chunk_size`` bytes: a consumed one if any, else a new one.

        Only the consumer's thread lends and takes back, so every piece buffer comes from its
        allocator arena and is reused there. Pieces allocated by the download threads themselves
        spread over one glibc arena per thread, each keeping freed pieces of its own (about 15
        MB more resident per DataLoader worker with the defaults).
        """
        return self._spare.pop() if self._spare else bytearray(self.options.chunk_size)

    def take_back(self, buffers: list[bytearray]) -> None:
        """Buffers no thread writes to and nothing views any more, for :meth:`lend`."""
        self._spare.extend(buffers)
        buffers.clear()

    def open(self, info: ObjectInfo, start: int = 0) -> ShardReader:
        """A reader of ``info`` from byte ``start``; its first piece is requested at once, the
        rest of its read-ahead at the next :meth:`pump`.

        Pieces of one stream are read one after the other, so a second piece queued right
        behind the first would hold a thread idle through the first one's request. Opening
        several shards and then pumping queues every first piece before any second one: with
        18 shards opened at the start of an epoch, 8 threads send 8 requests at once, not 4.
        """
        reader = ShardReader(self, info, start)
        self._readers.append(reader)
        reader.top_up(limit=1)
        return reader

    def submit(self, reader: ShardReader) -> Future[_Piece]:
        if self._pool is None:
            self._pool = _started_pool(self.options.max_workers)
        return self._pool.submit(reader._read_planned)

    def stream(self, info: ObjectInfo, start: int) -> ByteStream:
        opener = getattr(self.storage, "open_read", None)
        if opener is None:
            return _RangeStream(self.storage, info.name, start)
        stream: ByteStream = opener(info.name, start, etag=info.etag, max_resumes=self.options.max_resumes)
        return stream

    def can_charge(self, nbytes: int, asking: ShardReader) -> bool:
        """Whether ``asking`` may buffer ``nbytes`` more.

        A reader holding nothing may always fetch one chunk, so room is kept to bring every other
        reader, open or still to be opened, up to one chunk.
        """
        chunk = self.options.chunk_size
        reserve = sum(max(0, chunk - r.held) for r in self._readers if r is not asking)
        reserve += max(0, self.max_readers - len(self._readers)) * chunk
        return self.charged + nbytes + reserve <= self.options.buffer_bytes

    def pump(self, moved: ShardReader | None = None) -> None:
        """Request more ranges for open readers, oldest first, as the budget allows: for every
        one, or (once ``moved`` has moved to its next piece) for ``moved`` and the readers short
        of their read-ahead. The others are full, and only their own next move changes that."""
        hungry = self._hungry
        if moved is None:
            for reader in self._readers:
                reader.top_up()
        elif not hungry:
            moved.top_up()
        else:
            for reader in self._readers:
                if reader is moved or reader in hungry:
                    reader.top_up()

    def forget(self, reader: ShardReader) -> None:
        self._readers.remove(reader)
        self._hungry.discard(reader)

    def close(self) -> None:
        """Cancel pending downloads and join every thread."""
        for reader in list(self._readers):
            reader.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._spare.clear()


class ShardReader:
    """Sequential reads of one shard, fed by pieces of one stream requested ahead."""

    def __init__(self, fetcher: Fetcher, info: ObjectInfo, start: int) -> None:
        self.fetcher = fetcher
        self.info = info
        self._next_fetch = start
        # Pieces planned in order; a pool thread takes the next one under the lock, so futures
        # may complete with pieces in another order than they were submitted in.
        self._plan: collections.deque[tuple[int, int, bytearray]] = collections.deque()
        self._pending: collections.deque[tuple[int, Future[_Piece]]] = collections.deque()
        self._arrived: dict[int, tuple[bytearray, int]] = {}
        self._lock = threading.Lock()
        self._stream: ByteStream | None = None
        self._failed: BaseException | None = None  # what broke the stream, raised for every later piece
        # The piece being read: a view of its buffer's first ``got`` bytes. Buffers of pieces
        # read past wait in ``_retired`` until no view of them is in use (see ``read``).
        self._buf = _EMPTY
        self._owner: bytearray | None = None
        self._retired: list[bytearray] = []
        self._buf_start = start
        self._pos = 0
        self._closed = False
        self.held = 0  # bytes this reader has requested and not yet consumed
        verify = start == 0 and fetcher.options.verify_checksums
        self._crc: int | None = 0 if verify and info.crc32 is not None else None
        self._hash = hashlib.sha256() if verify and self._crc is None and info.sha256 is not None else None

    def _charge(self, n: int) -> None:
        self.held += n
        self.fetcher.charged += n

    def tell(self) -> int:
        """Absolute offset of the next byte :meth:`read` returns."""
        return self._buf_start + self._pos

    def top_up(self, limit: int | None = None) -> None:
        """Request pieces up to ``readahead`` (or ``limit``) pending, as the budget allows."""
        opts = self.fetcher.options
        size = self.info.size
        ahead = opts.readahead if limit is None else min(limit, opts.readahead)
        while self._short_of(ahead):
            n = min(opts.chunk_size, size - self._next_fetch)
            # A reader holding nothing may always fetch one piece, so every open shard progresses.
            if self.held and not self.fetcher.can_charge(n, self):
                break
            self._plan.append((self._next_fetch, n, self.fetcher.lend()))
            self._pending.append((n, self.fetcher.submit(self)))
            self._charge(n)
            self._next_fetch += n
        if self._short_of(opts.readahead):
            self.fetcher._hungry.add(self)
        else:
            self.fetcher._hungry.discard(self)

    def _short_of(self, ahead: int) -> bool:
        """Whether fewer than ``ahead`` pieces are requested and unread, with more to request."""
        return (
            not self._closed
            and self._next_fetch < self.info.size
            and len(self._pending) + len(self._arrived) < ahead
        )

    def _read_planned(self) -> _Piece:
        """Pool thread: read the next planned piece from the stream."""
        with self._lock:
            start, n, buf = self._plan.popleft()
            if self._closed:
                return start, n, buf, 0
            if self._failed is not None:  # the stream is broken: no new request for later pieces
                raise self._failed
            if self._stream is None:
                self._stream = self.fetcher.stream(self.info, start)
            view = memoryview(buf)[:n]
            try:
                got = _fill(self._stream, view)
            except BaseException as exc:
                self._failed = exc
                raise
            if self._crc is not None:  # pieces are read in order under the lock
                self._crc = crc32(view[:got], self._crc)  # releases the GIL
            return start, n, buf, got

    def _take(self, start: int) -> tuple[bytearray, int] | None:
        """The piece at ``start`` (its buffer and length), waiting for it; ``None`` if none is
        requested."""
        while start not in self._arrived:
            if not self._pending:
                return None
            submitted, fut = self._pending.popleft()
            try:
                # not necessarily the piece planned when this future was submitted: the size to
                # check is the one planned for the piece it read
                at, n, buf, got = fut.result()
            except BaseException:
                self._charge(-submitted)
                raise
            if got != n:
                self._charge(-submitted)
                raise ShardFormatError(
                    self.info.url,
                    at + got,
                    f"object ended after {at + got} bytes but was listed with "
                    f"{self.info.size} (changed since listing?)",
                )
            self._arrived[at] = (buf, got)
        return self._arrived.pop(start)

    def _next_chunk(self, viewed: bool = False) -> bool:
        """Move to the next piece. ``viewed``: views of the pieces read past are still in use,
        so their buffers wait in ``_retired``; otherwise they go back before more are lent."""
        self._charge(-len(self._buf))
        self._buf_start += len(self._buf)
        if self._owner is not None:
            self._retired.append(self._owner)
        self._buf, self._owner, self._pos = _EMPTY, None, 0
        if not viewed:
            self.fetcher.take_back(self._retired)
        if not self._pending and not self._arrived:
            self.top_up()
        piece = self._take(self._buf_start)
        if piece is None:
            return False
        self._owner, got = piece
        self._buf = memoryview(self._owner)[:got]
        if self._hash is not None:
            self._hash.update(self._buf)
        self.fetcher.pump(self)
        return True

    def finish(self) -> None:
        """Read to the end of the shard and check its CRC-32 (or SHA-256) against the index.

        Raises:
            ShardFormatError: If the content does not match the index.
        """
        if self._crc is None and self._hash is None:
            return
        while self._next_chunk():
            pass
        if self._crc is not None:
            with self._lock:
                crc, self._crc = self._crc, None
            if crc != self.info.crc32:
                raise ShardFormatError(
                    self.info.url,
                    self.info.size,
                    f"CRC-32 {crc} does not match the dataset index ({self.info.crc32})",
                )
            return
        assert self._hash is not None
        digest = self._hash.hexdigest()
        self._hash = None
        if digest != self.info.sha256:
            raise ShardFormatError(
                self.info.url,
                self.info.size,
                f"SHA-256 {digest} does not match the dataset index ({self.info.sha256})",
            )

    def window(self) -> tuple[memoryview, int]:
        """The piece being read and the position in it (the next piece once this one is read
        to its end)."""
        if self._pos == len(self._buf):
            self._next_chunk()
        return self._buf, self._pos

    def advance(self, n: int) -> None:
        """Consume ``n`` bytes of the current piece."""
        self._pos += n

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the shard."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end].tobytes()
            self._pos = end
            return out
        # the parts view pieces read past: their buffers go back only after the join
        parts = [self._buf[self._pos :]]
        need = n - len(parts[0])
        self._pos = len(self._buf)
        while need > 0 and self._next_chunk(viewed=True):
            take = min(need, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            need -= take
        out = b"".join(parts)
        del parts
        self.fetcher.take_back(self._retired)
        return out

    def skip(self, n: int) -> int:
        """Skip up to ``n`` bytes; returns how many were skipped."""
        done = 0
        while done < n:
            avail = len(self._buf) - self._pos
            if avail == 0:
                if not self._next_chunk():
                    break
                continue
            take = min(avail, n - done)
            self._pos += take
            done += take
        return done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for n, fut in self._pending:
            fut.cancel()
            self._charge(-n)
        self._pending.clear()
        for _, got in self._arrived.values():
            self._charge(-got)
        self._retired.extend(buf for buf, _ in self._arrived.values())
        self._arrived.clear()
        self._charge(-len(self._buf))
        if self._owner is not None:
            self._retired.append(self._owner)
        self._buf, self._owner = _EMPTY, None
        self.fetcher.take_back(self._retired)
        with self._lock:  # waits for a piece being read; later ones see _closed
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        self.fetcher.forget(self)
