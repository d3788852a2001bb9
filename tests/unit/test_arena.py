"""The tensor arena, worker and main ends in one process: what crosses equals ``default_collate``'s
batch, and a region is written again only once every view of it in the main process is gone."""

from __future__ import annotations

import gc
import glob
import multiprocessing
import os
import pickle
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing  # registers torch's reductions with ForkingPickler
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

from streaming_wds import arena, transfer
from streaming_wds.collate import arena_collate

MB = 1024 * 1024
_made = iter(range(10**9))


@pytest.fixture
def make_arena() -> Iterator[Any]:
    """Makes worker arenas for this test; closes and removes them afterwards."""
    tokens: list[str] = []

    def make(capacity: int) -> arena.WorkerArena:
        token = f"test-{os.getpid()}-{next(_made)}"
        tokens.append(token)
        made = arena.worker_arena(token, capacity)
        assert made is not None
        return made

    yield make
    for token in tokens:
        made = arena._arenas.pop((token, os.getpid()))
        if made is not None:
            made.unlink()
        arena.forget_arenas(token)
    assert not [p for t in tokens for p in glob.glob(f"/dev/shm/swds-arena-{t}-*")]


def send(samples: list[Any], worker: arena.WorkerArena) -> Any:
    """Collate in the 'worker', pickle as the DataLoader's queue does, unpickle in the 'main'."""
    wire = ForkingPickler.dumps(transfer.pack(arena_collate(samples, worker), "", 0, worker))
    return pickle.loads(wire)


def images(n: int, fill: int, shape: tuple[int, ...] = (30, 40, 3)) -> list[dict[str, Any]]:
    return [{"img": np.full(shape, (fill + i) % 256, np.uint8), "cls": fill + i} for i in range(n)]


def assert_same(got: Any, want: Any) -> None:
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    else:
        assert got == want


def test_a_batch_through_the_arena_equals_default_collate(make_arena: Any) -> None:
    worker = make_arena(8 * MB)
    samples = [
        {
            "img": np.arange(60, dtype=np.uint8).reshape(3, 4, 5) + i,
            "f": np.linspace(0, 1, 7, dtype=np.float32) * i,
            "mask": np.array([True, False, i % 2 == 0]),
            "t": torch.full((2, 3), i, dtype=torch.float64),
            "n": i,
            "x": i / 3,
            "s": f"k{i}",
            "nested": {"a": [np.int16(i), torch.tensor(i)], "b": (b"raw", i)},
        }
        for i in range(5)
    ]
    want = default_collate(samples)
    got = send(samples, worker)
    assert_same(got, want)
    # every tensor came through the arena: none is a torch shared-memory tensor
    for t in (got["img"], got["f"], got["mask"], got["t"], got["n"], got["x"], got["nested"]["a"][0]):
        assert not t.is_shared()


def test_only_refs_cross_the_pipe(make_arena: Any) -> None:
    worker = make_arena(8 * MB)
    batch = transfer.pack(arena_collate(images(32, 0), worker), "", 0, worker)
    assert isinstance(batch["img"], arena.TensorRef)
    assert isinstance(batch["cls"], transfer._InlineTensor)  # 256 bytes: by value
    assert len(ForkingPickler.dumps(batch)) < 1000  # against 32 * 3,600 bytes of pixels


_DTYPES = st.sampled_from(
    ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
)


@settings(max_examples=60, deadline=None)
@given(
    dtype=_DTYPES,
    shape=st.lists(st.integers(0, 5), max_size=3),
    n=st.integers(1, 6),
    as_tensor=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_dtype_and_shape_arrives_as_default_collate_makes_it(
    dtype: str, shape: list[int], n: int, as_tensor: bool, seed: int
) -> None:
    token = f"test-prop-{os.getpid()}"
    worker = arena.worker_arena(token, 4 * MB)
    assert worker is not None
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(rng.random(shape) * 100).astype(dtype) for _ in range(n)]
    samples = [{"v": torch.from_numpy(a) if as_tensor else a, "i": i} for i, a in enumerate(arrays)]
    try:
        assert_same(send(samples, worker), default_collate(samples))
    finally:
        arena._arenas.pop((token, os.getpid()))
        worker.unlink()
        arena.forget_arenas(token)


def test_small_stacks_take_no_region(make_arena: Any) -> None:
    """Fields small enough to travel by value are stacked in ordinary memory, not in a region
    the packer would only copy out of."""
    worker = make_arena(MB)
    samples = [{"v": np.full(5, i, np.float32), "t": torch.full((3,), i)} for i in range(4)]
    got = send(samples, worker)
    assert_same(got, default_collate(samples))
    assert not worker.regions


def test_a_region_is_reused_only_once_every_view_of_it_is_gone(make_arena: Any) -> None:
    worker = make_arena(8 * MB)
    first = send(images(8, 0), worker)["img"]
    slot = next(s for s, r in worker.regions.items() if r.start == 0)
    one_image = first[3]  # a view: keeps the region
    as_numpy = first.numpy()[5]
    del first
    gc.collect()
    second = send(images(8, 100), worker)["img"]
    assert worker.regions[slot].start == 0  # still taken...
    assert {r.start for r in worker.regions.values()} != {0}  # ...so the second batch went elsewhere
    assert int(one_image[0, 0, 0]) == 3 and int(as_numpy[0, 0, 0]) == 5
    del one_image
    gc.collect()
    assert int(as_numpy[0, 0, 0]) == 5
    send(images(8, 200), worker)
    assert slot in worker.regions and worker.regions[slot].start == 0  # the numpy view holds it
    del as_numpy
    gc.collect()
    third = send(images(8, 50), worker)["img"]
    assert int(third.data_ptr()) != int(second.data_ptr())
    assert min(r.start for r in worker.regions.values()) == 0  # region 0 went to the third batch
    assert int(second[0, 0, 0, 0]) == 100 and int(third[0, 0, 0, 0]) == 50


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), min_size=1, max_size=40))
def test_held_batches_are_never_overwritten(ops: list[tuple[bool, int]]) -> None:
    """Random batches made, kept or dropped: every kept batch keeps its values, and the arena's
    pages in use never exceed what the batches held at the peak need (first fit, low first)."""
    token = f"test-held-{os.getpid()}"
    worker = arena.worker_arena(token, 2 * MB)
    assert worker is not None
    kept: list[tuple[int, torch.Tensor]] = []
    peak = 0
    try:
        for i, (keep, drop) in enumerate(ops):
            if kept and drop < len(kept):
                kept.pop(drop)
                gc.collect()
            batch = send(images(4, i * 4, (50, 50, 3)), worker)
            if keep:
                kept.append((i * 4, batch["img"]))
            del batch
            peak = max(peak, len(kept))
            for fill, img in kept:
                for j in range(4):
                    assert int(img[j].min()) == int(img[j].max()) == (fill + j) % 256
            size = 4 * 50 * 50 * 3 // arena.PAGE * arena.PAGE + arena.PAGE  # one batch's region
            labels = arena.PAGE  # the labels' region
            assert max(r.end for r in worker.regions.values()) <= (peak + 1) * (size + labels)
    finally:
        del kept
        gc.collect()
        arena._arenas.pop((token, os.getpid()))
        worker.unlink()
        arena.forget_arenas(token)


def test_a_full_arena_falls_back_to_torch_and_the_values_are_the_same(make_arena: Any) -> None:
    worker = make_arena(200 * 1024)  # room for five 36 KB batches of images (and their labels)
    packed = [transfer.pack(arena_collate(images(10, 10 * i), worker), "", 0, worker) for i in range(8)]
    via_arena = [isinstance(b["img"], arena.TensorRef) for b in packed]
    assert via_arena == [True] * 5 + [False] * 3  # nothing was handed back: all held
    held = [pickle.loads(pickle.dumps(b)) for b in packed]  # (plain pickle: no fd passing here)
    for i, b in enumerate(held):
        assert_same(b, default_collate(images(10, 10 * i)))


def test_the_same_tensor_twice_is_one_region_and_one_tensor(make_arena: Any) -> None:
    worker = make_arena(MB)
    big, small = torch.arange(10_000), torch.arange(6)
    batch = {"a": big, "b": [big], "c": small, "d": (small,)}
    got = pickle.loads(ForkingPickler.dumps(transfer.pack(batch, "", 0, worker)))
    assert got["a"] is got["b"][0] and torch.equal(got["a"], big)
    assert got["c"] is got["d"][0] and torch.equal(got["c"], small)
    assert len(worker.regions) == 1  # the small one travelled by value


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor([True, False, True]),
        torch.tensor(7),
        torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
        torch.arange(5, dtype=torch.float16),
        torch.tensor([1 + 2j, 3 - 1j]),
        torch.empty(0, 3, dtype=torch.int32),
        torch.full((2048,), -1, dtype=torch.int64),  # 16 KiB exactly
    ],
)
def test_small_tensors_travel_by_value(make_arena: Any, t: torch.Tensor) -> None:
    worker = make_arena(MB)
    packed = transfer.pack({"t": t}, "", 0, worker)
    assert isinstance(packed["t"], transfer._InlineTensor) and not worker.regions
    got = pickle.loads(pickle.dumps(packed))["t"]
    assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
    got.zero_()  # its own writable memory
    bigger = transfer.pack({"t": torch.zeros(2049, dtype=torch.int64)}, "", 0, worker)["t"]
    assert isinstance(bigger, arena.TensorRef)


def test_views_and_shared_tensors_are_left_to_torch(make_arena: Any) -> None:
    worker = make_arena(MB)
    base = torch.arange(12)
    view, shared = base[2:5], torch.ones(3).share_memory_()
    grad = torch.ones(2, requires_grad=True)
    packed = transfer.pack({"view": view, "shared": shared, "grad": grad}, "", 0, worker)
    assert packed["view"] is view and packed["shared"] is shared and packed["grad"] is grad
    assert not worker.regions


def test_tensors_outlive_the_arena_and_dropping_them_later_is_harmless(make_arena: Any) -> None:
    worker = make_arena(MB)
    token = worker.path.rsplit("-", 1)[0].removeprefix("/dev/shm/swds-arena-")
    img = send(images(8, 7), worker)["img"]
    arena.forget_arenas(token)  # the iterator is gone: the main process closes its end
    assert int(img[1, 0, 0, 0]) == 8
    del img
    gc.collect()


def _drop_in_child(conn: Any) -> None:
    global _inherited
    del _inherited
    gc.collect()
    conn.send("dropped")


_inherited: Any = None


def test_a_forked_child_dropping_an_inherited_tensor_does_not_release_it(make_arena: Any) -> None:
    global _inherited
    worker = make_arena(MB)
    _inherited = send(images(8, 9), worker)["img"]
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_drop_in_child, args=(child,))
    proc.start()
    assert parent.recv() == "dropped"
    proc.join()
    worker._reclaim()
    assert any(r.sent for r in worker.regions.values())  # still taken: the parent holds it
    _inherited = None
    gc.collect()
    worker._reclaim()
    assert not worker.regions


def test_no_room_for_pages_means_no_arena_use_not_a_crash(
    make_arena: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    worker = make_arena(8 * MB)
    packed = transfer.pack(arena_collate(images(8, 1), worker), "", 0, worker)
    assert type(packed["img"]) is torch.Tensor
    assert_same(pickle.loads(pickle.dumps(packed)), default_collate(images(8, 1)))
    assert not worker.regions and worker.capacity == 0
    warned = [r for r in caplog.records if r.name == "streaming_wds.arena"]
    assert len(warned) == 1 and "No space left on device" in warned[0].getMessage()
    assert "/dev/shm too small" in warned[0].getMessage()


def test_outside_a_worker_the_packing_collate_is_the_plain_collate() -> None:
    collate = transfer.PackingCollate(default_collate, 1000, arena_capacity=MB)
    collate.token = f"test-main-{os.getpid()}"
    batch = collate(images(3, 0))
    assert batch["img"].is_shared() is False and (collate.token, os.getpid()) not in arena._arenas
