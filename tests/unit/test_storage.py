"""Stores: URL handling, local directories, and S3 through moto's in-process mock."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from streaming_wds import (
    ConfigError,
    LocalStorage,
    MemoryStorage,
    NoShardsError,
    ObjectInfo,
    S3Options,
    S3Storage,
    ShardNotFoundError,
    ShardWriter,
    StorageError,
    StreamingWebDataset,
    StreamOptions,
)
from streaming_wds.storage import open_storage
from tests.helpers import all_keys, sample

BUCKET = "swds-bucket"

# =============================================================================================
# open_storage: URLs
# =============================================================================================


@pytest.mark.parametrize(
    ("url", "split", "bucket", "prefix", "location"),
    [
        ("s3://bkt/prefix", None, "bkt", "prefix", "s3://bkt/prefix"),
        ("s3://bkt/prefix", "train", "bkt", "prefix/train", "s3://bkt/prefix/train"),
        ("s3://bkt/prefix/", "/train/", "bkt", "prefix/train", "s3://bkt/prefix/train"),
        ("s3://bkt/a/b/", None, "bkt", "a/b", "s3://bkt/a/b"),
        ("s3://bkt", None, "bkt", "", "s3://bkt"),
        ("s3://bkt/", None, "bkt", "", "s3://bkt"),
        ("s3://bkt", "train", "bkt", "train", "s3://bkt/train"),
        ("s3://bkt/p", "", "bkt", "p", "s3://bkt/p"),
    ],
)
def test_s3_urls(url: str, split: str | None, bucket: str, prefix: str, location: str) -> None:
    store = open_storage(url, split)
    assert isinstance(store, S3Storage)
    assert store.bucket == bucket
    assert store.prefix == prefix
    assert store.location == location
    assert store.options == S3Options()
    assert store.url("x.tar") == f"{location}/x.tar"


def test_s3_options_are_passed_to_the_store() -> None:
    opts = S3Options(endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    store = open_storage("s3://bkt/p", "train", opts)
    assert isinstance(store, S3Storage)
    assert store.options is opts


def test_s3_url_without_bucket() -> None:
    with pytest.raises(ConfigError, match=r"'s3:///prefix' has no bucket name"):
        open_storage("s3:///prefix")


def test_file_urls(tmp_path: Path) -> None:
    store = open_storage(tmp_path.as_uri())
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path
    store = open_storage(tmp_path.as_uri(), "train")
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "train"
    # percent-escapes are decoded
    store = open_storage("file:///data/my%20shards", "val")
    assert isinstance(store, LocalStorage)
    assert store.root == Path("/data/my shards/val")


def test_plain_paths(tmp_path: Path) -> None:
    for remote in (tmp_path, str(tmp_path)):
        store = open_storage(remote)
        assert isinstance(store, LocalStorage)
        assert store.root == tmp_path
        assert store.location == tmp_path.as_uri()
        store = open_storage(remote, "/train/")
        assert isinstance(store, LocalStorage)
        assert store.root == tmp_path / "train"
    rel = open_storage("some/relative/dir", "train")
    assert isinstance(rel, LocalStorage)
    assert rel.root == Path("some/relative/dir/train")
    assert rel.location == "some/relative/dir/train"


@pytest.mark.parametrize("url", ["http://host/x", "https://host/x", "gs://bkt/x", "hf://datasets/x"])
def test_unsupported_schemes(url: str) -> None:
    scheme = url.split(":", 1)[0]
    with pytest.raises(ConfigError, match=rf"unsupported URL scheme '{scheme}' in '{url}'"):
        open_storage(url)


@pytest.mark.parametrize("remote", ["/data/shards", "file:///data/shards", "relative/dir"])
def test_s3_options_with_a_non_s3_location(remote: str) -> None:
    with pytest.raises(ConfigError, match=r"s3= options were given but .* is not an s3:// URL"):
        open_storage(remote, None, S3Options())
    with pytest.raises(ConfigError, match="not an s3:// URL"):
        StreamingWebDataset(remote, s3=S3Options(endpoint_url="http://127.0.0.1:9"))


def test_storage_objects_pass_through() -> None:
    store = MemoryStorage()
    assert open_storage(store) is store
    assert open_storage(store, "") is store
    with pytest.raises(ConfigError, match="split= cannot be combined with a Storage object"):
        open_storage(store, "train")


def test_s3_options_with_a_storage_object_are_rejected() -> None:
    with pytest.raises(ConfigError, match="s3= options cannot be combined with a Storage object"):
        open_storage(MemoryStorage(), None, S3Options(endpoint_url="http://127.0.0.1:9"))


def test_file_url_with_a_host_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'file://data/shards' names host 'data'"):
        open_storage("file://data/shards")


def test_s3_options_validation() -> None:
    with pytest.raises(ConfigError, match=r"anonymous=True .* profile \('x'\) would be ignored"):
        S3Options(anonymous=True, profile="x")
    with pytest.raises(ConfigError, match="max_pool_connections must be at least 1"):
        S3Options(max_pool_connections=0)
    assert S3Options(anonymous=True).anonymous
    assert S3Options(profile="x").profile == "x"


# =============================================================================================
# LocalStorage
# =============================================================================================


def test_local_lists_direct_children_tar_files_sorted(tmp_path: Path) -> None:
    files = {"b.tar": b"bb", "a10.tar": b"a" * 10, "a2.tar": b"", "A.tar": b"A", "notes.txt": b"x"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.tar").write_bytes(b"nested")
    (tmp_path / "dir.tar").mkdir()  # a directory with a shard-like name
    (tmp_path / "x.tar.gz").write_bytes(b"gz")

    store = LocalStorage(tmp_path)
    assert store.list(".tar") == [
        ObjectInfo(name=n, size=len(files[n]), url=str(tmp_path / n))
        for n in ["A.tar", "a10.tar", "a2.tar", "b.tar"]
    ]
    assert [i.name for i in store.list(".txt")] == ["notes.txt"]
    assert all(i.etag is None for i in store.list(""))


def test_local_list_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "nope").list(".tar") == []


def test_local_list_of_a_file_is_a_storage_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(StorageError, match=f"cannot list {f}"):
        LocalStorage(f).list(".tar")


def test_local_read_range(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"0123456789")
    store = LocalStorage(tmp_path)
    assert store.read_range("a.tar", 0, 4) == b"0123"
    assert store.read_range("a.tar", 3, 7) == b"3456"
    assert store.read_range("a.tar", 9, 10) == b"9"
    assert store.read_range("a.tar", 8, 100) == b"89"  # fewer only at the end
    assert store.read_range("a.tar", 10, 20) == b""
    assert store.read_range("a.tar", 4, 4) == b""


def test_local_read_range_with_stop_before_start_is_empty(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"0123456789")
    store = LocalStorage(tmp_path)
    assert store.read_range("a.tar", 5, 4) == b""
    assert store.read_range("a.tar", 5, 2) == b""


def test_local_read_of_a_missing_file(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(ShardNotFoundError) as info:
        store.read_range("gone.tar", 0, 10)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.url == str(tmp_path / "gone.tar")
    assert str(info.value) == f"shard not found: {tmp_path / 'gone.tar'}"


def test_local_read_of_a_directory_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "d.tar").mkdir()
    with pytest.raises(StorageError, match=r"cannot read .*d\.tar bytes 0-10") as info:
        LocalStorage(tmp_path).read_range("d.tar", 0, 10)
    assert not isinstance(info.value, ShardNotFoundError)


def test_local_put_creates_directories_and_replaces(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er"
    store = LocalStorage(root)
    store.put("a.tar", b"first")
    assert (root / "a.tar").read_bytes() == b"first"
    store.put("a.tar", b"second!")
    assert (root / "a.tar").read_bytes() == b"second!"
    assert sorted(p.name for p in root.iterdir()) == ["a.tar"]  # no temporary files left
    assert store.list(".tar") == [ObjectInfo(name="a.tar", size=7, url=str(root / "a.tar"))]


def test_local_put_failing_on_replace_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStorage(tmp_path)
    store.put("a.tar", b"old")

    def boom(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        store.put("a.tar", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.tar").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]


def test_local_put_failing_mid_write_never_exposes_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStorage(tmp_path)
    store.put("a.tar", b"old")
    real_fdopen = os.fdopen
    seen: list[str] = []

    class HalfWriter:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            seen.extend(p.name for p in tmp_path.iterdir())
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        store.put("a.tar", b"new content")
    monkeypatch.undo()
    # the half-written data went to a hidden temporary file next to the target ...
    temporary = [n for n in seen if n != "a.tar"]
    assert len(seen) == 2
    assert len(temporary) == 1
    assert temporary[0].startswith(".a.tar.")
    assert temporary[0].endswith(".tmp")
    # ... which is removed, and the target keeps its old content
    assert (tmp_path / "a.tar").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]


# =============================================================================================
# S3Storage under moto's in-process mock
# =============================================================================================


@pytest.fixture
def s3() -> Iterator[Any]:
    """A mocked S3 with one bucket; yields a plain boto3 client for setting up objects."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _count_calls(store: S3Storage, operation: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    store.client.meta.events.register(
        f"before-parameter-build.s3.{operation}", lambda params, **kw: calls.append(dict(params))
    )
    return calls


def test_s3_listing_paginates_past_1000(s3: Any) -> None:
    names = [f"shard-{i:06d}.tar" for i in range(1005)]
    # 1,005 put_object calls through boto3 take ~10 s; moto's backend takes them directly.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for n in reversed(names):
        backend.put_object(BUCKET, f"data/{n}", b"x")
    # not direct children, not .tar, or not under the prefix
    for key in [
        "data/sub/shard-000000.tar",
        "data/sub/deeper/y.tar",
        "data/readme.txt",
        "data-2/z.tar",
        "t.tar",
    ]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    store = S3Storage(BUCKET, "data")
    calls = _count_calls(store, "ListObjectsV2")
    infos = store.list(".tar")
    assert [i.name for i in infos] == names
    assert infos[0].url == f"s3://{BUCKET}/data/shard-000000.tar"
    assert {i.size for i in infos} == {1}
    assert len(calls) == 2  # two pages
    assert calls[0]["Prefix"] == "data/"
    assert calls[0]["Delimiter"] == "/"


def test_s3_listing_of_the_bucket_root(s3: Any) -> None:
    for key in ["b.tar", "a.tar", "dir/c.tar", "note.md"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    store = S3Storage(BUCKET, "")
    assert [i.name for i in store.list(".tar")] == ["a.tar", "b.tar"]
    assert [i.name for i in store.list("")] == ["a.tar", "b.tar", "note.md"]
    assert store.list(".tar")[0].url == f"s3://{BUCKET}/a.tar"


def test_s3_listing_sizes_and_etags(s3: Any) -> None:
    data = {"x.tar": b"hello world", "y.tar": b"", "w.tar": os.urandom(3000)}
    store = S3Storage(BUCKET, "/p/q/")  # slashes are stripped
    assert store.prefix == "p/q"
    for name, body in data.items():
        store.put(name, body)
    assert store.list(".tar") == [
        ObjectInfo(
            name=n,
            size=len(data[n]),
            url=f"s3://{BUCKET}/p/q/{n}",
            etag=f'"{hashlib.md5(data[n]).hexdigest()}"',
        )
        for n in ["w.tar", "x.tar", "y.tar"]
    ]


def test_s3_empty_prefix_lists_nothing(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/sub/a.tar", Body=b"x")
    assert S3Storage(BUCKET, "p").list(".tar") == []
    assert S3Storage(BUCKET, "nothing-here").list(".tar") == []


def test_s3_read_range(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    store.put("a.tar", b"0123456789")
    assert s3.get_object(Bucket=BUCKET, Key="p/a.tar")["Body"].read() == b"0123456789"
    assert store.read_range("a.tar", 0, 4) == b"0123"
    assert store.read_range("a.tar", 3, 7) == b"3456"
    assert store.read_range("a.tar", 9, 10) == b"9"
    assert store.read_range("a.tar", 8, 100) == b"89"
    gets = _count_calls(store, "GetObject")
    assert store.read_range("a.tar", 4, 4) == b""
    assert store.read_range("a.tar", 5, 2) == b""
    assert gets == []  # empty ranges make no request
    assert store.read_range("a.tar", 2, 5) == b"234"
    assert gets[0]["Range"] == "bytes=2-4"


def test_s3_read_range_at_the_end_is_empty(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    store.put("a.tar", b"0123456789")
    assert store.read_range("a.tar", 10, 20) == b""


def test_s3_missing_key(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    with pytest.raises(ShardNotFoundError) as info:
        store.read_range("gone.tar", 0, 10)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, StorageError)
    assert info.value.url == f"s3://{BUCKET}/p/gone.tar"


def _secrets() -> list[str]:
    creds = boto3.session.Session().get_credentials()
    assert creds is not None
    secrets = [creds.access_key, creds.secret_key, os.environ["AWS_ACCESS_KEY_ID"]]
    secrets.append(os.environ["AWS_SECRET_ACCESS_KEY"])
    assert all(secrets)
    return secrets


def test_s3_missing_bucket(s3: Any) -> None:
    store = S3Storage("no-such-bucket", "p")
    with pytest.raises(StorageError) as info:
        store.list(".tar")
    msg = str(info.value)
    assert not isinstance(info.value, NoShardsError)
    assert msg.startswith("cannot list s3://no-such-bucket/p (bucket='no-such-bucket'): NoSuchBucket: ")
    for secret in _secrets():
        assert secret not in msg

    with pytest.raises(StorageError) as info:
        store.read_range("a.tar", 0, 10)
    assert not isinstance(info.value, ShardNotFoundError)
    assert str(info.value).startswith(
        "cannot read s3://no-such-bucket/p/a.tar bytes 0-10 (bucket='no-such-bucket'): NoSuchBucket"
    )
    with pytest.raises(StorageError, match=r"^cannot write s3://no-such-bucket/p/a\.tar .*NoSuchBucket"):
        store.put("a.tar", b"x")


def test_s3_unknown_profile_is_a_storage_error_naming_it(s3: Any) -> None:
    store = S3Storage(BUCKET, "p", S3Options(profile="no-such-profile"))
    with pytest.raises(StorageError) as info:
        store.list(".tar")
    msg = str(info.value)
    assert msg.startswith(f"cannot list s3://{BUCKET}/p (bucket='{BUCKET}', profile='no-such-profile'): ")
    assert "ProfileNotFound" in msg


def test_s3_client_options() -> None:
    store = S3Storage(
        BUCKET, "p", S3Options(endpoint_url="http://127.0.0.1:9", region="eu-west-1", max_pool_connections=5)
    )
    client = store.client  # building a client sends nothing
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.max_pool_connections == 5
    assert client.meta.config.signature_version is not UNSIGNED
    default = S3Storage(BUCKET, "p").client
    assert default.meta.endpoint_url == "https://s3.amazonaws.com"
    assert default.meta.config.max_pool_connections == 10
    assert default.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}
    assert (default.meta.config.connect_timeout, default.meta.config.read_timeout) == (10.0, 30.0)
    tuned = S3Storage(
        BUCKET, "p", S3Options(retry_mode="adaptive", max_attempts=3, connect_timeout=1, read_timeout=2)
    ).client.meta.config
    assert tuned.retries == {"mode": "adaptive", "total_max_attempts": 3}
    assert (tuned.connect_timeout, tuned.read_timeout) == (1, 2)


def test_s3_pool_has_a_connection_per_download_thread() -> None:
    endpoint = S3Options(endpoint_url="http://127.0.0.1:9")
    ds = StreamingWebDataset("s3://b/p", s3=endpoint, options=StreamOptions(max_workers=24))
    assert isinstance(ds.storage, S3Storage)
    assert ds.storage.client.meta.config.max_pool_connections == 24
    small = S3Options(endpoint_url="http://127.0.0.1:9", max_pool_connections=4)
    ds = StreamingWebDataset("s3://b/p", s3=small, options=StreamOptions(max_workers=6))
    assert isinstance(ds.storage, S3Storage)
    assert ds.storage.client.meta.config.max_pool_connections == 6


def _auth_headers(store: S3Storage) -> list[str | None]:
    seen: list[str | None] = []

    def hook(request: Any, **kw: Any) -> None:
        auth = request.headers.get("Authorization")
        seen.append(auth.decode() if isinstance(auth, bytes) else auth)

    store.client.meta.events.register("before-send.s3", hook)
    return seen


def test_s3_anonymous_requests_are_unsigned(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=b"abc", ACL="public-read")
    anon = S3Storage(BUCKET, "p", S3Options(anonymous=True))
    assert anon.client.meta.config.signature_version is UNSIGNED
    anon_auth = _auth_headers(anon)
    assert [i.name for i in anon.list(".tar")] == ["a.tar"]
    assert anon.read_range("a.tar", 0, 3) == b"abc"
    assert anon_auth == [None, None]

    signed = S3Storage(BUCKET, "p")
    signed_auth = _auth_headers(signed)
    signed.list(".tar")
    assert len(signed_auth) == 1
    assert signed_auth[0] is not None
    assert str(signed_auth[0]).startswith("AWS4-HMAC-SHA256 Credential=")


def test_s3_anonymous_is_named_in_errors(s3: Any) -> None:
    store = S3Storage(
        "no-such-bucket", "", S3Options(anonymous=True, endpoint_url="https://s3.amazonaws.com")
    )
    with pytest.raises(StorageError) as info:
        store.list(".tar")
    assert str(info.value).startswith(
        "cannot list s3://no-such-bucket (bucket='no-such-bucket', "
        "endpoint='https://s3.amazonaws.com', anonymous): NoSuchBucket"
    )


def test_s3_pickling_drops_the_client(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=b"abc")
    store = S3Storage(BUCKET, "p", S3Options(region="us-east-1"))
    original = store.client
    copy = pickle.loads(pickle.dumps(store))
    assert store.client is original  # the original keeps its client
    assert copy._client is None
    assert copy._pid is None
    assert (copy.bucket, copy.prefix, copy.options) == (BUCKET, "p", S3Options(region="us-east-1"))
    rebuilt = copy.client  # rebuilt lazily, on first use
    assert rebuilt is not original
    assert copy.client is rebuilt
    assert copy.read_range("a.tar", 1, 3) == b"bc"
    assert [i.name for i in copy.list(".tar")] == ["a.tar"]
    # pickles again after use (the lock is recreated, not pickled)
    again = pickle.loads(pickle.dumps(copy))
    assert again._client is None
    assert again.read_range("a.tar", 0, 1) == b"a"


def test_s3_client_is_rebuilt_when_the_pid_changes(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=b"abc")
    store = S3Storage(BUCKET, "p")
    first = store.client
    assert store.client is first
    real = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real + 1)
    second = store.client
    assert second is not first
    assert store.client is second
    assert store.read_range("a.tar", 0, 3) == b"abc"
    monkeypatch.setattr(os, "getpid", lambda: real)
    assert store.client is not second  # back in "another" process: built again


def test_s3_client_is_built_once_under_concurrent_first_use() -> None:
    store = S3Storage(BUCKET, "p")
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def use() -> None:
        barrier.wait()
        got.append(store.client)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    assert all(c is got[0] for c in got)


# =============================================================================================
# StreamingWebDataset over S3
# =============================================================================================

SMALL_CHUNKS = StreamOptions(chunk_size=700, buffer_bytes=64 * 1024, max_workers=4)


def _write_s3_dataset(num: int, per_shard: int, index: bool = True) -> list[str]:
    with ShardWriter(f"s3://{BUCKET}/prefix/train", maxcount=per_shard, index=index) as w:
        for i in range(num):
            w.write(sample(i, i // per_shard))
    return w.written


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataset_reads_every_sample_from_s3(s3: Any, shuffle: bool) -> None:
    written = _write_s3_dataset(23, 5)
    assert written == [f"shard-{i:06d}.tar" for i in range(5)]
    ds = StreamingWebDataset(
        f"s3://{BUCKET}/prefix", split="train", shuffle=shuffle, seed=1, options=SMALL_CHUNKS
    )
    assert [i.name for i in ds.shards] == written
    out = list(ds)
    keys = [s["__key__"] for s in out]
    assert len(keys) == 23
    assert sorted(keys) == all_keys(23)
    if not shuffle:
        assert keys == all_keys(23)
    for s in out:
        i = int(s["__key__"][1:])
        assert s["__url__"] == f"s3://{BUCKET}/prefix/train/shard-{i // 5:06d}.tar"
        assert s["txt"] == f"sample {i}".encode()
        assert s["cls"] == str(i % 10).encode()
        assert s["json"] == f'{{"i":{i},"shard":{i // 5}}}'.encode()


def test_dataset_on_an_empty_prefix_raises_no_shards(s3: Any) -> None:
    # things that are not shards directly under the location do not count
    s3.put_object(Bucket=BUCKET, Key="prefix/empty/readme.txt", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="prefix/empty/sub/a.tar", Body=b"x")
    ds = StreamingWebDataset(f"s3://{BUCKET}/prefix", split="empty")
    with pytest.raises(NoShardsError) as info:
        iter(ds)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.location == f"s3://{BUCKET}/prefix/empty"
    assert str(info.value) == f"no *.tar shards found directly under 's3://{BUCKET}/prefix/empty'"


@pytest.mark.parametrize("index", [False, True])
def test_dataset_lists_once_across_epochs_or_never_with_an_index(s3: Any, index: bool) -> None:
    _write_s3_dataset(12, 4, index=index)
    ds = StreamingWebDataset(
        f"s3://{BUCKET}/prefix", split="train", shuffle=True, seed=5, options=SMALL_CHUNKS
    )
    list_calls = _count_calls(ds.storage, "ListObjectsV2")  # type: ignore[arg-type]
    real_list = ds.storage.list
    wrapped: list[str] = []

    def counting_list(suffix: str) -> list[ObjectInfo]:
        wrapped.append(suffix)
        return real_list(suffix)

    ds.storage.list = counting_list  # type: ignore[method-assign]
    orders = []
    for epoch in range(3):
        keys = [s["__key__"] for s in ds]
        assert sorted(keys) == all_keys(12)
        assert ds.epoch == epoch
        orders.append(keys)
    assert wrapped == ([] if index else [".tar"])
    assert len(list_calls) == (0 if index else 1)
    assert orders[0] != orders[1]  # the epochs really were different passes


def _check_skipped_shrunk_shard(ds: StreamingWebDataset) -> None:
    keys = [s["__key__"] for s in ds]
    assert ds.error_counts == {"shard_format": 1}
    assert len(keys) == len(set(keys))
    assert set(keys) <= set(all_keys(15))
    # shards 0 and 2 are whole; of shard 1 at most what lies before the cut
    assert set(all_keys(5)) | set(all_keys(15)[10:]) <= set(keys)


def test_dataset_skips_a_local_shard_that_shrank_after_listing(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, maxcount=5) as w:
        for i in range(15):
            w.write(sample(i))
    options = StreamOptions(chunk_size=1024, buffer_bytes=64 * 1024)
    ds = StreamingWebDataset(tmp_path, on_error="skip", options=options)
    assert [i.size for i in ds.shards] == [16384] * 3  # listed before the shard changes
    path = tmp_path / "shard-000001.tar"
    path.write_bytes(path.read_bytes()[:1024])  # cut at a chunk boundary
    _check_skipped_shrunk_shard(ds)


def test_dataset_skips_an_s3_shard_that_shrank_after_listing(s3: Any) -> None:
    _write_s3_dataset(15, 5)
    options = StreamOptions(chunk_size=1024, buffer_bytes=64 * 1024)
    ds = StreamingWebDataset(f"s3://{BUCKET}/prefix", split="train", on_error="skip", options=options)
    assert [i.size for i in ds.shards] == [16384] * 3  # listed before the shard changes
    key = "prefix/train/shard-000001.tar"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body[:1024])  # cut at a chunk boundary
    _check_skipped_shrunk_shard(ds)


# -- streamed reads -----------------------------------------------------------------------------


def _drain(stream: Any, n: int) -> list[bytes]:
    out = []
    while piece := stream.read(n):
        out.append(piece)
    stream.close()
    return out


def test_local_open_read_streams_from_an_offset(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"0123456789")
    store = LocalStorage(tmp_path)
    assert _drain(store.open_read("a.tar", 3), 4) == [b"3456", b"789"]
    assert _drain(store.open_read("a.tar", 10), 4) == []
    with pytest.raises(ShardNotFoundError):
        store.open_read("gone.tar", 0)


def test_memory_open_read_streams_from_an_offset() -> None:
    store = MemoryStorage({"a.tar": b"0123456789"})
    assert _drain(store.open_read("a.tar", 1), 5) == [b"12345", b"6789"]
    with pytest.raises(ShardNotFoundError):
        store.open_read("gone.tar", 0)


def test_s3_open_read_is_one_request_from_an_offset(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=b"0123456789")
    store = S3Storage(BUCKET, "p")
    assert _drain(store.open_read("a.tar", 2), 3) == [b"234", b"567", b"89"]
    assert _drain(store.open_read("a.tar", 10), 3) == []  # at the end: nothing there
    assert _drain(store.open_read("a.tar", 0), 100) == [b"0123456789"]
    with pytest.raises(ShardNotFoundError) as exc:
        store.open_read("gone.tar", 0).read(1)  # the request goes out on the first read
    assert exc.value.url == f"s3://{BUCKET}/p/gone.tar"


def test_s3_warm_up_builds_this_process_client_without_a_request(s3: Any) -> None:
    store = S3Storage(BUCKET, "p", S3Options(region="us-east-1"))
    calls: list[str] = []
    store.warm_up()
    built = store._client
    assert built is not None
    built.meta.events.register("before-call.s3", lambda model, **kw: calls.append(model.name))
    store.warm_up()  # idempotent: the same client
    assert store.client is built
    assert calls == []
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=b"abc")
    assert store.read_range("a.tar", 0, 3) == b"abc"
    assert calls == ["GetObject"]
