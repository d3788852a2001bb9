"""Bounded read-ahead: ranged reads of open shards on a thread pool, within a byte budget.

A :class:`Fetcher` belongs to one epoch of one consumer. Every :class:`ShardReader` it opens
reads its shard sequentially in ``chunk_size`` ranges and keeps up to ``readahead`` ranges
requested ahead. All bookkeeping happens on the consumer's thread; pool threads only run
``Storage.read_range``, and their exceptions travel back through the futures. What the output
contains never depends on which download finishes first.
"""

from __future__ import annotations

import collections
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor

from .config import StreamOptions
from .errors import ShardFormatError
from .storage.base import ObjectInfo, Storage


class Fetcher:
    """Owns the download threads and the byte budget of one consumer's epoch."""

    def __init__(self, storage: Storage, options: StreamOptions, max_readers: int) -> None:
        self.storage = storage
        self.options = options
        self.max_readers = max_readers
        self.charged = 0
        self._pool: ThreadPoolExecutor | None = None
        self._readers: list[ShardReader] = []

    def open(self, info: ObjectInfo, start: int = 0) -> ShardReader:
        """A reader of ``info`` from byte ``start``; its first ranges are requested at once."""
        reader = ShardReader(self, info, start)
        self._readers.append(reader)
        reader.top_up()
        return reader

    def submit(self, name: str, start: int, stop: int) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.max_workers, thread_name_prefix="swds-fetch")
        return self._pool.submit(self.storage.read_range, name, start, stop)

    def can_charge(self, nbytes: int, asking: ShardReader) -> bool:
        """Whether ``asking`` may buffer ``nbytes`` more.

        A reader holding nothing may always fetch one chunk, so room is kept to bring every other
        reader, open or still to be opened, up to one chunk.
        """
        chunk = self.options.chunk_size
        reserve = sum(max(0, chunk - r.held) for r in self._readers if r is not asking)
        reserve += max(0, self.max_readers - len(self._readers)) * chunk
        return self.charged + nbytes + reserve <= self.options.buffer_bytes

    def pump(self) -> None:
        """Request more ranges for every open reader, oldest first, as the budget allows."""
        for reader in self._readers:
            reader.top_up()

    def forget(self, reader: ShardReader) -> None:
        self._readers.remove(reader)

    def close(self) -> None:
        """Cancel pending downloads and join every thread."""
        for reader in list(self._readers):
            reader.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ShardReader:
    """Sequential reads of one shard, fed by ranged downloads requested ahead."""

    def __init__(self, fetcher: Fetcher, info: ObjectInfo, start: int) -> None:
        self.fetcher = fetcher
        self.info = info
        self._next_fetch = start
        self._pending: collections.deque[tuple[int, int, Future[bytes]]] = collections.deque()
        self._buf = b""
        self._buf_start = start
        self._pos = 0
        self._closed = False
        self.held = 0  # bytes this reader has requested and not yet consumed
        verify = start == 0 and info.sha256 is not None and fetcher.options.verify_checksums
        self._hash = hashlib.sha256() if verify else None

    def _charge(self, n: int) -> None:
        self.held += n
        self.fetcher.charged += n

    def tell(self) -> int:
        """Absolute offset of the next byte :meth:`read` returns."""
        return self._buf_start + self._pos

    def top_up(self) -> None:
        opts = self.fetcher.options
        size = self.info.size
        while not self._closed and self._next_fetch < size and len(self._pending) < opts.readahead:
            n = min(opts.chunk_size, size - self._next_fetch)
            # A reader holding nothing may always fetch one range, so every open shard progresses.
            if self.held and not self.fetcher.can_charge(n, self):
                break
            fut = self.fetcher.submit(self.info.name, self._next_fetch, self._next_fetch + n)
            self._pending.append((self._next_fetch, n, fut))
            self._charge(n)
            self._next_fetch += n

    def _next_chunk(self) -> bool:
        self._charge(-len(self._buf))
        self._buf_start += len(self._buf)
        self._buf, self._pos = b"", 0
        if not self._pending:
            self.top_up()
            if not self._pending:
                return False
        start, n, fut = self._pending.popleft()
        try:
            data = fut.result()
        except BaseException:
            self._charge(-n)
            raise
        if len(data) != n:
            self._charge(-n)
            raise ShardFormatError(
                self.info.url,
                start + len(data),
                f"object ended after {start + len(data)} bytes but was listed with "
                f"{self.info.size} (changed since listing?)",
            )
        self._buf, self._buf_start = data, start
        if self._hash is not None:
            self._hash.update(data)
        self.fetcher.pump()
        return True

    def finish(self) -> None:
        """Read to the end of the shard and check its SHA-256 against the index, if known.

        Raises:
            ShardFormatError: If the content does not match the index.
        """
        if self._hash is None:
            return
        while self._next_chunk():
            pass
        digest = self._hash.hexdigest()
        self._hash = None
        if digest != self.info.sha256:
            raise ShardFormatError(
                self.info.url,
                self.info.size,
                f"SHA-256 {digest} does not match the dataset index ({self.info.sha256})",
            )

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the shard."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            return out
        parts = [self._buf[self._pos :]]
        need = n - len(parts[0])
        self._pos = len(self._buf)
        while need > 0 and self._next_chunk():
            take = min(need, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            need -= take
        return b"".join(parts)

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
        for _, n, fut in self._pending:
            fut.cancel()
            self._charge(-n)
        self._pending.clear()
        self._charge(-len(self._buf))
        self._buf = b""
        self.fetcher.forget(self)
