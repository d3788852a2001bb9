"""DataLoader worker processes (spawn, forkserver, fork) reading from a local moto S3 server.

Worker processes cannot see moto's in-process mock, so a real HTTP server on 127.0.0.1 stands in
for S3. It is started once for the module; its data lives as long as the server.
"""

from __future__ import annotations

import gc
import json
import pickle
from collections.abc import Iterator

import pytest

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset, StreamOptions
from tests.helpers import Server, all_keys, keys_of, moto_s3_server, sample

pytestmark = pytest.mark.s3server

BUCKET = "swds-it"
NUM_SAMPLES = 60
PER_SHARD = 6
OPTIONS = StreamOptions(chunk_size=1024, buffer_bytes=64 * 1024, max_workers=2)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """moto's S3 server on a free local port, with the dataset written to s3://BUCKET/ds."""
    with moto_s3_server(BUCKET) as srv:
        with ShardWriter(f"s3://{BUCKET}/ds", maxcount=PER_SHARD, s3=srv.s3) as w:
            for i in range(NUM_SAMPLES):
                w.write(sample(i, i // PER_SHARD))
        assert w.written == [f"shard-{i:06d}.tar" for i in range(NUM_SAMPLES // PER_SHARD)]
        del w
        gc.collect()  # close the writer's connections before the first test looks at threads
        yield srv


def _loader(srv: Server, ctx: str, *, shuffle: bool, seed: int = 0) -> StreamingDataLoader:
    ds = StreamingWebDataset(f"s3://{BUCKET}/ds", s3=srv.s3, shuffle=shuffle, seed=seed, options=OPTIONS)
    return StreamingDataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=ctx)


@pytest.mark.parametrize("ctx", ["spawn", "forkserver", "fork"])
def test_workers_read_every_sample_exactly_once(server: Server, ctx: str) -> None:
    loader = _loader(server, ctx, shuffle=True, seed=11)
    batches = list(loader)
    keys = keys_of(iter(batches))
    assert len(keys) == NUM_SAMPLES
    assert sorted(keys) == all_keys(NUM_SAMPLES)
    # each worker yields its own batches: 30 samples -> 7 full batches and one of 2
    assert sorted(len(b["__key__"]) for b in batches) == [2, 2] + [4] * 14
    for b in batches:
        for key, url, txt in zip(b["__key__"], b["__url__"], b["txt"], strict=True):
            i = int(key[1:])
            assert url == f"s3://{BUCKET}/ds/shard-{i // PER_SHARD:06d}.tar"
            assert txt == f"sample {i}".encode()


def test_dataset_pickles_without_a_client(server: Server) -> None:
    ds = StreamingWebDataset(f"s3://{BUCKET}/ds", s3=server.s3, options=OPTIONS)
    assert len(ds.shards) == NUM_SAMPLES // PER_SHARD  # lists, so the client exists
    assert ds.storage.client is not None  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.storage._client is None
    assert [s.name for s in copy.shards] == [s.name for s in ds.shards]  # listing travels along
    assert [s["__key__"] for s in copy] == all_keys(NUM_SAMPLES)


def test_mid_epoch_resume_with_spawn_workers(server: Server) -> None:
    # The order does not depend on the start method; the uninterrupted reference run uses fork
    # workers only because spawn start-up is slow.
    full = keys_of(iter(_loader(server, "fork", shuffle=True, seed=3)))
    assert sorted(full) == all_keys(NUM_SAMPLES)

    loader = _loader(server, "spawn", shuffle=True, seed=3)
    it = iter(loader)
    before = [k for _ in range(3) for k in next(it)["__key__"]]
    state = json.loads(json.dumps(loader.state_dict()))
    del it, loader
    gc.collect()

    resumed = _loader(server, "spawn", shuffle=True, seed=3)
    resumed.load_state_dict(state)
    after = keys_of(iter(resumed))
    assert len(before) == 12
    assert before + after == full
