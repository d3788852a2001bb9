"""Batches cross from workers to the main process through shared-memory rings, unchanged."""

from __future__ import annotations

import glob
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset, StreamOptions, transfer
from tests.resume_harness import check_resume, reference

NUM, PER_SHARD, BATCH = 60, 10, 4


def payload(i: int) -> bytes:
    return bytes([i % 251]) * (2000 + 37 * i)  # 2-4 KB: large enough for the ring


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big")
    with ShardWriter(path, maxcount=PER_SHARD) as w:
        for i in range(NUM):
            w.write({"__key__": f"s{i:04d}", "bin": payload(i), "txt": f"t{i}"})
    return path


def rings() -> list[str]:
    return glob.glob("/dev/shm/swds-ring-*")


def batches(root: Path, **kw: Any) -> list[dict[str, Any]]:
    ds = StreamingWebDataset(root, shuffle=True, seed=3, options=StreamOptions(interleave=2))
    return list(StreamingDataLoader(ds, batch_size=BATCH, **kw))


def check(got: list[dict[str, Any]]) -> None:
    keys = [k for b in got for k in b["__key__"]]
    assert sorted(keys) == [f"s{i:04d}" for i in range(NUM)]
    for b in got:
        for key, data in zip(b["__key__"], b["bin"], strict=True):
            assert type(data) is bytes and data == payload(int(key[1:]))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_batches_equal_in_process_batches(root: Path, context: str) -> None:
    before = rings()
    ref = batches(root, num_workers=0)
    check(ref)
    got = batches(root, num_workers=2, multiprocessing_context=context)
    by_key = {k: (d, t) for b in got for k, d, t in zip(b["__key__"], b["bin"], b["txt"], strict=True)}
    assert by_key == {
        k: (d, t) for b in ref for k, d, t in zip(b["__key__"], b["bin"], b["txt"], strict=True)
    }
    check(got)
    assert rings() == before  # every ring file was unlinked


def _ring_mappings() -> list[int]:
    """Sizes of this process's mappings of ring files, from ``/proc/self/maps``."""
    sizes = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "/swds-ring-" in line:
                lo, hi = line.split()[0].split("-")
                sizes.append(int(hi, 16) - int(lo, 16))
    return sizes


def test_the_main_process_maps_only_each_rings_header(root: Path) -> None:
    """The main process reads ring data with pread(): the rings' pages count in the memory of
    the workers that write them, not a second time in the main process."""
    ds = StreamingWebDataset(root, shuffle=True, seed=3, options=StreamOptions(interleave=2))
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    it = iter(loader)
    got = [next(it) for _ in range(6)]
    assert all(type(b) is bytes for batch in got for b in batch["bin"])
    assert _ring_mappings() and all(size <= 4096 for size in _ring_mappings())
    del it, loader


def test_a_ring_too_small_for_a_batch_falls_back_to_the_pipe(root: Path) -> None:
    check(batches(root, num_workers=2, shared_memory_bytes=1000))


def test_rings_can_be_turned_off(root: Path) -> None:
    ds = StreamingWebDataset(root)
    check(list(StreamingDataLoader(ds, batch_size=BATCH, num_workers=1, shared_memory_bytes=0)))
    off = StreamingDataLoader(
        ds, batch_size=BATCH, num_workers=1, shared_memory_bytes=0, tensor_memory_bytes=0
    )
    assert not isinstance(off.collate_fn, transfer.PackingCollate)
    check(list(off))


def test_resume_with_rings_is_exact(root: Path) -> None:
    def make() -> StreamingDataLoader:
        ds = StreamingWebDataset(root, shuffle=True, seed=3, options=StreamOptions(interleave=2))
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=2, shared_memory_bytes=20_000)

    ref = reference(make)
    for cut in (0, 3, 8):
        check_resume(make, cut, ref)


def test_ring_space_is_reused_once_the_main_process_has_read_it() -> None:
    token = f"test-{os.getpid()}"
    blobs = [bytes([i]) * 3000 for i in range(3)]
    try:
        packed = transfer.pack({"b": blobs[:2], "k": ["a", "b"]}, token, capacity=8000)
        assert isinstance(packed["b"][0], transfer._RingRef)
        assert transfer.pack({"b": [blobs[2], blobs[2]]}, token, 8000) == {"b": [blobs[2], blobs[2]]}  # full
        wire = pickle.dumps(packed)
        assert len(wire) < 500  # only references cross the pipe
        assert pickle.loads(wire) == {"b": blobs[:2], "k": ["a", "b"]}
        again = transfer.pack({"b": [blobs[2], blobs[2]]}, token, 8000)  # space handed back: wraps
        assert isinstance(again["b"][0], transfer._RingRef)
        assert pickle.loads(pickle.dumps(again)) == {"b": [blobs[2], blobs[2]]}
    finally:
        transfer._rings.pop((token, os.getpid())).unlink()
        transfer.forget_rings(token)
    assert not glob.glob(f"/dev/shm/swds-ring-{token}-*")


def _drop_ring(token: str) -> None:
    """Remove this process's ring for ``token`` (a test's own) and its file."""
    transfer._rings.pop((token, os.getpid())).unlink()


def test_a_batch_straddling_the_end_of_the_ring_still_uses_it() -> None:
    """Each blob gets its own region: a batch of 6,000 bytes fits an 8,000-byte ring whose free
    space is the last 3,000 bytes plus the first 3,000 (no contiguous 6,000)."""
    token = f"test-wrap-{os.getpid()}"
    first = bytes([7]) * 5000
    blobs = [bytes([1]) * 3000, bytes([2]) * 3000]
    try:
        assert pickle.loads(pickle.dumps(transfer.pack({"b": [first]}, token, 8000))) == {"b": [first]}
        packed = transfer.pack({"b": blobs}, token, 8000)
        assert [(r.start % 8000, r.end - r.start) for r in packed["b"]] == [(5000, 3000), (0, 3000)]
        assert pickle.loads(pickle.dumps(packed)) == {"b": blobs}
    finally:
        _drop_ring(token)
        transfer.forget_rings(token)


def test_what_does_not_fit_crosses_the_pipe_and_the_rest_the_ring() -> None:
    token = f"test-part-{os.getpid()}"
    blobs = [bytes([i]) * 3000 for i in range(3)]
    try:
        packed = transfer.pack({"b": blobs, "n": [1, 2, 3]}, token, 8000)
        assert [type(b) for b in packed["b"]] == [transfer._RingRef, transfer._RingRef, bytes]
        wire = pickle.dumps(packed)
        assert 3000 < len(wire) < 3500  # only the third blob crosses the pipe
        assert pickle.loads(wire) == {"b": blobs, "n": [1, 2, 3]}
    finally:
        _drop_ring(token)
        transfer.forget_rings(token)


def test_the_same_bytes_object_twice_gets_two_regions() -> None:
    """The main process hands each region back as it reads it: two references to one region
    would read it after its space was handed back (and possibly overwritten)."""
    token = f"test-twice-{os.getpid()}"
    blob = bytes(range(256)) * 8
    try:
        packed = transfer.pack([blob, b"small", blob], token, 8000)
        assert [(r.start, r.end) for r in (packed[0], packed[2])] == [(0, 2048), (2048, 4096)]
        assert packed[1] == b"small"
        assert pickle.loads(pickle.dumps(packed)) == [blob, b"small", blob]
    finally:
        _drop_ring(token)
        transfer.forget_rings(token)


def test_containers_it_does_not_rebuild_are_left_whole_and_use_no_ring_space() -> None:
    import collections

    token = f"test-sub-{os.getpid()}"
    blob = bytes(5000)
    odd = collections.OrderedDict(b=blob)
    try:
        packed = transfer.pack({"plain": [blob], "odd": odd}, token, capacity=8000)
        assert isinstance(packed["plain"][0], transfer._RingRef)
        assert packed["odd"] is odd
        assert transfer._rings[(token, os.getpid())].head == len(blob)  # only the swapped blob
    finally:
        transfer._rings.pop((token, os.getpid())).unlink()


class _Pair(NamedTuple):
    data: bytes
    n: int


def test_packing_keeps_the_batch_structure_and_moves_blobs_of_plain_containers_only() -> None:
    """Dicts, lists and tuples are looked into (at any depth) and come back as the same types;
    other objects, named tuples included, are left as they are and pickled as usual."""
    token = f"test-shape-{os.getpid()}"
    big = [bytes([i]) * 1500 for i in range(4)]
    batch = {
        "a": [(big[0], b"tiny"), {"x": big[1], "n": 3}],
        "t": (big[2],),
        "pair": _Pair(big[3], 1),
        "s": ["k1", "k2"],
        "none": None,
    }
    try:
        packed = transfer.pack(batch, token, 8000)
        assert isinstance(packed["a"][0], tuple) and isinstance(packed["a"][0][0], transfer._RingRef)
        assert packed["a"][0][1] == b"tiny"
        assert isinstance(packed["a"][1]["x"], transfer._RingRef) and packed["a"][1]["n"] == 3
        assert isinstance(packed["t"], tuple) and isinstance(packed["t"][0], transfer._RingRef)
        assert packed["pair"] is batch["pair"]
        assert packed["s"] == ["k1", "k2"] and packed["none"] is None
        back = pickle.loads(pickle.dumps(packed))
        assert back == batch
        assert type(back["pair"]) is _Pair and type(back["a"][0]) is tuple
    finally:
        _drop_ring(token)
        transfer.forget_rings(token)
