"""Streamed read-ahead: pieces of one stream per shard, in order whatever thread reads them."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds import MemoryStorage, StorageError, StreamingWebDataset, StreamOptions
from streaming_wds.fetch import Fetcher
from streaming_wds.storage.base import ObjectInfo
from tests.helpers import all_keys, memory_dataset


class RangeOnlyStorage:
    """A store written before ``open_read`` existed: ranged reads only."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.ranges: list[tuple[str, int, int]] = []

    @property
    def location(self) -> str:
        return self.inner.location

    def list(self, suffix: str) -> list[ObjectInfo]:
        return self.inner.list(suffix)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        self.ranges.append((name, start, stop))
        return self.inner.read_range(name, start, stop)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)

    def url(self, name: str) -> str:
        return self.inner.url(name)


def test_a_store_without_open_read_is_read_by_ranges() -> None:
    store = RangeOnlyStorage(memory_dataset(20, 5))
    opts = StreamOptions(chunk_size=1000, interleave=2, shuffle_block=2)
    got = [s["__key__"] for s in StreamingWebDataset(store, shuffle=True, options=opts)]
    assert sorted(got) == all_keys(20)
    shard0 = [(a, b) for n, a, b in store.ranges if n == "shard-000000.tar"]
    size = len(store.inner.objects["shard-000000.tar"])
    assert shard0 == [(a, min(a + 1000, size)) for a in range(0, size, 1000)]


class JitteryStorage(MemoryStorage):
    """Streams whose reads take random time, so read-ahead futures finish in any order."""

    def open_read(self, name: str, start: int, **kw: Any) -> Any:
        inner = super().open_read(name, start, **kw)
        rng = random.Random(start)
        lock = threading.Lock()

        class Slow:
            def read(self, n: int) -> bytes:
                with lock:
                    delay = rng.random() / 500
                time.sleep(delay)  # the reader's lock is held: later pieces queue up behind it
                return inner.read(n)

            def close(self) -> None:
                inner.close()

        return Slow()


@pytest.mark.parametrize("chunk", [512, 700, 333])  # 700, 333: the last piece is shorter
def test_pieces_come_back_in_order_whichever_thread_reads_them(chunk: int) -> None:
    """A future may read another piece than the one planned when it was submitted (the short
    last one, say): sizes are checked against the piece actually read."""
    base = memory_dataset(30, 10)
    store = JitteryStorage(base.objects)
    opts = StreamOptions(chunk_size=chunk, readahead=4, max_workers=8, interleave=3, shuffle_block=3)
    fetcher = Fetcher(store, opts, max_readers=1)
    info = store.list(".tar")[0]
    reader = fetcher.open(info)
    try:
        got = b""
        while piece := reader.read(300):
            got += piece
    finally:
        fetcher.close()
    assert got == store.objects[info.name]
    assert fetcher.charged == 0
    shuffled = [s["__key__"] for s in StreamingWebDataset(store, shuffle=True, seed=3, options=opts)]
    assert shuffled == [s["__key__"] for s in StreamingWebDataset(base, shuffle=True, seed=3, options=opts)]


class FailingStream(MemoryStorage):
    def open_read(self, name: str, start: int, **kw: Any) -> Any:
        class Broken:
            def read(self, n: int) -> bytes:
                raise StorageError(f"cannot read memory://mem/{name}: connection reset")

            def close(self) -> None:
                pass

        return Broken()


def test_a_stream_error_reaches_the_consumer_and_threads_are_joined() -> None:
    store = FailingStream(memory_dataset(4, 2).objects)
    with pytest.raises(StorageError, match="connection reset"):
        list(StreamingWebDataset(store))
    assert not [t for t in threading.enumerate() if t.name.startswith("swds-fetch")]


def _record_requests(fetcher: Fetcher) -> list[tuple[str, int]]:
    """(shard name, offset) of every piece ``fetcher`` requests from now on, in order."""
    order: list[tuple[str, int]] = []
    submit = fetcher.submit

    def recording(reader: Any) -> Any:
        order.append((reader.info.name, reader._plan[-1][0]))
        return submit(reader)

    fetcher.submit = recording  # type: ignore[method-assign]
    return order


def test_every_first_piece_is_requested_before_any_second() -> None:
    """Pieces of one stream are read one after another: a second piece queued right behind the
    first would keep a thread waiting through the first one's request. Opening shards queues
    one piece each; the rest of the read-ahead comes with the next pump."""
    store = memory_dataset(30, 10)
    opts = StreamOptions(chunk_size=1000, readahead=2, max_workers=1)
    fetcher = Fetcher(store, opts, max_readers=3)
    order = _record_requests(fetcher)
    try:
        infos = store.list(".tar")
        for info in infos:
            fetcher.open(info)
        assert order == [(info.name, 0) for info in infos]
        fetcher.pump()
        assert order[3:] == [(info.name, 1000) for info in infos]
    finally:
        fetcher.close()


def test_budget_freed_by_one_reader_goes_to_the_readers_waiting_for_it_and_to_no_other() -> None:
    """A reader short of its read-ahead for want of budget gets its next piece as soon as another
    reader moves on and frees some; a reader already holding its read-ahead asks for nothing."""
    objects = {
        "a.tar": bytes(range(256)) * 8,  # 2 pieces of 1024
        "b.tar": bytes(range(256)) * 16,  # 4 pieces
        "c.tar": bytes(range(256)) * 16,
    }
    store = MemoryStorage(objects)
    opts = StreamOptions(chunk_size=1024, readahead=2, max_workers=1, buffer_bytes=5 * 1024)
    fetcher = Fetcher(store, opts, max_readers=3)
    order = _record_requests(fetcher)
    try:
        readers = [fetcher.open(info) for info in sorted(store.list(".tar"), key=lambda i: i.name)]
        a = readers[0]
        fetcher.pump()
        # a: both its pieces; b: its second; c: its first only (5 pieces of budget)
        assert order == [("a.tar", 0), ("b.tar", 0), ("c.tar", 0), ("a.tar", 1024), ("b.tar", 1024)]
        assert a.read(1024) == objects["a.tar"][:1024]
        assert order[5:] == []  # a has nothing left to request and no one moved on yet
        assert a.read(1) == objects["a.tar"][1024:1025]  # a moves on: a piece of budget is free
        assert order[5:] == [("c.tar", 1024)]  # c, short of its read-ahead, gets it; b is full
    finally:
        fetcher.close()


def test_a_resumed_epoch_requests_every_shard_before_waiting_for_a_block() -> None:
    """Resuming reopens each slot's shard at its block; all of them are requested before the
    first block is read, not one shard's request after another."""
    store = memory_dataset(40, 5)
    opts = StreamOptions(chunk_size=1000, interleave=4, shuffle_block=2, prefetch=0)
    ds = StreamingWebDataset(store, shuffle=True, seed=1, options=opts)
    it = iter(ds)
    first = [next(it)["__key__"] for _ in range(9)]
    state = ds.state_dict()
    del it
    events: list[str] = []
    real_open = Fetcher.open

    def open_(self: Fetcher, info: ObjectInfo, start: int = 0) -> Any:
        events.append("open")
        reader = real_open(self, info, start)
        real_read = reader.read

        def read(n: int) -> bytes:
            events.append("read")
            return real_read(n)

        reader.read = read  # type: ignore[method-assign]
        return reader

    resumed = StreamingWebDataset(store, shuffle=True, seed=1, options=opts)
    resumed.load_state_dict(state)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Fetcher, "open", open_)
        rest = [s["__key__"] for s in resumed]
    assert events[:4] == ["open"] * 4 and events[4] == "read"
    assert sorted(first + rest) == all_keys(40)


class RecordingStorage(MemoryStorage):
    """Streams that fill the fetcher's buffers and record which buffer each read filled."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.buffers: dict[int, object] = {}  # id -> buffer, kept alive so no id is reused
        self.readintos = 0

    def open_read(self, name: str, start: int, **kw: Any) -> Any:
        inner = super().open_read(name, start, **kw)
        store = self

        class Recording:
            def read(self, n: int) -> bytes:
                raise AssertionError("the fetcher reads a stream that has readinto with readinto")

            def readinto(self, view: memoryview) -> int:
                store.buffers[id(view.obj)] = view.obj
                store.readintos += 1
                time.sleep(random.random() / 2000)  # pieces finish out of order
                got: int = inner.readinto(view)
                return got

            def close(self) -> None:
                inner.close()

        return Recording()


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    chunk=st.integers(1, 700),
    readahead=st.integers(1, 4),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 1500)), max_size=40),
)
def test_reused_piece_buffers_never_change_what_was_read(
    data: bytes, chunk: int, readahead: int, steps: list[tuple[bool, int]]
) -> None:
    """Reads and skips of any size, across any number of pieces, return exactly the shard's
    bytes, although consumed piece buffers are handed out again for later pieces (a read
    spanning pieces joins them before their buffers go back)."""
    store = RecordingStorage({"a.tar": data})
    opts = StreamOptions(chunk_size=chunk, readahead=readahead, max_workers=4, buffer_bytes=max(chunk, 4096))
    fetcher = Fetcher(store, opts, max_readers=1)
    reader = fetcher.open(store.list(".tar")[0])
    pos = 0
    spanned = 1  # most pieces one read has spanned
    try:
        drain = [(True, chunk)] * (-(-len(data) // chunk) + 1)  # then read to the end, a piece at a time
        for is_read, n in steps + drain:
            if is_read:
                if n and pos < len(data):
                    spanned = max(spanned, (min(len(data), pos + n) - 1) // chunk - pos // chunk + 1)
                assert reader.read(n) == data[pos : pos + n]
                pos = min(len(data), pos + n)
            else:
                skipped = reader.skip(n)
                assert skipped == min(n, len(data) - pos)
                pos += skipped
            assert reader.tell() == pos
        assert reader.read(1) == b""
    finally:
        fetcher.close()
    assert fetcher.charged == 0
    pieces = -(-len(data) // chunk)
    assert store.readintos == pieces
    # buffers in use at once: the pieces one read views until it joins them, the one it moved
    # on from, and the read-ahead
    assert len(store.buffers) <= min(pieces, spanned + 1 + readahead)


def test_skipping_many_pieces_reuses_their_buffers() -> None:
    """Skipping a member that spans many pieces (a field nobody reads) hands each piece's
    buffer back as it is passed, instead of holding all of them until the skip ends."""
    data = bytes(range(256)) * 200  # 50 pieces of 1 KiB
    store = RecordingStorage({"a.tar": data})
    opts = StreamOptions(chunk_size=1024, readahead=1, max_workers=2, buffer_bytes=8192)
    fetcher = Fetcher(store, opts, max_readers=1)
    reader = fetcher.open(store.list(".tar")[0])
    try:
        assert reader.read(10) == data[:10]
        assert reader.skip(len(data) - 20) == len(data) - 20
        assert reader.read(100) == data[-10:]
    finally:
        fetcher.close()
    assert store.readintos == 50
    assert len(store.buffers) <= 3  # the piece being read, the one read ahead, one going back


def test_every_download_thread_runs_before_the_first_request() -> None:
    """The pool's threads are started while none of them works: a thread started once others
    are busy building requests waits for the GIL (40-70 ms for 8 at the start of an epoch)."""
    running: list[int] = []

    class CountingStorage(MemoryStorage):
        def open_read(self, name: str, start: int, **kw: Any) -> Any:
            running.append(len([t for t in threading.enumerate() if t.name.startswith("swds-fetch")]))
            return super().open_read(name, start, **kw)

    store = CountingStorage(memory_dataset(30, 5).objects)
    opts = StreamOptions(max_workers=5, interleave=3, shuffle_block=2)
    got = [s["__key__"] for s in StreamingWebDataset(store, shuffle=True, options=opts)]
    assert sorted(got) == all_keys(30)
    assert running == [5] * 6  # one stream per shard, each opened with all 5 threads running


def test_a_download_thread_that_cannot_start_fails_the_epoch_and_the_others_are_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = 0
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        nonlocal started
        if self.name.startswith("swds-fetch"):
            started += 1
            if started == 3:
                raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        list(StreamingWebDataset(memory_dataset(10, 5), options=StreamOptions(max_workers=4)))
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name.startswith("swds-fetch")]
