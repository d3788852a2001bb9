"""Images decoded into the slots of an arena tensor: a batch of exactly those images is that
tensor (no copy) and equals ``default_collate``'s; anything else is copied as before; a slot
outlives nothing it must not."""

from __future__ import annotations

import gc
import os
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing  # registers torch's reductions with ForkingPickler
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

from streaming_wds import ImageDecoder, arena, staging, transfer
from streaming_wds.collate import arena_collate
from streaming_wds.decoders import DECODERS, _open_rgb

from .test_arena import assert_same
from .test_jpeg import encoded, photo

MB = 1024 * 1024
B = 4
_made = iter(range(10**9))


@contextmanager
def active_stager(capacity: int, batch_size: int) -> Iterator[staging.Stager]:
    """An active stager over a fresh arena of ``capacity`` bytes, as a worker's collate function
    makes it; both are gone afterwards (no other test decodes into it)."""
    token = f"test-stage-{os.getpid()}-{next(_made)}"
    worker = arena.worker_arena(token, capacity)
    assert worker is not None
    try:
        yield staging.activate(worker, batch_size)
    finally:
        staging._active = None
        gc.collect()
        arena._arenas.pop((token, os.getpid()))
        worker.unlink()
        arena.forget_arenas(token)


@pytest.fixture
def stager() -> Iterator[staging.Stager]:
    with active_stager(16 * MB, B) as made:
        yield made


JPEGS = [encoded(photo(40, 30, seed), "420", 90) for seed in range(12)]


def pillow(data: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
    return np.asarray(_open_rgb(data, draft, None))


def samples(decode: Any, first: int, n: int = B) -> list[dict[str, Any]]:
    return [{"jpg": decode(JPEGS[i % len(JPEGS)]), "cls": i} for i in range(first, first + n)]


def reference(rows: list[dict[str, Any]]) -> Any:
    with warnings.catch_warnings():  # default_collate warns about read-only arrays
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return default_collate(rows)


def send(batch: Any, worker: arena.WorkerArena) -> Any:
    """Pack as the worker does, pickle as the DataLoader's queue does, unpickle in the 'main'."""
    return pickle.loads(ForkingPickler.dumps(transfer.pack(batch, "", 0, worker)))


def test_a_batch_of_staged_images_is_their_tensor_and_equals_default_collate(
    stager: staging.Stager,
) -> None:
    decode = ImageDecoder("rgb8")
    rows = samples(decode, 0)
    assert all(not r["jpg"].flags.writeable for r in rows)
    batch = arena_collate(rows, stager.arena, stager)
    img = batch["jpg"]
    assert img.shape == (B, 30, 40, 3) and img.dtype == torch.uint8
    base = img.data_ptr()
    assert [r["jpg"].ctypes.data for r in rows] == [base + i * 30 * 40 * 3 for i in range(B)]
    assert_same(batch, reference(rows))
    for i, r in enumerate(rows):
        assert np.array_equal(r["jpg"], pillow(JPEGS[i]))
    stager.reset()
    got = send(batch, stager.arena)
    assert isinstance(got["jpg"], torch.Tensor) and torch.equal(got["jpg"], img)


def test_drafts_and_the_named_decoder_stage_too(stager: staging.Stager) -> None:
    for decode, draft in ((ImageDecoder("rgb8", draft=(20, 15)), (20, 15)), (DECODERS["rgb8"], None)):
        rows = samples(decode, 0)
        batch = arena_collate(rows, stager.arena, stager)
        assert batch["jpg"].data_ptr() == rows[0]["jpg"].ctypes.data
        assert np.array_equal(batch["jpg"].numpy(), np.stack([pillow(JPEGS[i], draft) for i in range(B)]))
        stager.reset()


@pytest.mark.parametrize(
    "spoil",
    [
        "partial",  # the epoch's last batch
        "skipped",  # a sample dropped after its image was decoded
        "replaced",  # a transform put another array in its place
        "reordered",
        "two_fields",  # one decoder for two image fields
        "not_jpeg",  # one image Pillow decoded
    ],
)
def test_anything_but_exactly_the_staged_images_is_copied_and_equals_default_collate(
    stager: staging.Stager, spoil: str
) -> None:
    decode = ImageDecoder("rgb8")
    rows = samples(decode, 0, B - 1 if spoil == "partial" else B)  # the block's slots, or fewer
    if spoil == "skipped":  # the batch goes on with a sample decoded elsewhere
        del rows[1]
        rows.append({"jpg": ImageDecoder("rgb8", fast_jpeg=False)(JPEGS[5]), "cls": 5})
    elif spoil == "replaced":
        rows[2]["jpg"] = rows[2]["jpg"].copy()
    elif spoil == "reordered":
        rows[1], rows[2] = rows[2], rows[1]
    elif spoil == "two_fields":
        stager.reset()
        rows = [{"jpg": decode(JPEGS[i]), "png": decode(JPEGS[i + 1])} for i in range(B)]
    elif spoil == "not_jpeg":
        import io

        from PIL import Image

        stager.reset()
        buf = io.BytesIO()
        Image.fromarray(pillow(JPEGS[0])).save(buf, "PNG")
        rows = samples(decode, 0, B - 1)
        rows.append({"jpg": decode(buf.getvalue()), "cls": 9})
    staged = {r["jpg"].ctypes.data for r in rows}
    batch = arena_collate(rows, stager.arena, stager)
    assert batch["jpg"].data_ptr() not in staged  # a copy
    assert_same(batch, reference(rows))
    stager.reset()


def test_a_decoder_whose_images_are_never_claimed_stops_staging(stager: staging.Stager) -> None:
    decode = ImageDecoder("rgb8")
    for _ in range(staging.MISSES):
        rows = samples(decode, 0, B - 1)  # partial batches only
        assert stager.arena.regions
        arena_collate(rows, stager.arena, stager)
        stager.reset()
    assert stager.slot(decode, (30, 40, 3)) is None
    rows = samples(decode, 0)
    batch = arena_collate(rows, stager.arena, stager)
    assert_same(batch, reference(rows))  # decoded to ordinary memory, collated by copying


def test_without_room_in_the_arena_images_decode_to_ordinary_memory() -> None:
    with active_stager(64 * 1024, 32) as small:  # less than a batch of 32 40x30 images
        assert small.slot(object(), (30, 40, 3)) is None
        decode = ImageDecoder("rgb8")
        rows = [{"jpg": decode(JPEGS[i % len(JPEGS)])} for i in range(32)]
        assert all(np.array_equal(r["jpg"], pillow(JPEGS[i % len(JPEGS)])) for i, r in enumerate(rows))
        assert not small.arena.regions


def test_only_rgb8_is_staged_and_only_in_a_process_that_activated_it(stager: staging.Stager) -> None:
    for output in ("torchrgb8", "torchrgb", "pil"):
        ImageDecoder(output)(JPEGS[0])
    assert not stager.arena.regions
    staging._active = None
    arr = ImageDecoder("rgb8")(JPEGS[0])
    assert not stager.arena.regions and np.array_equal(arr, pillow(JPEGS[0]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 5)), min_size=1, max_size=25))
def test_staged_images_and_batches_held_anywhere_keep_their_pixels(
    ops: list[tuple[bool, bool, int]],
) -> None:
    """Batches collated from staged images, sent or not; some batches and some of the decoded
    arrays kept (by the 'main process' and by 'user code' in the worker), others dropped: every
    kept one keeps its pixels while the arena's regions are reused."""
    decode = ImageDecoder("rgb8")
    kept: list[tuple[int, Any]] = []
    with active_stager(4 * MB, B) as stager:
        worker = stager.arena
        try:
            for i, (keep_batch, keep_image, drop) in enumerate(ops):
                if kept and drop < len(kept):
                    kept.pop(drop)
                    gc.collect()
                rows = samples(decode, i)
                batch = send(arena_collate(rows, worker, stager), worker)
                stager.reset()
                if keep_batch:
                    kept.append((i, batch["jpg"]))
                if keep_image:
                    kept.append((i + 1, rows[1]["jpg"][None]))
                del batch, rows
                for first, imgs in kept:
                    for j in range(len(imgs)):
                        assert np.array_equal(np.asarray(imgs[j]), pillow(JPEGS[(first + j) % len(JPEGS)]))
        finally:
            kept.clear()
