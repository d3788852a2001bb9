"""Behaviour of StreamingWebDataset that users rely on."""

from __future__ import annotations

import os
import pickle
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import streaming_wds
from streaming_wds import (
    ConfigError,
    MemoryStorage,
    PlanningError,
    SampleError,
    StreamingDataLoader,
    StreamingWebDataset,
    StreamOptions,
)
from streaming_wds.epoch import EpochStream
from tests.helpers import all_keys, memory_dataset


def _fetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("swds-fetch")]


def test_samples_have_key_url_decoded_and_raw_fields() -> None:
    store = memory_dataset(3, 2)
    ds = StreamingWebDataset(store, schema={".cls": "int", "JSON": "json"})
    first = next(iter(ds))
    assert first == {
        "__key__": "s000000",
        "__url__": "memory://mem/shard-000000.tar",
        "cls": 0,
        "json": {"i": 0, "shard": 0},
        "txt": b"sample 0",
    }
    assert [s["__url__"].rsplit("/", 1)[1] for s in ds] == ["shard-000000.tar"] * 2 + ["shard-000001.tar"]


def test_transform_runs_after_decoding() -> None:
    ds = StreamingWebDataset(
        memory_dataset(4, 2), schema={"cls": "int"}, transform=lambda s: (s["__key__"], s["cls"] * 10)
    )
    assert list(ds) == [("s000000", 0), ("s000001", 10), ("s000002", 20), ("s000003", 30)]


def test_mean_distinct_shards_per_batch_with_default_settings() -> None:
    # 64 shards of 40 samples, read by 2 DataLoader workers (32 shards each), batches of 32
    store = memory_dataset(64 * 40, 40)
    ds = StreamingWebDataset(store, shuffle=True, seed=0)
    loader = StreamingDataLoader(ds, batch_size=32, num_workers=2)
    distinct = [len(set(batch["__url__"])) for batch in loader]
    assert len(distinct) == 80
    assert statistics.mean(distinct) >= 8, f"mean distinct shards per batch {statistics.mean(distinct)}"


def test_without_shuffle_a_worker_reads_one_shard_at_a_time() -> None:
    ds = StreamingWebDataset(memory_dataset(8 * 32, 32))
    urls = [s["__url__"] for s in ds]
    batches = [set(urls[i : i + 32]) for i in range(0, len(urls), 32)]
    assert all(len(b) == 1 for b in batches)


@pytest.mark.parametrize("how", ["exhausted", "closed", "dropped", "error"])
def test_download_threads_are_joined(how: str) -> None:
    store = memory_dataset(200, 10)
    if how == "error":
        store.objects["shard-000005.tar"] = b"not a tar" * 100
    ds = StreamingWebDataset(store, shuffle=True, options=StreamOptions(chunk_size=1024, max_workers=4))
    it = iter(ds)
    next(it)
    assert _fetch_threads(), "downloads run on the pool"
    if how == "exhausted":
        list(it)
    elif how == "closed":
        it.close()
    elif how == "dropped":
        del it
        ds.__dict__["_stream"] = None
    else:
        with pytest.raises(streaming_wds.ShardFormatError):
            list(it)
    assert _fetch_threads() == []


@settings(max_examples=25, deadline=None)
@given(
    per_shard=st.integers(1, 25),
    interleave=st.integers(1, 5),
    prefetch=st.integers(0, 3),
    chunk_kib=st.integers(1, 4),
    readahead=st.integers(1, 5),
    budget_chunks=st.integers(1, 12),
    shuffle=st.booleans(),
)
def test_buffered_bytes_stay_within_budget(
    per_shard: int,
    interleave: int,
    prefetch: int,
    chunk_kib: int,
    readahead: int,
    budget_chunks: int,
    shuffle: bool,
) -> None:
    chunk = chunk_kib * 1024 + 100  # not a multiple of the tar block size
    opts = StreamOptions(
        interleave=interleave,
        prefetch=prefetch,
        chunk_size=chunk,
        readahead=readahead,
        buffer_bytes=budget_chunks * chunk,
    )
    ds = StreamingWebDataset(memory_dataset(150, per_shard), shuffle=shuffle, options=opts)
    it = iter(ds)
    peak = 0
    keys = []
    for sample in it:
        keys.append(sample["__key__"])
        assert isinstance(it, EpochStream) and it._fetcher is not None
        peak = max(peak, it._fetcher.charged)
    assert sorted(keys) == all_keys(150)
    open_shards = (interleave if shuffle else 1) + prefetch
    assert 0 < peak <= max(opts.buffer_bytes, open_shards * opts.chunk_size)


def test_world_is_resolved_at_iteration_time(monkeypatch: pytest.MonkeyPatch) -> None:
    store = memory_dataset(40, 5)
    ds = StreamingWebDataset(store)  # built before the process group exists
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    keys = [s["__key__"] for s in ds]
    assert keys == [k for i, k in enumerate(all_keys(40)) if (i // 5) % 2 == 1]
    explicit = StreamingWebDataset(store, rank=0, world_size=2)
    assert [s["__key__"] for s in explicit] == [k for i, k in enumerate(all_keys(40)) if (i // 5) % 2 == 0]


def test_fewer_shards_than_consumers_is_a_clear_error() -> None:
    ds = StreamingWebDataset(memory_dataset(10, 5), rank=0, world_size=3)
    with pytest.raises(PlanningError, match=r"2 shard\(s\) cannot feed 3 consumers"):
        iter(ds)
    loader = StreamingDataLoader(StreamingWebDataset(memory_dataset(10, 5)), num_workers=2, batch_size=2)
    assert sorted(k for b in loader for k in b["__key__"]) == all_keys(10)


def test_bad_arguments_fail_at_construction() -> None:
    store = MemoryStorage()
    with pytest.raises(ConfigError, match="on_error must be 'raise' or 'skip'"):
        StreamingWebDataset(store, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pass both rank= and world_size="):
        StreamingWebDataset(store, rank=1)
    with pytest.raises(ConfigError, match="rank 2 is not in range for world_size 2"):
        StreamingWebDataset(store, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="unknown decoder 'jpeg2000'"):
        StreamingWebDataset(store, schema={"jpg": "jpeg2000"})
    with pytest.raises(ConfigError, match="buffer_bytes"):
        StreamOptions(buffer_bytes=10, chunk_size=100)
    with pytest.raises(TypeError, match="needs a StreamingWebDataset"):
        StreamingDataLoader([1, 2, 3])  # type: ignore[arg-type]


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sample_errors_raise_or_are_skipped_and_counted() -> None:
    store = MemoryStorage(
        {
            "a.tar": _tar(
                [
                    ("k1.txt", b"one"),
                    ("README", b"x"),
                    ("k2.txt", b"two"),
                    ("k2.TXT", b"again"),
                    ("k3.txt", b"3"),
                ]
            )
        }
    )
    with pytest.raises(SampleError) as info:
        list(StreamingWebDataset(store))
    assert str(info.value) == (
        "memory://mem/a.tar at byte 1024, sample 'README': "
        "member 'README' has no extension, so it belongs to no sample"
    )
    ds = StreamingWebDataset(store, schema={"txt": "txt"}, on_error="skip")
    assert [(s["__key__"], s["txt"]) for s in ds] == [("k1", "one"), ("k3", "3")]
    assert ds.error_counts == {"sample": 2}


def test_skip_counts_are_visible_through_the_loader() -> None:
    store = memory_dataset(20, 5)
    store.objects["shard-000002.tar"] = b"\0" * 100 + b"garbage" * 200
    ds = StreamingWebDataset(store, on_error="skip")
    loader = StreamingDataLoader(ds, batch_size=3, num_workers=2)
    keys = [k for b in loader for k in b["__key__"]]
    assert sorted(keys) == [k for k in all_keys(20) if not "s000010" <= k <= "s000014"]
    assert loader.error_counts() == {"shard_format": 1}


def test_dataset_pickles_while_iterating() -> None:
    ds = StreamingWebDataset(memory_dataset(10, 5), schema={"cls": "int"})
    it = iter(ds)
    next(it)
    clone: Any = pickle.loads(pickle.dumps(ds))
    it.close()
    assert [s["__key__"] for s in clone] == all_keys(10)


def test_public_surface() -> None:
    assert streaming_wds.__all__ == sorted(streaming_wds.__all__)
    for name in streaming_wds.__all__:
        assert getattr(streaming_wds, name) is not None
    assert {"StreamingWebDataset", "StreamingDataLoader", "ShardWriter", "S3Options", "StreamOptions"} <= set(
        streaming_wds.__all__
    )


class WarmingStorage(MemoryStorage):
    """A store with ``warm_up``: each call leaves a file named after the process (DataLoader
    workers are other processes) and notes which download threads were already running."""

    def __init__(self, objects: dict[str, bytes], marks: Path) -> None:
        super().__init__(objects)
        self.marks = marks
        self.threads_at_warm_up: list[list[str]] = []

    def warm_up(self) -> None:
        self.threads_at_warm_up.append(_fetch_threads())
        time.sleep(0.3)  # a warm-up started by the first batch request could not be done yet
        (self.marks / f"warm-{os.getpid()}").touch()


def test_a_store_is_warmed_up_before_any_download_thread_starts(tmp_path: Path) -> None:
    store = WarmingStorage(memory_dataset(20, 5).objects, tmp_path)
    assert sorted(s["__key__"] for s in StreamingWebDataset(store, shuffle=True)) == all_keys(20)
    assert store.threads_at_warm_up == [[]]


def test_workers_request_their_shards_before_the_first_batch_is_asked_for(tmp_path: Path) -> None:
    """A DataLoader worker starts its epoch (warms its store up, sends its first requests) when
    it creates its iterator at start-up, not when the first batch is requested."""
    store = WarmingStorage(memory_dataset(20, 5).objects, tmp_path)
    loader = StreamingDataLoader(StreamingWebDataset(store, shuffle=True), num_workers=2, batch_size=2)
    it = iter(loader)  # returns once every worker has started and sent its initial state
    warmed = sorted(p.name for p in tmp_path.iterdir())
    assert len(warmed) == 2 and f"warm-{os.getpid()}" not in warmed
    assert sorted(k for b in it for k in b["__key__"]) == all_keys(20)
    assert sorted(p.name for p in tmp_path.iterdir()) == warmed
