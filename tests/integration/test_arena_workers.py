"""Tensors cross from real worker processes through their arenas: equal to an in-process run,
never overwritten while the main process holds them, and exact on resume."""

from __future__ import annotations

import gc
import glob
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset, StreamOptions
from tests.resume_harness import check_resume, reference

NUM, PER_SHARD, BATCH = 60, 10, 4
SHAPE = (48, 64, 3)  # 36 KB a batch: over the 16 KiB sent by value
BATCH_BYTES = BATCH * int(np.prod(SHAPE))


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def image(i: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE) * 7 + i * 13).astype(np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arrays")
    with ShardWriter(path, maxcount=PER_SHARD) as w:
        for i in range(NUM):
            w.write(
                {
                    "__key__": f"s{i:04d}",
                    "img.npy": npy(image(i)),
                    "vec.npy": npy(np.full(5, i / 4, np.float32)),
                    "cls": str(i),
                }
            )
    return path


def make(root: Path, **kw: Any) -> StreamingDataLoader:
    ds = StreamingWebDataset(
        root,
        shuffle=True,
        seed=5,
        schema={"img.npy": "npy", "vec.npy": "npy", "cls": "int"},
        options=StreamOptions(interleave=2),
    )
    return StreamingDataLoader(ds, batch_size=BATCH, **kw)


def arenas() -> list[str]:
    return glob.glob("/dev/shm/swds-arena-*")


def by_key(batches: list[dict[str, Any]]) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    return {
        k: (img, vec, int(c))
        for b in batches
        for k, img, vec, c in zip(b["__key__"], b["img.npy"], b["vec.npy"], b["cls"], strict=True)
    }


def check(batches: list[dict[str, Any]]) -> None:
    got = by_key(batches)
    assert sorted(got) == [f"s{i:04d}" for i in range(NUM)]
    for key, (img, vec, c) in got.items():
        i = int(key[1:])
        assert img.dtype == torch.uint8 and torch.equal(img, torch.from_numpy(image(i)))
        assert vec.dtype == torch.float32 and torch.equal(vec, torch.full((5,), i / 4))
        assert c == i


def via_arena(batch: dict[str, Any]) -> bool:
    """Whether the batch's images came through an arena (tensors from an arena view a mapping of
    it; torch's own arrive in its shared memory; small ones by value are not shared either)."""
    return not batch["img.npy"].is_shared()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_tensors_equal_in_process_ones_and_come_through_the_arena(root: Path, context: str) -> None:
    before = arenas()
    ref = list(make(root, num_workers=0))
    check(ref)
    got = list(make(root, num_workers=2, multiprocessing_context=context))
    check(got)
    assert not any(b[f].is_shared() for b in got for f in ("img.npy", "vec.npy", "cls"))
    for b in got:
        assert b["img.npy"].shape == (len(b["__key__"]), *SHAPE) and b["cls"].dtype == torch.int64
    del got
    gc.collect()
    assert arenas() == before  # every arena file was removed


def test_held_batches_stay_intact_while_the_workers_go_on(root: Path) -> None:
    """An arena of three batches: every third batch is kept to the end, the others dropped at
    once. Dropped ones hand their regions back (later batches still use the arena); kept ones
    are never written over; when kept ones fill it, batches go torch's way."""
    loader = make(root, num_workers=2, tensor_memory_bytes=3 * BATCH_BYTES)
    kept, ways = [], []
    for i, batch in enumerate(loader):
        ways.append(via_arena(batch))
        if i % 3 == 0:
            kept.append(batch)
        del batch
    assert len(ways) == 16  # each worker reads 30 samples: 7 batches of 4 and one of 2
    assert ways.count(True) > len(ways) // 2 and ways.count(False) > 0
    for b in kept:  # compared at the end: after every later batch was written
        for key, img in zip(b["__key__"], b["img.npy"], strict=True):
            assert torch.equal(img, torch.from_numpy(image(int(key[1:]))))


def test_every_batch_kept_with_a_small_arena_is_still_correct(root: Path) -> None:
    batches = list(make(root, num_workers=2, tensor_memory_bytes=2 * BATCH_BYTES))
    check(batches)
    assert 0 < sum(map(via_arena, batches)) < len(batches)


def test_resume_with_arenas_is_exact(root: Path) -> None:
    def make_loader() -> StreamingDataLoader:
        return make(root, num_workers=2, tensor_memory_bytes=4 * BATCH_BYTES)

    ref = reference(make_loader)
    for cut in (0, 4, "end"):
        check_resume(make_loader, cut, ref)


def _own_collate(samples: list[Any]) -> Any:
    return default_collate(samples)


@pytest.mark.parametrize(
    ("kw", "arena"),
    [
        ({"collate_fn": default_collate}, True),
        ({"collate_fn": _own_collate}, False),  # the user's own function: left alone
        ({"tensor_memory_bytes": 0}, False),
        ({"tensor_memory_bytes": 0, "shared_memory_bytes": 0}, False),
    ],
)
def test_which_loaders_use_arenas(root: Path, kw: dict[str, Any], arena: bool) -> None:
    batches = list(make(root, num_workers=1, **kw))
    check(batches)
    assert {via_arena(b) for b in batches} == {arena}


def test_persistent_workers_keep_their_arenas_across_epochs(root: Path) -> None:
    """Two batches of the first epoch are kept; the second epoch, each batch dropped once seen,
    reuses the regions the others gave back and never the kept batches' regions."""
    before = arenas()
    # six batches per worker: two kept at most, two queued, one being built, one in hand
    loader = make(root, num_workers=2, persistent_workers=True, tensor_memory_bytes=6 * BATCH_BYTES)
    first = list(loader)
    check(first)
    kept = first[:2]
    assert all(map(via_arena, kept))
    del first
    gc.collect()
    ways, keys = [], []
    for batch in loader:
        ways.append(via_arena(batch))
        for key, img in zip(batch["__key__"], batch["img.npy"], strict=True):
            assert torch.equal(img, torch.from_numpy(image(int(key[1:]))))
            keys.append(key)
        del batch
    assert sorted(keys) == [f"s{i:04d}" for i in range(NUM)]
    assert all(ways)  # room again after the first epoch's batches went: all through the arenas
    for b in kept:
        for key, img in zip(b["__key__"], b["img.npy"], strict=True):
            assert torch.equal(img, torch.from_numpy(image(int(key[1:]))))
    del loader, kept
    gc.collect()
    assert arenas() == before


# -- images decoded straight into the batch (streaming_wds.staging) ------------------------------

JPEG_NUM = 48


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(3)
    with ShardWriter(path, maxcount=8) as w:
        for i in range(JPEG_NUM):
            pixels = rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG", quality=85)
            w.write({"__key__": f"j{i:04d}", "jpg": buf.getvalue(), "cls": str(i)})
    return path


def jpeg_batches(root: Path, schema: Any, **kw: Any) -> dict[str, torch.Tensor]:
    ds = StreamingWebDataset(
        root, shuffle=True, seed=2, schema={"jpg": schema, "cls": "int"}, options=StreamOptions(interleave=2)
    )
    out: dict[str, torch.Tensor] = {}
    kept = []
    for i, b in enumerate(StreamingDataLoader(ds, batch_size=BATCH, **kw)):
        if i % 3 == 0:
            kept.append(b)  # held to the end: later batches must not be written over them
        else:
            out.update(zip(b["__key__"], b["jpg"], strict=True))
    for b in kept:
        out.update(zip(b["__key__"], b["jpg"], strict=True))
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("draft", [None, (26, 18)])
def test_images_decoded_into_their_batch_equal_in_process_ones(
    jpeg_root: Path, context: str, draft: tuple[int, int] | None
) -> None:
    from streaming_wds import ImageDecoder

    schema = ImageDecoder("rgb8", draft=draft) if draft else "rgb8"
    want = jpeg_batches(jpeg_root, schema, num_workers=0)
    assert sorted(want) == [f"j{i:04d}" for i in range(JPEG_NUM)]
    for kw in ({}, {"tensor_memory_bytes": 3 * BATCH * 36 * 52 * 3}):  # roomy; three batches
        got = jpeg_batches(jpeg_root, schema, num_workers=2, multiprocessing_context=context, **kw)
        assert sorted(got) == sorted(want)
        for key, img in want.items():
            assert got[key].dtype == torch.uint8 and torch.equal(got[key], img), key


def test_resume_with_staged_images_is_exact(jpeg_root: Path) -> None:
    def make_loader() -> StreamingDataLoader:
        ds = StreamingWebDataset(
            jpeg_root, shuffle=True, seed=4, schema={"jpg": "rgb8"}, options=StreamOptions(interleave=2)
        )
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=2, persistent_workers=True)

    ref = reference(make_loader)
    for cut in (0, 3, "end"):
        check_resume(make_loader, cut, ref)
