"""Batches cross from workers to the main process through shared-memory rings, unchanged."""

from __future__ import annotations

import glob
import os
import pickle
from pathlib import Path
from typing import Any

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


def test_a_ring_too_small_for_a_batch_falls_back_to_the_pipe(root: Path) -> None:
    check(batches(root, num_workers=2, shared_memory_bytes=1000))


def test_rings_can_be_turned_off(root: Path) -> None:
    ds = StreamingWebDataset(root)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=1, shared_memory_bytes=0)
    assert not isinstance(loader.collate_fn, transfer.PackingCollate)
    check(list(loader))


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
