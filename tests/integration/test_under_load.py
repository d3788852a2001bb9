"""Under load: read-ahead stays within its byte budget, and nothing leaks across epochs.

* A slow consumer lets downloads run ahead: the bytes the fetcher has charged (requested and not
  yet consumed) never exceed the bound documented on :class:`~streaming_wds.StreamOptions`,
  ``max(buffer_bytes, (interleave + prefetch) * chunk_size)``, and all of them are released when
  the epoch ends. Every value the counter takes is watched, not a sample of them.
* Python heap peaks (``tracemalloc``) follow the budget, not the shard size or the dataset size.
* Over many epochs, and over abandoned epochs, heap, threads, file descriptors, sockets and the
  shared-memory rings of DataLoader workers return to their baseline.
"""

from __future__ import annotations

import collections
import gc
import os
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streaming_wds import (
    MemoryStorage,
    S3Options,
    ShardWriter,
    Storage,
    StreamingDataLoader,
    StreamingWebDataset,
    StreamOptions,
)
from streaming_wds.fetch import Fetcher
from tests.helpers import Server, moto_s3_server, ring_files, settle

KiB, MiB = 1024, 1024 * 1024


def _payload(i: int, size: int) -> bytes:
    return i.to_bytes(4, "little") * (size // 4)


def _write(output: str | Path | Storage, num: int, per_shard: int, size: int, **kw: Any) -> None:
    with ShardWriter(output, maxcount=per_shard, **kw) as w:
        for i in range(num):
            w.write({"__key__": f"s{i:06d}", "cls": i % 10, "bin": _payload(i, size)})


def _keys(num: int) -> list[str]:
    return [f"s{i:06d}" for i in range(num)]


def _bound(o: StreamOptions) -> int:
    """The documented bound on downloaded-but-unparsed bytes per worker."""
    return max(o.buffer_bytes, (o.interleave + o.prefetch) * o.chunk_size)


# -- watching the fetcher's byte budget -------------------------------------------------------


@dataclass
class Charges:
    """Every value ``Fetcher.charged`` took, per fetcher (in creation order)."""

    peak: list[int]
    low: list[int]
    last: list[int]


@pytest.fixture
def charges(monkeypatch: pytest.MonkeyPatch) -> Charges:
    """Replaces ``Fetcher.charged`` by a property that records every assignment."""
    seen = Charges([], [], [])
    slot: dict[int, int] = {}  # id(fetcher) -> index in seen

    def get(self: Fetcher) -> int:
        value: int = self.__dict__["_charged_watched"]
        return value

    def put(self: Fetcher, value: int) -> None:
        self.__dict__["_charged_watched"] = value
        i = slot.get(id(self))
        if i is None or "_charged_seen" not in self.__dict__:
            self.__dict__["_charged_seen"] = True  # a new fetcher (ids are reused)
            i = slot[id(self)] = len(seen.peak)
            seen.peak.append(value)
            seen.low.append(value)
            seen.last.append(value)
        seen.peak[i] = max(seen.peak[i], value)
        seen.low[i] = min(seen.low[i], value)
        seen.last[i] = value

    monkeypatch.setattr(Fetcher, "charged", property(get, put), raising=False)
    return seen


# -- 1a: a slow consumer ------------------------------------------------------------------------

PAYLOAD, PER_SHARD, SHARDS = 32 * KiB, 32, 12  # shards of about 1.1 MB, 13 MB in all
NUM = PER_SHARD * SHARDS
BINDS = StreamOptions(
    interleave=4, prefetch=2, shuffle_block=4, chunk_size=64 * KiB, readahead=16, buffer_bytes=2 * MiB
)
FLOOR = StreamOptions(  # buffer_bytes below one chunk per open shard: the chunk floor is the bound
    interleave=4, prefetch=2, shuffle_block=4, chunk_size=64 * KiB, readahead=16, buffer_bytes=128 * KiB
)
SLOW_SAMPLES, SLOW_SECONDS = 96, 0.002


@pytest.fixture(scope="module")
def slow_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow")
    _write(root, NUM, PER_SHARD, PAYLOAD)
    return root


@pytest.fixture(scope="module")
def slow_memory() -> MemoryStorage:
    store = MemoryStorage(name="slow")
    _write(store, NUM, PER_SHARD, PAYLOAD)
    return store


def _consume_slowly(ds: StreamingWebDataset, traced: bool) -> tuple[list[str], int]:
    """Every key of one epoch, sleeping after each of the first samples; and the heap peak."""
    keys: list[str] = []
    if traced:
        tracemalloc.start()
    try:
        for n, sample in enumerate(ds):
            keys.append(sample["__key__"])
            assert sample["bin"] == _payload(int(sample["__key__"][1:]), PAYLOAD)
            del sample
            if n < SLOW_SAMPLES:
                time.sleep(SLOW_SECONDS)  # downloads run ahead of the consumer
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()
    return keys, peak


def _check_budget(seen: Charges, opts: StreamOptions) -> None:
    assert len(seen.peak) == 1, "one fetcher per epoch"
    bound = _bound(opts)
    assert seen.peak[0] <= bound, f"charged {seen.peak[0]} bytes, over the bound of {bound}"
    assert seen.low[0] >= 0, f"charged went negative ({seen.low[0]})"
    assert seen.last[0] == 0, f"{seen.last[0]} bytes still charged after the epoch ended"
    if opts.buffer_bytes >= (opts.interleave + opts.prefetch) * opts.chunk_size:
        assert seen.peak[0] >= opts.buffer_bytes * 3 // 4, "the slow consumer never filled the budget"
    else:  # every open shard holds its one chunk at once
        assert seen.peak[0] > opts.buffer_bytes


@pytest.mark.parametrize("opts", [BINDS, FLOOR], ids=["budget", "chunk-floor"])
@pytest.mark.parametrize("store", ["memory", "local"])
def test_slow_consumer_stays_within_budget(
    store: str, opts: StreamOptions, charges: Charges, slow_local: Path, slow_memory: MemoryStorage
) -> None:
    remote: Path | MemoryStorage = slow_local if store == "local" else slow_memory
    ds = StreamingWebDataset(remote, shuffle=True, seed=1, options=opts)
    _ = ds.shards  # list before tracing
    keys, peak = _consume_slowly(ds, traced=True)
    assert sorted(keys) == _keys(NUM)
    _check_budget(charges, opts)
    # The heap holds the budget, the parsed blocks (interleave x shuffle_block samples) and a few
    # pieces being copied (measured: 2.8 MiB with the budget, 1.2 MiB at the chunk floor);
    # reading everything ahead would hold the whole 13 MB dataset.
    parsed = opts.interleave * opts.shuffle_block * PAYLOAD
    limit = _bound(opts) + 2 * parsed + MiB
    assert peak < limit, f"heap peak {peak / MiB:.1f} MiB, over {limit / MiB:.1f} MiB"


def test_slow_consumer_stays_within_budget_on_s3(charges: Charges) -> None:
    import boto3
    from moto import mock_aws

    s3 = S3Options(region="us-east-1")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="slow")
        _write("s3://slow/ds", NUM // 2, PER_SHARD, PAYLOAD, s3=s3)
        ds = StreamingWebDataset("s3://slow/ds", shuffle=True, seed=1, options=BINDS, s3=s3)
        keys, _ = _consume_slowly(ds, traced=False)  # moto copies whole objects: no heap bound
        ds.storage.client.close()  # type: ignore[attr-defined]
    assert sorted(keys) == _keys(NUM // 2)
    _check_budget(charges, BINDS)


# -- 1b: the heap does not grow with the shard size ---------------------------------------------

MEMBER = MiB
LARGE_OPTS = StreamOptions(
    interleave=2, prefetch=1, shuffle_block=2, chunk_size=256 * KiB, readahead=32, buffer_bytes=4 * MiB
)


def _large_peak(root: Path, num: int, charges: Charges) -> int:
    ds = StreamingWebDataset(root, shuffle=True, seed=2, options=LARGE_OPTS)
    _ = ds.shards
    tracemalloc.start()
    try:
        n = 0
        for sample in ds:
            assert len(sample["bin"]) == MEMBER
            n += 1
            del sample
            time.sleep(0.002)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == num
    assert max(charges.peak) <= _bound(LARGE_OPTS)
    return peak


def test_heap_does_not_grow_with_shard_size(tmp_path: Path, charges: Charges) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    _write(small, 20, 10, MEMBER)  # 2 shards of 10 MB
    _write(large, 80, 40, MEMBER)  # 2 shards of 40 MB
    peak_small = _large_peak(small, 20, charges)
    peak_large = _large_peak(large, 80, charges)
    assert peak_large < 1.25 * peak_small + MiB, (
        f"heap peak {peak_large / MiB:.1f} MiB with 40 MB shards, {peak_small / MiB:.1f} MiB with 10 MB"
    )
    # budget 4 MiB + parsed blocks 2 x 2 samples of 1 MiB + copies: 10.9 MiB measured for both
    assert peak_large < 16 * MiB, f"heap peak {peak_large / MiB:.1f} MiB reading 40 MB shards"


# -- resources of the process --------------------------------------------------------------------


def _fd_kinds() -> collections.Counter[str]:
    """Open file descriptors by target, inode numbers dropped (``pipe:``, ``socket:``, paths)."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        target = re.sub(r"\[\d+\]$", "", target)  # pipe:[123] -> pipe:
        kinds[re.sub(r"^/dev/shm/(swds-ring-|swds-arena-|torch_).*", r"/dev/shm/\1*", target)] += 1
    return kinds


def _ring_maps() -> int:
    """Ring files of this process's loaders still mapped into this process."""
    mark = f"swds-ring-{os.getpid()}-"
    with open("/proc/self/maps") as f:
        return sum(mark in line for line in f)


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[str]
    fds: collections.Counter[str]
    rings: tuple[str, ...]
    ring_maps: int

    @staticmethod
    def take() -> Snapshot:
        gc.collect()
        return Snapshot(frozenset(t.name for t in _threads()), _fd_kinds(), tuple(ring_files()), _ring_maps())

    def diff(self, base: Snapshot) -> str:
        return (
            f"threads +{sorted(self.threads - base.threads)}, "
            f"fds +{dict(self.fds - base.fds)} -{dict(base.fds - self.fds)}, "
            f"rings {list(self.rings)}, ring mappings {self.ring_maps} (baseline {base.ring_maps})"
        )


def _same(ref: Snapshot) -> Callable[[], bool]:
    def check() -> bool:
        now = Snapshot.take()
        return (
            now.threads == ref.threads
            and now.fds == ref.fds
            and now.rings == ()
            and now.ring_maps == ref.ring_maps
        )

    return check


def _assert_back_to(ref: Snapshot, what: str) -> None:
    if not settle(_same(ref)):
        raise AssertionError(f"{what}: {Snapshot.take().diff(ref)}")


def _settled(base: Snapshot, num_workers: int) -> Snapshot:
    """What a loader holds once an epoch is over: nothing without workers; with workers, what
    torch's finished iterator keeps until the next epoch (pipes, process sentinels) and the
    worker rings mapped for the batches of the epoch just ended."""
    if num_workers == 0:
        _assert_back_to(base, "after the first epoch")
        return base
    time.sleep(0.2)  # let the exited workers' pipes and feeder threads close
    now = Snapshot.take()
    assert now.threads == base.threads, now.diff(base)
    assert now.rings == (), now.diff(base)
    assert now.ring_maps <= base.ring_maps + num_workers, now.diff(base)
    return now


def _heap() -> int:
    """Bytes traced now, less torch's cache of tensors received from workers (``SharedCache``:
    weak references, swept when it passes 128 entries)."""
    gc.collect()
    ignore = [
        tracemalloc.Filter(False, "*/torch/multiprocessing/reductions.py"),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]
    snap = tracemalloc.take_snapshot().filter_traces(ignore)
    return sum(stat.size for stat in snap.statistics("filename"))


# -- 1c: many epochs -----------------------------------------------------------------------------

EPOCHS, SMALL, SMALL_PER_SHARD, BATCH = 10, 96, 12, 8
SMALL_OPTS = StreamOptions(interleave=3, shuffle_block=4, prefetch=1, max_workers=2, chunk_size=16 * KiB)


@pytest.fixture(scope="module")
def small_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    _write(root, SMALL, SMALL_PER_SHARD, 2 * KiB)  # 2 KiB fields: batches cross through the rings
    return root


def _untraced(worker_id: int) -> None:
    tracemalloc.stop()  # forked workers inherit tracing, which slows them down for nothing here


def _loader(remote: Any, num_workers: int, **kw: Any) -> StreamingDataLoader:
    ds = StreamingWebDataset(remote, schema={"cls": "int"}, shuffle=True, seed=7, options=SMALL_OPTS, **kw)
    ctx: dict[str, Any] = {}
    if num_workers:
        ctx = {"multiprocessing_context": "fork", "worker_init_fn": _untraced}
    return StreamingDataLoader(ds, batch_size=BATCH, num_workers=num_workers, **ctx)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_many_epochs_leak_nothing(small_local: Path, num_workers: int) -> None:
    base = Snapshot.take()
    loader = _loader(small_local, num_workers)
    orders: set[int] = set()  # hashes only: the test itself must not grow the heap
    held: list[int] = []  # heap at the end of each epoch
    transient: list[int] = []  # peak above the start, per epoch
    tracemalloc.start()
    try:
        for epoch in range(EPOCHS):
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            keys = [k for b in loader for k in b["__key__"]]
            transient.append(tracemalloc.get_traced_memory()[1] - start)
            assert sorted(keys) == _keys(SMALL)
            orders.add(hash(tuple(keys)))
            del keys
            held.append(_heap())
            if epoch == 0:
                after_one = _settled(base, num_workers)
            else:
                _assert_back_to(after_one, f"after epoch {epoch}")
    finally:
        tracemalloc.stop()
    assert len(orders) == EPOCHS, "every epoch has its own order"
    # torch keeps about 1.5 KB a epoch of its own (tensor and profiler bookkeeping)
    growth = held[-1] - held[2]
    assert growth < 32 * KiB, f"heap grew by {growth} bytes from epoch 2 to {EPOCHS - 1}: {held}"
    assert max(transient[3:]) < max(transient[:3]) + 32 * KiB, f"per-epoch heap peaks grow: {transient}"

    del loader
    _assert_back_to(base, "after the loader is gone")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_abandoned_epochs_leak_nothing(small_local: Path, num_workers: int) -> None:
    """Break out of an epoch, run the next one to the end; again and again."""
    base = Snapshot.take()
    loader = _loader(small_local, num_workers)
    readers = SMALL_OPTS.interleave + SMALL_OPTS.prefetch
    for n in range(4):
        for i, _batch in enumerate(loader):
            if i == 2:
                break
        fetchers = {t for t in _threads() if t.name.startswith("swds-fetch")}
        open_shards = sum(n for target, n in _fd_kinds().items() if target.endswith(".tar"))
        if num_workers == 0:
            assert fetchers, "the abandoned epoch still reads ahead (its state is still wanted)"
            assert open_shards <= readers, f"{open_shards} shard files open, {readers} readers"
        it = iter(loader)  # the next epoch closes the abandoned one
        next(it)
        assert not any(t.is_alive() for t in fetchers), "the abandoned epoch's download threads run on"
        assert sorted(k for b in it for k in b["__key__"]) != []
        del it, _batch  # a batch's tensors hold shared memory of their own
        if n == 0:
            after_one = _settled(base, num_workers)
        else:
            _assert_back_to(after_one, f"after abandoned epoch {n}")

    del loader
    _assert_back_to(base, "after the loader is gone")


def test_reiterating_a_dataset_closes_the_abandoned_epoch(small_local: Path) -> None:
    base = Snapshot.take()
    ds = StreamingWebDataset(small_local, shuffle=True, options=SMALL_OPTS)
    for _ in range(3):
        it = iter(ds)
        next(it)
        del it  # the dataset keeps the stream for state_dict(); the next iter() closes it
    keys = [s["__key__"] for s in ds]
    assert sorted(keys) == _keys(SMALL)
    del ds
    _assert_back_to(base, "after the dataset is gone")


# -- S3: connections are reused or closed, never piled up ---------------------------------------

BUCKET = "swds-load"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with moto_s3_server(BUCKET) as srv:
        _write(f"s3://{BUCKET}/ds", SMALL, SMALL_PER_SHARD, 2 * KiB, s3=srv.s3)
        gc.collect()  # close the writer's connections before a test looks at threads
        yield srv


@pytest.mark.s3server
@pytest.mark.parametrize("num_workers", [0, 2])
def test_s3_sockets_do_not_pile_up(server: Server, num_workers: int) -> None:
    base = Snapshot.take()
    loader = _loader(f"s3://{BUCKET}/ds", num_workers, s3=server.s3)
    sockets: list[int] = []  # open after each epoch (client and server ends: moto runs in here)
    for epoch in range(6):
        assert sorted(k for b in loader for k in b["__key__"]) == _keys(SMALL)
        if epoch >= 2:  # the server's end of a closed connection closes a moment later
            settle(lambda: _fd_kinds()["socket:"] <= sockets[1])
        sockets.append(_fd_kinds()["socket:"])
    assert max(sockets[2:]) <= sockets[1], f"open sockets after each epoch: {sockets}"

    ds = loader.dataset
    del loader
    ds.storage.client.close()  # the main process's client (listing), so its sockets close now
    del ds
    if not settle(lambda: _fd_kinds()["socket:"] <= base.fds["socket:"]):
        raise AssertionError(f"sockets left open: {Snapshot.take().diff(base)}")


# -- fork while the main process reads ahead ------------------------------------------------------


class _HeldStream:
    """A shard stream whose reads after the first wait for ``store.release`` in the process that
    made the store; in a forked child they do not wait."""

    def __init__(self, store: _HeldStore, inner: Any) -> None:
        self.store, self.inner, self.reads = store, inner, 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        if self.reads > 1 and os.getpid() == self.store.parent:
            self.store.reading.set()
            self.store.release.wait(20)  # a download thread, stuck mid-read holding its reader's lock
        data: bytes = self.inner.read(n)
        return data

    def close(self) -> None:
        self.inner.close()


class _HeldStore(MemoryStorage):
    def __init__(self) -> None:
        super().__init__(name="held")
        self.parent = os.getpid()
        self.reading = threading.Event()
        self.release = threading.Event()

    def open_read(self, name: str, start: int, etag: str | None = None, max_resumes: int = 0) -> Any:
        return _HeldStream(self, super().open_read(name, start, etag, max_resumes))


def test_fork_workers_ignore_a_stream_read_ahead_in_the_parent() -> None:
    """Peek at a dataset in the main process, then train on it with fork workers: the workers
    inherit the main process's epoch, downloads in flight and locks held, and must neither wait
    for those threads (which do not exist in the child) nor touch their streams."""
    store = _HeldStore()
    _write(store, 40, 10, 2 * KiB)
    opts = StreamOptions(
        interleave=1, prefetch=1, shuffle_block=1, chunk_size=16 * KiB, readahead=2, max_workers=4
    )
    ds = StreamingWebDataset(store, options=opts)
    it = iter(ds)
    try:
        assert next(it)["__key__"] == "s000000"  # from the first piece; the second is held
        assert store.reading.wait(10)
        loader = StreamingDataLoader(
            ds, batch_size=10, num_workers=1, multiprocessing_context="fork", timeout=3
        )
        keys = [k for b in loader for k in b["__key__"]]
        assert keys == _keys(40)
    finally:
        store.release.set()
        it.close()  # the main process's epoch: its download threads are joined
