"""Exhaustive in-process resume: a checkpoint after every single sample resumes exactly."""

from __future__ import annotations

import json
import tarfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds import (
    CheckpointError,
    MemoryStorage,
    ShardFormatError,
    StreamingWebDataset,
    StreamOptions,
)
from tests.helpers import all_keys, memory_dataset


def _ds(store: MemoryStorage, **kw: Any) -> StreamingWebDataset:
    kw.setdefault("options", StreamOptions(interleave=3, shuffle_block=4, chunk_size=700, readahead=2))
    return StreamingWebDataset(store, schema={"cls": "int", "json": "json"}, seed=5, **kw)


def _keys(it: Any) -> list[str]:
    return [s["__key__"] for s in it]


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_after_every_sample(shuffle: bool) -> None:
    store = memory_dataset(37, 5)  # 8 shards, the last one short
    full = _keys(_ds(store, shuffle=shuffle))
    assert sorted(full) == all_keys(37)
    for cut in range(len(full) + 1):
        ds = _ds(store, shuffle=shuffle)
        it = iter(ds)
        before = [next(it)["__key__"] for _ in range(cut)]
        state = json.loads(json.dumps(ds.state_dict()))
        it.close()
        resumed = _ds(store, shuffle=shuffle)
        resumed.load_state_dict(state)
        assert before + _keys(resumed) == full, f"cut at {cut}"


@settings(max_examples=40, deadline=None)
@given(
    num=st.integers(1, 60),
    per_shard=st.integers(1, 9),
    interleave=st.integers(1, 5),
    block=st.integers(1, 6),
    seed=st.integers(0, 3),
    data=st.data(),
)
def test_resume_property(num: int, per_shard: int, interleave: int, block: int, seed: int, data: Any) -> None:
    store = memory_dataset(num, per_shard)
    opts = StreamOptions(interleave=interleave, shuffle_block=block, chunk_size=512, readahead=1)

    def make() -> StreamingWebDataset:
        return StreamingWebDataset(store, shuffle=True, seed=seed, options=opts)

    full = _keys(make())
    assert sorted(full) == all_keys(num)
    cut = data.draw(st.integers(0, num))
    ds = make()
    it = iter(ds)
    before = [next(it)["__key__"] for _ in range(cut)]
    state = ds.state_dict()
    it.close()
    resumed = make()
    resumed.load_state_dict(state)
    assert before + _keys(resumed) == full


def test_same_order_every_run_and_new_order_each_epoch() -> None:
    store = memory_dataset(100, 5)
    a, b = _ds(store, shuffle=True), _ds(store, shuffle=True)
    epochs_a = [_keys(a) for _ in range(3)]
    epochs_b = [_keys(b) for _ in range(3)]
    assert epochs_a == epochs_b
    assert len({tuple(e) for e in epochs_a}) == 3
    assert all(sorted(e) == all_keys(100) for e in epochs_a)


def test_without_shuffle_order_is_listing_order() -> None:
    store = memory_dataset(23, 4)
    assert _keys(_ds(store)) == all_keys(23)


def test_resume_skips_consumed_samples_without_decoding() -> None:
    store = memory_dataset(40, 5)
    calls: list[bytes] = []

    def counting(data: bytes) -> int:
        calls.append(data)
        return int(data)

    def make() -> StreamingWebDataset:
        return StreamingWebDataset(store, schema={"cls": counting}, shuffle=True, seed=1)

    ds = make()
    it = iter(ds)
    for _ in range(25):
        next(it)
    state = ds.state_dict()
    it.close()
    calls.clear()
    reads_before = store.reads
    resumed = make()
    resumed.load_state_dict(state)
    assert len(_keys(resumed)) == 15
    assert len(calls) == 15, "only the remaining samples are decoded"
    assert store.reads - reads_before <= 8, "consumed shards are not downloaded again"


def test_checkpoint_for_other_data_or_seed_is_rejected() -> None:
    store = memory_dataset(20, 5)
    ds = _ds(store, shuffle=True)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    it.close()

    other_seed = StreamingWebDataset(store, shuffle=True, seed=6, options=ds.options)
    other_seed.load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"seed: checkpoint has 5, this run has 6"):
        iter(other_seed)

    bigger = memory_dataset(25, 5)
    other_data = _ds(bigger, shuffle=True)
    other_data.load_state_dict(state)
    with pytest.raises(CheckpointError, match="fingerprint"):
        iter(other_data)

    other_world = _ds(store, shuffle=True, rank=1, world_size=2)
    other_world.load_state_dict(state)
    with pytest.raises(CheckpointError, match="world_size: checkpoint has 1, this run has 2"):
        iter(other_world)


def test_malformed_or_future_checkpoints_are_rejected() -> None:
    ds = _ds(memory_dataset(5, 5))
    with pytest.raises(CheckpointError, match="version 2 is not supported"):
        ds.load_state_dict({**ds.state_dict(), "version": 2})
    with pytest.raises(CheckpointError, match="malformed"):
        ds.load_state_dict({**ds.state_dict(), "picks": "many"})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        ds.load_state_dict([1, 2])  # type: ignore[arg-type]


def _corrupt(store: MemoryStorage, name: str, at: int) -> None:
    data = bytearray(store.objects[name])
    data[at : at + 8] = b"XXXXXXXX"  # inside a header: checksum mismatch
    store.objects[name] = bytes(data)


def _header_offsets(data: bytes) -> list[int]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.offset for m in tf.getmembers()]


def test_corrupt_shard_raises_after_its_good_samples() -> None:
    store = memory_dataset(20, 5)
    offsets = _header_offsets(store.objects["shard-000001.tar"])
    bad_at = offsets[3 * 3]  # the header of the 4th sample (3 members per sample)
    _corrupt(store, "shard-000001.tar", bad_at)
    ds = _ds(store)
    got = []
    with pytest.raises(ShardFormatError) as info:
        for s in ds:
            got.append(s["__key__"])
    # s000007's end cannot be confirmed (the header after it is corrupt): it is not handed out
    assert got == all_keys(7)
    assert info.value.offset == bad_at
    assert str(info.value) == (
        f"memory://mem/shard-000001.tar at byte {bad_at}: "
        "tar header checksum mismatch (corrupt or not a tar file)"
    )


@pytest.mark.parametrize("shuffle", [False, True])
def test_skip_policy_counts_a_corrupt_shard_once_and_resumes_exactly(shuffle: bool) -> None:
    store = memory_dataset(30, 5)
    offsets = _header_offsets(store.objects["shard-000002.tar"])
    _corrupt(store, "shard-000002.tar", offsets[2 * 3])  # header of s000012: s000010 survives
    full_ds = _ds(store, shuffle=shuffle, on_error="skip")
    full = _keys(full_ds)
    assert full_ds.error_counts == {"shard_format": 1}
    assert sorted(full) == sorted(set(all_keys(30)) - {"s000011", "s000012", "s000013", "s000014"})
    for cut in range(len(full) + 1):
        ds = _ds(store, shuffle=shuffle, on_error="skip")
        it = iter(ds)
        before = [next(it)["__key__"] for _ in range(cut)]
        state = ds.state_dict()
        it.close()
        resumed = _ds(store, shuffle=shuffle, on_error="skip")
        resumed.load_state_dict(state)
        assert before + _keys(resumed) == full
        assert resumed.error_counts == {"shard_format": 1}, f"cut {cut}"
