"""ShardWriter's background uploads, overwrite protection, index.json, and S3 (moto)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from streaming_wds import (
    ConfigError,
    MemoryStorage,
    S3Storage,
    ShardWriter,
    StorageAuthError,
    StorageError,
    StreamingWebDataset,
)
from streaming_wds.encoding import END_OF_ARCHIVE, encode_sample
from streaming_wds.errors import ShardExistsError
from streaming_wds.index import INDEX_NAME, DatasetIndex, ShardEntry, read_index
from streaming_wds.uploads import Uploader

from ..helpers import all_keys, sample

WAIT = 10.0  # seconds before a test gives up waiting for a thread (a hang, never a pass)
BUCKET = "bucket"


def names(n: int, start: int = 0) -> list[str]:
    return [f"shard-{i:06d}.tar" for i in range(start, start + n)]


def keys_in(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        out: list[str] = []
        for info in tf:
            key = info.name.split(".", 1)[0]
            if not out or out[-1] != key:
                out.append(key)
        return out


def entry(name: str, data: bytes, samples: int) -> ShardEntry:
    return ShardEntry(
        name=name,
        samples=samples,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        crc32=zlib.crc32(data),
    )


def upload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("swds-upload")]


class GatedStorage(MemoryStorage):
    """A MemoryStorage whose ``put`` waits for ``gate`` and records what runs at once.

    ``gates`` gives names gates of their own. ``fail`` maps names to the exception their put
    raises (after the gate). The condition
    ``cond`` is notified on every change, so tests wait for states instead of sleeping.
    """

    def __init__(self, *, gated: bool = True) -> None:
        super().__init__()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.cond = threading.Condition()
        self.gates: dict[str, threading.Event] = {}  # per name, instead of ``gate``
        self.fail: dict[str, BaseException] = {}
        self.active = 0
        self.max_active = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.puts: list[str] = []  # completed puts, in order

    def put(self, name: str, data: bytes) -> None:
        with self.cond:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.started.append(name)
            self.cond.notify_all()
        try:
            if not self.gates.get(name, self.gate).wait(WAIT):
                raise TimeoutError(f"put({name!r}) was never released")
            if name in self.fail:
                raise self.fail[name]
            super().put(name, data)
            self.puts.append(name)
        finally:
            with self.cond:
                self.active -= 1
                self.finished.append(name)
                self.cond.notify_all()

    def wait_for(self, predicate: Any) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, WAIT), "timed out waiting for the uploads"


class Harness:
    """Makes gated stores and writers, and releases and closes them all after the test, so a
    failing test does not leave upload threads behind for the next one."""

    def __init__(self) -> None:
        self.stores: list[GatedStorage] = []
        self.writers: list[ShardWriter] = []
        self.uploaders: list[Uploader] = []

    def store(self, *, gated: bool = True) -> GatedStorage:
        self.stores.append(GatedStorage(gated=gated))
        return self.stores[-1]

    def writer(self, output: Any, **kw: Any) -> ShardWriter:
        self.writers.append(ShardWriter(output, **kw))
        return self.writers[-1]

    def uploader(self, store: GatedStorage, max_in_flight: int) -> Uploader:
        self.uploaders.append(Uploader(store, max_in_flight))
        return self.uploaders[-1]

    def release(self) -> None:
        for store in self.stores:
            store.gate.set()
            for gate in store.gates.values():
                gate.set()
        for w in self.writers:
            w.abort()
        for up in self.uploaders:
            up.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.release()


# -- bounded in flight ------------------------------------------------------------------------


def test_uploads_are_bounded_and_write_blocks_while_all_slots_are_busy(harness: Harness) -> None:
    store = harness.store()
    w = harness.writer(store, maxcount=1, max_uploads=2)
    log: list[tuple[int, int]] = []  # (sample written, puts finished when write() returned)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(6):
                w.write(sample(i))
                with store.cond:
                    log.append((i, len(store.finished)))
                    store.cond.notify_all()
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, name="test-producer")
    producer.start()
    try:
        # writes 0-2 close shards 0 and 1, which take both slots; write 3 must wait for a slot
        store.wait_for(lambda: store.active == 2 and len(log) == 3)
        assert log == [(0, 0), (1, 0), (2, 0)]
        assert sorted(store.started) == names(2)
        with store.cond:
            # a bounded wait for something that must not happen: write 3 stays blocked
            assert not store.cond.wait_for(lambda: len(log) > 3, 0.2)
        assert len(upload_threads()) == 2
    finally:
        store.gate.set()
        producer.join(WAIT)
    assert not producer.is_alive()
    assert errors == []
    # write 3 returned only after an upload had finished and freed its slot
    assert [i for i, _ in log] == [0, 1, 2, 3, 4, 5]
    assert log[3][1] >= 1
    w.close()
    assert store.max_active == 2
    assert store.puts[-1] == INDEX_NAME
    assert sorted(store.puts[:-1]) == names(6)
    assert upload_threads() == []


@pytest.mark.parametrize("max_uploads", [1, 3])
def test_never_more_than_max_uploads_at_once(max_uploads: int) -> None:
    store = GatedStorage(gated=False)
    with ShardWriter(store, maxcount=2, max_uploads=max_uploads) as w:
        for i in range(20):
            w.write(sample(i))
    assert store.max_active <= max_uploads
    assert w.written == names(10)
    assert store.puts[-1] == INDEX_NAME
    assert sorted(store.puts[:-1]) == names(10)


def test_uploader_submit_blocks_and_results_keep_submission_order(harness: Harness) -> None:
    store = harness.store()
    up = harness.uploader(store, 1)
    submitted: list[str] = []

    def submit_two() -> None:
        for n in ("b.tar", "a.tar"):
            up.submit(n, n.encode(), 1)
            submitted.append(n)

    t = threading.Thread(target=submit_two, name="test-submitter")
    t.start()
    try:
        store.wait_for(lambda: store.started == ["b.tar"])
        with store.cond:
            assert not store.cond.wait_for(lambda: len(submitted) > 1, 0.2)
        assert submitted == ["b.tar"]
    finally:
        store.gate.set()
        t.join(WAIT)
    assert submitted == ["b.tar", "a.tar"]
    assert up.wait() == [entry("b.tar", b"b.tar", 1), entry("a.tar", b"a.tar", 1)]
    up.close()
    assert upload_threads() == []


# -- failures ---------------------------------------------------------------------------------


def test_a_failed_upload_is_raised_by_close_after_the_others_finished(harness: Harness) -> None:
    store = harness.store()
    boom = StorageError("cannot write memory://mem/shard-000001.tar: injected")
    store.fail["shard-000001.tar"] = boom
    w = harness.writer(store, maxcount=2, max_uploads=4)
    for i in range(8):
        w.write(sample(i))
    w.flush()  # all four shards are uploading (gated): nothing has failed yet
    store.wait_for(lambda: store.active == 4)
    store.gate.set()
    with pytest.raises(StorageError) as exc:
        w.close()
    assert exc.value is boom
    # every other upload ended (and was kept); the failed shard and the index were never written
    assert sorted(store.finished) == names(4)
    assert sorted(store.objects) == ["shard-000000.tar", "shard-000002.tar", "shard-000003.tar"]
    assert keys_in(store.objects["shard-000003.tar"]) == ["s000006", "s000007"]
    assert INDEX_NAME not in store.objects
    assert upload_threads() == []
    # the writer is closed for good
    w.close()
    with pytest.raises(ConfigError, match=r"^ShardWriter is closed$"):
        w.write(sample(99))
    assert INDEX_NAME not in store.objects


def test_the_first_failure_in_submission_order_wins(harness: Harness) -> None:
    store = harness.store()
    first = StorageError("first")
    second = StorageError("second")
    store.fail.update({"shard-000000.tar": first, "shard-000002.tar": second})
    w = harness.writer(store, maxcount=1, max_uploads=3)
    for i in range(3):
        w.write(sample(i))
    w.flush()
    store.wait_for(lambda: store.active == 3)
    store.gate.set()
    with pytest.raises(StorageError) as exc:
        w.close()
    assert exc.value is first
    assert sorted(store.objects) == ["shard-000001.tar"]


def test_uploader_raises_the_first_failure_in_submission_order_not_in_time(harness: Harness) -> None:
    store = harness.store()
    late, early = StorageError("late"), StorageError("early")
    store.fail.update({"a.tar": late, "c.tar": early})
    store.gates["a.tar"] = threading.Event()
    up = harness.uploader(store, 3)
    for n in ("a.tar", "b.tar", "c.tar"):
        up.submit(n, b"x", 1)
    store.gate.set()  # b succeeds and c fails while a is still held
    with store.cond:  # wait until b's put and c's failed upload have both ended (public API)
        while up.first_failure() is None or len(store.finished) < 2:
            store.cond.wait(0.01)
    assert up.first_failure() is early
    assert sorted(store.finished) == ["b.tar", "c.tar"]
    store.gates["a.tar"].set()
    with pytest.raises(StorageError) as exc:
        up.wait()
    assert exc.value is late  # a was submitted first, so its failure is the one raised
    assert up.first_failure() is late
    up.close()
    assert store.objects == {"b.tar": b"x"}


def test_a_failed_upload_surfaces_through_the_with_block() -> None:
    store = GatedStorage(gated=False)
    boom = StorageError("injected")
    store.fail["shard-000000.tar"] = boom
    with pytest.raises(StorageError) as exc, ShardWriter(store, maxcount=1, max_uploads=1) as w:
        for i in range(10):
            w.write(sample(i))
    assert exc.value is boom  # from a later write() or from close(), whichever sees it first
    assert "shard-000000.tar" not in store.objects
    assert INDEX_NAME not in store.objects
    assert set(store.objects) <= set(names(10))
    assert upload_threads() == []


def test_exception_inside_with_writes_no_index_and_no_partial_shard() -> None:
    store = GatedStorage(gated=False)
    with pytest.raises(KeyError, match="boom"), ShardWriter(store, maxcount=3) as w:
        for i in range(7):
            w.write(sample(i))
        raise KeyError("boom")
    # shards 0 and 1 were complete (and uploaded); the partial shard with sample 6 is dropped
    assert w.written == names(2)
    assert sorted(store.objects) == names(2)
    assert keys_in(store.objects["shard-000001.tar"]) == ["s000003", "s000004", "s000005"]
    assert upload_threads() == []


def test_abort_waits_for_running_uploads_and_writes_no_index(harness: Harness) -> None:
    store = harness.store()
    w = harness.writer(store, maxcount=1)
    w.write(sample(0))
    w.write(sample(1))  # shard 0 uploads (gated); sample 1 is the unfinished shard
    store.wait_for(lambda: store.active == 1)
    seen_by_abort: list[list[str]] = []

    def abort() -> None:
        w.abort()
        with store.cond:
            seen_by_abort.append(list(store.finished))
            store.cond.notify_all()

    t = threading.Thread(target=abort, name="test-abort")
    t.start()
    try:
        with store.cond:
            assert not store.cond.wait_for(lambda: seen_by_abort, 0.2)  # abort waits for the put
    finally:
        store.gate.set()
        t.join(WAIT)
    assert seen_by_abort == [["shard-000000.tar"]]
    assert sorted(store.objects) == ["shard-000000.tar"]
    assert upload_threads() == []
    w.close()  # closed by abort: nothing more is written
    assert sorted(store.objects) == ["shard-000000.tar"]


# -- overwrite protection ---------------------------------------------------------------------


def test_existing_local_shard_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "shard-000000.tar").write_bytes(b"original")
    with pytest.raises(ShardExistsError) as exc, ShardWriter(tmp_path) as w:
        w.write(sample(0))
    url = str(tmp_path / "shard-000000.tar")
    assert isinstance(exc.value, FileExistsError)
    assert isinstance(exc.value, StorageError)
    assert exc.value.url == url
    assert str(exc.value) == f"refusing to overwrite existing shard {url} (pass overwrite=True to replace it)"
    assert (tmp_path / "shard-000000.tar").read_bytes() == b"original"
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar"]  # no temporary file, no index
    assert upload_threads() == []


def test_existing_memory_shard_is_not_replaced() -> None:
    store = MemoryStorage({"shard-000000.tar": b"original"}, name="m")
    w = ShardWriter(store)
    w.write(sample(0))
    with pytest.raises(
        FileExistsError, match=r"^refusing to overwrite existing shard memory://m/shard-000000"
    ):
        w.close()
    assert store.objects == {"shard-000000.tar": b"original"}


def test_a_later_existing_shard_stops_the_writer_before_replacing_it(tmp_path: Path) -> None:
    (tmp_path / "shard-000002.tar").write_bytes(b"original")
    with pytest.raises(ShardExistsError) as exc, ShardWriter(tmp_path, maxcount=1) as w:
        for i in range(5):
            w.write(sample(i))
    assert exc.value.url == str(tmp_path / "shard-000002.tar")
    assert w.written == names(2)
    assert sorted(os.listdir(tmp_path)) == names(3)
    assert (tmp_path / "shard-000002.tar").read_bytes() == b"original"
    assert keys_in((tmp_path / "shard-000001.tar").read_bytes()) == ["s000001"]


def test_other_files_do_not_count_as_existing_shards(tmp_path: Path) -> None:
    (tmp_path / "shard-000000.tar.tmp").write_bytes(b"x")
    (tmp_path / "other-000000.tar").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "shard-000000.tar").write_bytes(b"x")
    with ShardWriter(tmp_path) as w:
        w.write(sample(0))
    assert keys_in((tmp_path / "shard-000000.tar").read_bytes()) == ["s000000"]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_overwrite_true_replaces_shards_and_their_index_entries(tmp_path: Path, kind: str) -> None:
    output: Any = tmp_path if kind == "local" else MemoryStorage()
    with ShardWriter(output, maxcount=2) as w:
        for i in range(4):
            w.write(sample(i))
    with ShardWriter(output, maxcount=3, overwrite=True) as w:
        for i in range(10, 13):
            w.write(sample(i))
    store = w.storage
    new = store.get("shard-000000.tar")
    assert keys_in(new) == ["s000010", "s000011", "s000012"]
    assert keys_in(store.get("shard-000001.tar")) == ["s000002", "s000003"]  # untouched
    index = read_index(store)
    assert index == DatasetIndex(
        total_samples=5,
        shards=[
            entry("shard-000000.tar", new, 3),
            entry("shard-000001.tar", store.get("shard-000001.tar"), 2),
        ],
    )


# -- index.json -------------------------------------------------------------------------------


def test_index_is_written_last_with_exact_entries() -> None:
    store = GatedStorage(gated=False)
    with ShardWriter(store, maxcount=3) as w:
        for i in range(8):
            w.write(sample(i))
    assert store.puts[-1] == INDEX_NAME
    assert sorted(store.puts[:-1]) == names(3)
    raw = msgspec.json.decode(store.objects[INDEX_NAME])
    assert raw == {
        "format": "streaming_wds.index",
        "version": 1,
        "total_samples": 8,
        "shards": [
            {
                "name": n,
                "samples": c,
                "size": len(store.objects[n]),
                "sha256": hashlib.sha256(store.objects[n]).hexdigest(),
                "crc32": zlib.crc32(store.objects[n]),
            }
            for n, c in zip(names(3), [3, 3, 2], strict=True)
        ],
    }
    assert w.entries == read_index(store).shards  # type: ignore[union-attr]
    assert w.total == 8
    # the stored bytes are exactly the samples' members and the end marker
    expected = b"".join(encode_sample(sample(i))[1] for i in range(6, 8)) + END_OF_ARCHIVE
    assert store.objects["shard-000002.tar"] == expected


def test_a_second_writer_merges_into_the_index(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, maxcount=2) as w:
        for i in range(5):
            w.write(sample(i))
    assert w.written == names(3)
    with ShardWriter(tmp_path, maxcount=2, start_shard=3) as w2:
        for i in range(5, 8):
            w2.write(sample(i))
    assert w2.written == names(2, start=3)
    index = read_index(w2.storage)
    files = {n: (tmp_path / n).read_bytes() for n in names(5)}
    assert index == DatasetIndex(
        total_samples=8,
        shards=[entry(n, files[n], c) for n, c in zip(names(5), [2, 2, 1, 2, 1], strict=True)],
    )
    ds = StreamingWebDataset(tmp_path)
    assert ds.num_samples == 8
    assert [s["__key__"] for s in ds] == all_keys(8)


def test_a_second_writer_with_index_off_leaves_the_old_index_alone() -> None:
    store = MemoryStorage()
    with ShardWriter(store, maxcount=2) as w:
        for i in range(2):
            w.write(sample(i))
    before = store.objects[INDEX_NAME]
    with ShardWriter(store, maxcount=2, start_shard=1, index=False) as w:
        w.write(sample(2))
    assert store.objects[INDEX_NAME] == before
    assert sorted(store.objects) == [INDEX_NAME, *names(2)]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_index_false_writes_no_index(tmp_path: Path, kind: str) -> None:
    output: Any = tmp_path if kind == "local" else MemoryStorage()
    with ShardWriter(output, maxcount=2, index=False) as w:
        for i in range(3):
            w.write(sample(i))
    assert sorted(o.name for o in w.storage.list("")) == names(2)


def test_no_samples_write_no_index(tmp_path: Path) -> None:
    with ShardWriter(tmp_path):
        pass
    assert os.listdir(tmp_path) == []


# -- S3 under moto ----------------------------------------------------------------------------


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def s3_keys(client: Any) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def s3_get(client: Any, key: str) -> bytes:
    return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_s3_shards_and_index(s3: Any) -> None:
    with ShardWriter(f"s3://{BUCKET}/prefix", maxcount=3) as w:
        for i in range(10):
            w.write(sample(i))
    assert w.written == names(4)
    assert s3_keys(s3) == [f"prefix/{n}" for n in [INDEX_NAME, *names(4)]]
    blobs = {n: s3_get(s3, f"prefix/{n}") for n in names(4)}
    assert keys_in(blobs["shard-000003.tar"]) == ["s000009"]
    assert read_index(w.storage) == DatasetIndex(
        total_samples=10,
        shards=[entry(n, blobs[n], c) for n, c in zip(names(4), [3, 3, 3, 1], strict=True)],
    )
    ds = StreamingWebDataset(f"s3://{BUCKET}/prefix")
    assert [s["__key__"] for s in ds] == all_keys(10)
    assert len(ds) == 10


def test_s3_existing_shard_is_not_replaced(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/shard-000000.tar", Body=b"original")
    with pytest.raises(ShardExistsError) as exc, ShardWriter(f"s3://{BUCKET}/p") as w:
        w.write(sample(0))
    assert exc.value.url == f"s3://{BUCKET}/p/shard-000000.tar"
    assert s3_get(s3, "p/shard-000000.tar") == b"original"
    assert s3_keys(s3) == ["p/shard-000000.tar"]


MiB = 1024 * 1024


def big_sample(i: int, size: int) -> dict[str, Any]:
    # incompressible, distinct per block, so a misplaced part would show
    data = b"".join(hashlib.sha256(f"{i}:{j}".encode()).digest() for j in range(size // 32))
    return {"__key__": f"big{i}", "bin": data}


def test_s3_multipart_upload_is_exact(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S3Storage, "multipart_threshold", 5 * MiB)
    w = ShardWriter(f"s3://{BUCKET}/mp", maxcount=1, max_uploads=1)
    calls: list[str] = []
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        w.storage.client.meta.events.register(  # type: ignore[attr-defined]
            f"before-call.s3.{op}", lambda op=op, **kw: calls.append(op)
        )
    big = big_sample(0, 12 * MiB)
    w.write(big)
    w.write(sample(1))
    w.close()
    expected = encode_sample(big)[1] + END_OF_ARCHIVE
    assert len(expected) > 12 * MiB
    stored = s3_get(s3, "mp/shard-000000.tar")
    assert stored == expected
    head = s3.head_object(Bucket=BUCKET, Key="mp/shard-000000.tar")
    assert head["ETag"].endswith('-3"')  # 5 + 5 + ~2 MiB parts
    # one upload at a time: the big shard in three parts, then the small shard and the index
    assert calls == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
        "PutObject",
        "PutObject",
    ]
    index = read_index(w.storage)
    assert index is not None
    assert index.shards[0] == entry("shard-000000.tar", expected, 1)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_s3_failed_multipart_upload_is_aborted(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S3Storage, "multipart_threshold", 5 * MiB)
    w = ShardWriter(f"s3://{BUCKET}/mp", maxcount=1, max_uploads=1)
    parts: list[int] = []

    def fail_second_part(**kw: Any) -> None:
        parts.append(1)
        if len(parts) == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")

    events = w.storage.client.meta.events  # type: ignore[attr-defined]
    events.register("before-call.s3.UploadPart", fail_second_part)
    aborted: list[dict[str, Any]] = []
    events.register(
        "before-parameter-build.s3.AbortMultipartUpload", lambda params, **kw: aborted.append(params)
    )
    w.write(sample(0))
    w.write(big_sample(1, 12 * MiB))
    w.flush()
    with pytest.raises(StorageError) as exc:
        w.close()
    url = f"s3://{BUCKET}/mp/shard-000001.tar"
    assert str(exc.value) == f"cannot write {url} (bucket='{BUCKET}'): InternalError: injected"
    assert isinstance(exc.value.__cause__, ClientError)
    assert len(parts) == 2  # the upload stopped at the failed part
    # nothing under the final key, no index, and the multipart upload was aborted
    assert s3_keys(s3) == ["mp/shard-000000.tar"]
    assert [a["Key"] for a in aborted] == ["mp/shard-000001.tar"]
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert upload_threads() == []


def test_s3_failed_single_put_names_the_shard(s3: Any) -> None:
    w = ShardWriter(f"s3://{BUCKET}/p", maxcount=1)

    def deny(**kw: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

    w.storage.client.meta.events.register("before-call.s3.PutObject", deny)  # type: ignore[attr-defined]
    w.write(sample(0))
    with pytest.raises(StorageAuthError) as exc:
        w.close()
    assert str(exc.value) == (
        f"cannot write s3://{BUCKET}/p/shard-000000.tar (bucket='{BUCKET}'): "
        "credentials missing, refused or expired: AccessDenied: no"
    )
    assert s3_keys(s3) == []
