"""Background uploads of closed shards: bounded in flight, every result kept, failures raised."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .index import ShardEntry, entry_of
from .storage import Storage


class Uploader:
    """Uploads shards on a small thread pool, at most ``max_in_flight`` at a time.

    ``submit`` blocks while ``max_in_flight`` uploads are running, which bounds the memory held
    by closed shards. Results are kept in submission order; :meth:`wait` returns them or raises
    the first failure once every upload has ended.
    """

    def __init__(self, storage: Storage, max_in_flight: int) -> None:
        self.storage = storage
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="swds-upload")
        self._futures: list[Future[ShardEntry]] = []

    def _upload(self, name: str, data: bytes, samples: int) -> ShardEntry:
        try:
            entry = entry_of(name, samples, data)
            self.storage.put(name, data)
            return entry
        finally:
            self._slots.release()

    def submit(self, name: str, data: bytes, samples: int) -> None:
        """Start uploading ``data`` as ``name``; waits for a free slot first."""
        self._slots.acquire()
        try:
            self._futures.append(self._pool.submit(self._upload, name, data, samples))
        except BaseException:
            self._slots.release()
            raise

    def first_failure(self) -> BaseException | None:
        """The exception of the earliest failed upload that has ended, if any."""
        for fut in self._futures:
            if fut.done() and fut.exception() is not None:
                return fut.exception()
        return None

    def wait(self) -> list[ShardEntry]:
        """Wait for every upload; their entries in order, or raise the first failure."""
        for fut in self._futures:
            fut.exception()  # wait for all before raising any
        failure = self.first_failure()
        if failure is not None:
            raise failure
        return [fut.result() for fut in self._futures]

    def close(self) -> None:
        """Wait for running uploads and join the threads."""
        self._pool.shutdown(wait=True)
