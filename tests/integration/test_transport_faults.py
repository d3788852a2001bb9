"""What a flaky network and a changing store do to an epoch read from S3 (issue 5).

moto's threaded S3 server on 127.0.0.1 holds the data; a fault-injecting proxy
(:mod:`tests.faults.proxy`) sits between it and the reader and breaks chosen responses: error
statuses, connections closed or reset before or during a body, bodies that stall, bytes flipped.
botocore hooks (:mod:`tests.faults.hooks`) inject failures that no proxy can: a connection refused
or timed out before any response.

Recoverable faults must leave the epoch exactly as a clean run: the same samples, with the same
content, in the same order. A body that breaks off is resumed with ``Range: bytes=<byte reached>-``
and ``If-Match: <ETag>``, which the proxy's log shows. Faults that cannot be recovered from raise
the typed error that names the shard (or, under ``on_error="skip"``, count its kind).
"""

from __future__ import annotations

import gc
import io
import logging
import random
import tarfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import msgspec
import pytest

from streaming_wds import (
    DataError,
    MemoryStorage,
    S3Options,
    ShardChangedError,
    ShardFormatError,
    ShardNotFoundError,
    ShardWriter,
    StorageAuthError,
    StorageError,
    StreamingDataLoader,
    StreamingWebDataset,
    StreamOptions,
)
from tests.faults.hooks import (
    FaultHook,
    InjectedFault,
    connection_closed,
    connection_refused,
    instant_backoff,
    read_timeout,
)
from tests.faults.hooks import s3_error as hook_error
from tests.faults.proxy import (
    Exchange,
    FaultProxy,
    Request,
    corrupt_at,
    refuse,
    reset_after,
    reset_before,
    s3_error,
    stall_after,
    truncate_after,
)
from tests.helpers import Server, keys_of, moto_s3_server

BUCKET = "swds-faults"
NUM_SHARDS = 8
PER_SHARD = 20
NUM_SAMPLES = NUM_SHARDS * PER_SHARD
SEED = 7
OPTIONS = StreamOptions(
    chunk_size=4096, buffer_bytes=256 * 1024, max_workers=2, interleave=4, shuffle_block=4, prefetch=1
)
SECRET = "SECRETSENTINEL123"

Summary = list[tuple[str, str, bytes, bytes]]


def _sample(i: int) -> dict[str, Any]:
    """About 3 KB of incompressible payload, a little longer for every index modulo 7."""
    return {"__key__": f"s{i:06d}", "bin": random.Random(i).randbytes(2500 + (i % 7) * 150), "txt": f"t{i}"}


def _summary(samples: list[dict[str, Any]]) -> Summary:
    """Key, shard name and content of each sample, in order (independent of the prefix)."""
    return [(s["__key__"], s["__url__"].rsplit("/", 1)[1], s["bin"], s["txt"]) for s in samples]


def _shard_of(key: str) -> int:
    return int(key[1:]) // PER_SHARD


@dataclass(frozen=True)
class Member:
    header: int  # byte offset of the tar header
    data: int  # byte offset of the data
    size: int


@dataclass(frozen=True)
class Dataset:
    server: Server
    shuffled: Summary  # a clean epoch 0 with shuffle=True, seed=SEED
    ordered: Summary  # a clean epoch 0 with shuffle=False
    etags: dict[str, str]  # shard name -> ETag, as listed
    sizes: dict[str, int]
    members: dict[str, list[Member]]  # shard name -> its tar members

    def url(self, prefix: str, shard: int) -> str:
        return f"s3://{BUCKET}/{prefix}/shard-{shard:06d}.tar"


def _client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def data() -> Iterator[Dataset]:
    """moto's server with the same shards under ``ds/`` (no index: listed) and ``idx/`` (with
    ``index.json``: CRC-32 checked), and a clean epoch read from it directly."""
    with moto_s3_server(BUCKET) as srv:
        for prefix, index in (("ds", False), ("idx", True)):
            with ShardWriter(f"s3://{BUCKET}/{prefix}", maxcount=PER_SHARD, s3=srv.s3, index=index) as w:
                for i in range(NUM_SAMPLES):
                    w.write(_sample(i))
            assert len(w.written) == NUM_SHARDS
            del w
        client = _client(srv.endpoint)
        try:
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix="ds/")["Contents"]
            etags = {o["Key"][3:]: o["ETag"] for o in listed}
            sizes = {o["Key"][3:]: o["Size"] for o in listed}
            members = {}
            for name in etags:
                body = client.get_object(Bucket=BUCKET, Key=f"ds/{name}")["Body"].read()
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    members[name] = [Member(m.offset, m.offset_data, m.size) for m in tar]
        finally:
            client.close()
        clean = {}
        for shuffle in (True, False):
            ds = StreamingWebDataset(
                f"s3://{BUCKET}/ds", s3=srv.s3, shuffle=shuffle, seed=SEED, options=OPTIONS
            )
            clean[shuffle] = _summary(list(ds))
            ds.storage.client.close()  # type: ignore[attr-defined]
            del ds
        gc.collect()  # close connections before the first test looks at threads
        assert sorted(clean[True]) == clean[False]
        assert [k for k, *_ in clean[False]] == [f"s{i:06d}" for i in range(NUM_SAMPLES)]
        yield Dataset(srv, clean[True], clean[False], etags, sizes, members)


@pytest.fixture
def proxy(data: Dataset) -> Iterator[FaultProxy]:
    with FaultProxy(data.server.endpoint) as p:
        yield p
        assert p.callback_errors == []


@pytest.fixture
def direct(data: Dataset) -> Iterator[Any]:
    """A boto3 client of the server itself (behind no proxy), for changing objects."""
    client = _client(data.server.endpoint)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    with instant_backoff():
        yield


def _ds(
    endpoint: str,
    prefix: str = "ds",
    *,
    shuffle: bool = True,
    on_error: Any = "raise",
    read_timeout: float = 30.0,
    max_attempts: int = 8,
    max_resumes: int = 5,
    profile: str | None = None,
) -> StreamingWebDataset:
    s3 = S3Options(
        endpoint_url=endpoint,
        region="us-east-1",
        read_timeout=read_timeout,
        max_attempts=max_attempts,
        profile=profile,
    )
    options = msgspec.structs.replace(OPTIONS, max_resumes=max_resumes)
    return StreamingWebDataset(
        f"s3://{BUCKET}/{prefix}", s3=s3, shuffle=shuffle, seed=SEED, on_error=on_error, options=options
    )


def _copy(direct: Any, src: str, dst: str) -> None:
    """Copy every object under ``src/`` to ``dst/`` (for tests that change objects)."""
    for o in direct.list_objects_v2(Bucket=BUCKET, Prefix=f"{src}/")["Contents"]:
        name = o["Key"][len(src) + 1 :]
        direct.copy_object(Bucket=BUCKET, Key=f"{dst}/{name}", CopySource={"Bucket": BUCKET, "Key": o["Key"]})


def _read_until_error(ds: StreamingWebDataset, error: type[BaseException]) -> tuple[Summary, Any]:
    got: list[dict[str, Any]] = []
    with pytest.raises(error) as info:
        for s in ds:
            got.append(s)
    return _summary(got), info.value


def _without(summary: Summary, shard: int) -> Summary:
    return [s for s in summary if _shard_of(s[0]) != shard]


def _check_prefix(got: Summary, clean: Summary, full_shards: int) -> None:
    """``got`` is the start of ``clean``: every sample of the first ``full_shards`` shards and
    some (maybe none) of the next one's, whose error ended the epoch."""
    assert got == clean[: len(got)]
    assert full_shards * PER_SHARD <= len(got) < (full_shards + 1) * PER_SHARD


def _shard_gets(proxy: FaultProxy, prefix: str, shard: int) -> list[Exchange]:
    return proxy.exchanges(path=f"{prefix}/shard-{shard:06d}.tar", method="GET")


def _check_resumes(gets: list[Exchange], etag: str, starts: list[int]) -> None:
    """The requests after the first are resumes from ``starts``, conditioned on ``etag``."""
    assert [e.request.range for e in gets[1:]] == [f"bytes={s}-" for s in starts]
    assert [e.request.if_match for e in gets[1:]] == [etag] * len(starts)
    assert [e.status for e in gets[1:]] == [206] * len(starts)


# =============================================================================================
# Recoverable: the epoch is exactly a clean one
# =============================================================================================


def test_a_clean_run_through_the_proxy_reads_each_shard_once(data: Dataset, proxy: FaultProxy) -> None:
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    for shard in range(NUM_SHARDS):
        (get,) = _shard_gets(proxy, "ds", shard)
        assert get.request.range_start in (None, 0)
    assert len(proxy.exchanges(path="list-type=2")) == 1


STATUSES = [
    (503, "SlowDown"),
    (500, "InternalError"),
    (502, "BadGateway"),
    (504, "GatewayTimeout"),
    (429, "SlowDown"),
]


@pytest.mark.parametrize(("code", "error"), STATUSES)
def test_error_statuses_on_get_object_are_retried(
    data: Dataset, proxy: FaultProxy, code: int, error: str
) -> None:
    proxy.add(s3_error(code, error), method="GET", path="ds/shard-000003.tar", times=2)
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    gets = _shard_gets(proxy, "ds", 3)
    assert [e.status for e in gets] == [code, code, 206]
    assert len({e.request.range for e in gets}) == 1  # the same request, retried


@pytest.mark.parametrize(("code", "error"), STATUSES)
def test_error_statuses_on_list_objects_are_retried(
    data: Dataset, proxy: FaultProxy, code: int, error: str
) -> None:
    proxy.add(s3_error(code, error), method="GET", path="list-type=2", times=2)
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    assert [e.status for e in proxy.exchanges(path="list-type=2")] == [code, code, 200]


@pytest.mark.parametrize("fault", [refuse(), reset_before()], ids=["closed", "reset"])
def test_connections_closed_before_the_response_are_retried(
    data: Dataset, proxy: FaultProxy, fault: Any
) -> None:
    proxy.add(fault, method="GET", path="ds/shard-000005.tar", times=2)
    proxy.add(fault, method="GET", path="list-type=2")
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    assert [e.status for e in _shard_gets(proxy, "ds", 5)] == [None, None, 206]
    assert [e.status for e in proxy.exchanges(path="list-type=2")] == [None, 200]


@pytest.mark.parametrize(
    ("operation", "match", "fault"),
    [
        ("GetObject", "shard-000002.tar", connection_refused()),
        ("GetObject", "shard-000002.tar", connection_closed()),
        ("GetObject", "shard-000002.tar", read_timeout()),
        ("GetObject", "shard-000002.tar", hook_error(503, "SlowDown")),
        ("ListObjectsV2", None, connection_refused()),
        ("ListObjectsV2", None, hook_error(500, "InternalError")),
    ],
    ids=["get-refused", "get-closed", "get-timeout", "get-503", "list-refused", "list-500"],
)
def test_failures_before_any_response_are_retried_by_botocore(
    data: Dataset, operation: str, match: str | None, fault: InjectedFault
) -> None:
    ds = _ds(data.server.endpoint)
    hook = FaultHook(operation, [fault] * 3, match=match)
    with hook.installed(ds.storage.client):  # type: ignore[attr-defined]
        assert _summary(list(ds)) == data.shuffled
    assert (hook.attempts, hook.injected) == (4, 3)
    ds.storage.client.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_retries_stop_at_max_attempts(data: Dataset, proxy: FaultProxy, on_error: str) -> None:
    proxy.add(s3_error(503, "SlowDown"), method="GET", path="ds/shard-000003.tar", times=None)
    ds = _ds(proxy.endpoint, shuffle=False, on_error=on_error, max_attempts=3)
    got, exc = _read_until_error(ds, StorageError)
    assert not isinstance(exc, DataError | StorageAuthError)  # a transport failure, not bad data
    assert data.url("ds", 3) in str(exc)
    assert "SlowDown" in str(exc)
    assert got == data.ordered[: 3 * PER_SHARD]
    assert [e.status for e in _shard_gets(proxy, "ds", 3)] == [503] * 3


def test_list_retries_stop_at_max_attempts(data: Dataset) -> None:
    ds = _ds(data.server.endpoint, max_attempts=2)
    hook = FaultHook("ListObjectsV2", [connection_refused()] * 5)
    with hook.installed(ds.storage.client), pytest.raises(StorageError) as info:  # type: ignore[attr-defined]
        _ = ds.shards
    assert hook.attempts == 2
    assert f"s3://{BUCKET}/ds" in str(info.value)
    ds.storage.client.close()  # type: ignore[attr-defined]


def _truncation_points(data: Dataset) -> dict[str, int]:
    members = data.members["shard-000002.tar"]
    bins = [m for m in members if m.size > 1000]
    return {
        "first-header": 100,
        "first-member-data": bins[0].data + 1000,
        "chunk-boundary": 4096,
        "later-header": members[21].header + 200,
        "last-member-data": bins[-1].data + 1500,
    }


@pytest.mark.parametrize(
    "where", ["first-header", "first-member-data", "chunk-boundary", "later-header", "last-member-data"]
)
def test_a_body_cut_short_is_resumed_from_the_byte_reached(
    data: Dataset, proxy: FaultProxy, where: str
) -> None:
    at = _truncation_points(data)[where]
    proxy.add(truncate_after(at), method="GET", path="ds/shard-000002.tar")
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    gets = _shard_gets(proxy, "ds", 2)
    assert gets[0].fault == truncate_after(at)
    _check_resumes(gets, data.etags["shard-000002.tar"], [at])


def test_a_body_cut_short_is_resumed_with_the_etag_of_the_first_response(
    data: Dataset, proxy: FaultProxy
) -> None:
    # with index.json there is no listing: the ETag comes from the first response
    proxy.add(truncate_after(7000), method="GET", path="idx/shard-000004.tar")
    assert _summary(list(_ds(proxy.endpoint, "idx"))) == data.shuffled
    assert proxy.exchanges(path="list-type=2") == []
    gets = _shard_gets(proxy, "idx", 4)
    assert gets[0].request.if_match is None
    _check_resumes(gets, gets[0].response_headers["etag"], [7000])
    assert gets[0].response_headers["etag"] == data.etags["shard-000004.tar"]


@pytest.mark.parametrize("at", [1500, 20000])
def test_a_body_reset_mid_stream_is_resumed(data: Dataset, proxy: FaultProxy, at: int) -> None:
    proxy.add(reset_after(at), method="GET", path="ds/shard-000006.tar")
    assert _summary(list(_ds(proxy.endpoint))) == data.shuffled
    _, resume = _shard_gets(proxy, "ds", 6)
    # bytes received just before a reset may be lost by the client's buffering: at most `at`
    assert resume.request.range_start is not None
    assert 0 <= resume.request.range_start <= at
    assert resume.request.range == f"bytes={resume.request.range_start}-"
    assert resume.request.if_match == data.etags["shard-000006.tar"]


def test_a_stalled_body_is_resumed_after_the_read_timeout(data: Dataset, proxy: FaultProxy) -> None:
    proxy.add(stall_after(9000, seconds=30), method="GET", path="ds/shard-000001.tar")
    assert _summary(list(_ds(proxy.endpoint, read_timeout=1.0))) == data.shuffled
    first, resume = _shard_gets(proxy, "ds", 1)
    assert first.fault == stall_after(9000, seconds=30)
    assert resume.request.range_start is not None
    assert 0 < resume.request.range_start <= 9000
    assert resume.request.if_match == data.etags["shard-000001.tar"]


def test_a_shard_may_break_max_resumes_times(data: Dataset, proxy: FaultProxy) -> None:
    proxy.add(truncate_after(3000), method="GET", path="ds/shard-000001.tar", times=3)
    assert _summary(list(_ds(proxy.endpoint, max_resumes=3))) == data.shuffled
    _check_resumes(_shard_gets(proxy, "ds", 1), data.etags["shard-000001.tar"], [3000, 6000, 9000])


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_one_break_more_than_max_resumes_is_a_storage_error(
    data: Dataset, proxy: FaultProxy, on_error: str
) -> None:
    proxy.add(truncate_after(3000), method="GET", path="ds/shard-000001.tar", times=4)
    ds = _ds(proxy.endpoint, shuffle=False, on_error=on_error, max_resumes=3)
    got, exc = _read_until_error(ds, StorageError)
    assert not isinstance(exc, DataError)  # never skipped: the data may be fine
    assert data.url("ds", 1) in str(exc)
    assert "12000" in str(exc)  # the byte reached
    assert exc.__cause__ is not None
    _check_prefix(got, data.ordered, full_shards=1)
    gets = _shard_gets(proxy, "ds", 1)
    _check_resumes(gets, data.etags["shard-000001.tar"], [3000, 6000, 9000])


@pytest.mark.s3server
def test_faults_seen_by_dataloader_worker_processes(data: Dataset, proxy: FaultProxy) -> None:
    def loader() -> StreamingDataLoader:
        return StreamingDataLoader(
            _ds(proxy.endpoint), batch_size=8, num_workers=2, multiprocessing_context="fork"
        )

    clean = keys_of(iter(loader()))
    assert sorted(clean) == [k for k, *_ in data.ordered]
    proxy.clear()
    proxy.add(truncate_after(5000), method="GET", path="ds/shard-000001.tar")
    proxy.add(truncate_after(30000), method="GET", path="ds/shard-000004.tar")
    proxy.add(s3_error(503, "SlowDown"), method="GET", path="ds/shard-000006.tar")
    proxy.add(s3_error(500, "InternalError"), method="GET", path="list-type=2")
    assert keys_of(iter(loader())) == clean
    _check_resumes(_shard_gets(proxy, "ds", 1), data.etags["shard-000001.tar"], [5000])
    _check_resumes(_shard_gets(proxy, "ds", 4), data.etags["shard-000004.tar"], [30000])
    assert [e.status for e in _shard_gets(proxy, "ds", 6)] == [503, 206]


# =============================================================================================
# Not recoverable: a typed error naming the shard, or skipped and counted
# =============================================================================================


def _replacement_shard() -> bytes:
    """A valid shard of other samples (keys s009000…), to overwrite one with."""
    store = MemoryStorage()
    with ShardWriter(store, maxcount=PER_SHARD, index=False) as w:
        for i in range(9000, 9000 + PER_SHARD):
            w.write(_sample(i))
    return store.objects["shard-000000.tar"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_object_replaced_between_requests_is_never_spliced(
    data: Dataset, proxy: FaultProxy, direct: Any, on_error: str
) -> None:
    prefix = f"changed-{on_error}"
    _copy(direct, "ds", prefix)
    key = f"{prefix}/shard-000002.tar"
    new = _replacement_shard()

    def overwrite(req: Request) -> None:
        direct.put_object(Bucket=BUCKET, Key=key, Body=new)

    proxy.add(truncate_after(700), method="GET", path=key, on_apply=overwrite)
    ds = _ds(proxy.endpoint, prefix, shuffle=False, on_error=on_error)
    if on_error == "raise":
        got, exc = _read_until_error(ds, ShardChangedError)
        assert got == data.ordered[: 2 * PER_SHARD]
        assert exc.url == data.url(prefix, 2)
        assert exc.offset == 700
        assert data.url(prefix, 2) in str(exc) and "700" in str(exc)
    else:
        assert _summary(list(ds)) == _without(data.ordered, 2)
        assert ds.error_counts == {"shard_changed": 1}
    first, resume = _shard_gets(proxy, prefix, 2)
    assert resume.request.range == "bytes=700-"
    assert resume.request.if_match == first.response_headers["etag"] == data.etags["shard-000002.tar"]
    assert resume.status == 412


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_shard_deleted_after_listing(data: Dataset, proxy: FaultProxy, direct: Any, on_error: str) -> None:
    prefix = f"deleted-{on_error}"
    _copy(direct, "ds", prefix)
    ds = _ds(proxy.endpoint, prefix, shuffle=False, on_error=on_error)
    assert len(ds.shards) == NUM_SHARDS  # listed
    direct.delete_object(Bucket=BUCKET, Key=f"{prefix}/shard-000004.tar")
    if on_error == "raise":
        got, exc = _read_until_error(ds, ShardNotFoundError)
        assert exc.url == data.url(prefix, 4)
        assert isinstance(exc, FileNotFoundError) and isinstance(exc, DataError)
        assert got == data.ordered[: 4 * PER_SHARD]
    else:
        assert _summary(list(ds)) == _without(data.ordered, 4)
        assert ds.error_counts == {"shard_missing": 1}
    assert [e.status for e in _shard_gets(proxy, prefix, 4)] == [404]  # not retried


@pytest.mark.parametrize(("on_error", "cut"), [("raise", 300), ("raise", 13000), ("skip", 300)])
def test_an_object_shorter_than_its_index_entry(
    data: Dataset, proxy: FaultProxy, direct: Any, on_error: str, cut: int
) -> None:
    prefix = f"short-{on_error}-{cut}"
    _copy(direct, "idx", prefix)
    key = f"{prefix}/shard-000005.tar"
    body = direct.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    direct.put_object(Bucket=BUCKET, Key=key, Body=body[:cut])
    ds = _ds(proxy.endpoint, prefix, shuffle=False, on_error=on_error)
    if on_error == "raise":
        got, exc = _read_until_error(ds, ShardFormatError)
        size = data.sizes["shard-000005.tar"]
        assert exc.url == data.url(prefix, 5)
        assert f"object ended after {cut} bytes but was listed with {size}" in str(exc)
        _check_prefix(got, data.ordered, full_shards=5)
    else:
        assert _summary(list(ds)) == _without(data.ordered, 5)
        assert ds.error_counts == {"shard_format": 1}


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_byte_flipped_in_transit_fails_the_crc(data: Dataset, proxy: FaultProxy, on_error: str) -> None:
    bins = [m for m in data.members["shard-000006.tar"] if m.size > 1000]
    proxy.add(corrupt_at(bins[3].data + 10), method="GET", path="idx/shard-000006.tar")
    ds = _ds(proxy.endpoint, "idx", shuffle=False, on_error=on_error)
    if on_error == "raise":
        got, exc = _read_until_error(ds, ShardFormatError)
        assert exc.url == data.url("idx", 6)
        assert "CRC-32" in str(exc)
        # checked when the shard has been read to its end: its samples may have gone out
        assert [k for k, *_ in got] == [k for k, *_ in data.ordered[: len(got)]]
        assert 6 * PER_SHARD <= len(got) <= 7 * PER_SHARD
    else:
        got = _summary(list(ds))
        assert ds.error_counts == {"shard_format": 1}
        assert _without(got, 6) == _without(data.ordered, 6)
    assert [e.fault for e in _shard_gets(proxy, "idx", 6)] == [corrupt_at(bins[3].data + 10)]


# =============================================================================================
# Credentials: never retried, never shown
# =============================================================================================


def _texts(exc: BaseException) -> str:
    """Everything an exception shows: str and repr of it and its whole chain, and the traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _check_auth_error(exc: StorageAuthError, endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(exc, StorageError) and isinstance(exc, PermissionError)
    assert not isinstance(exc, DataError)
    assert BUCKET in str(exc)
    assert endpoint in str(exc)
    assert SECRET not in _texts(exc)
    assert SECRET not in caplog.text


AUTH_ERRORS = [
    (403, "AccessDenied"),
    (403, "InvalidAccessKeyId"),
    (403, "SignatureDoesNotMatch"),
    (400, "ExpiredToken"),
]


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSENTINEL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="streaming_wds")


@pytest.mark.parametrize(("code", "error"), AUTH_ERRORS)
@pytest.mark.usefixtures("secret_env")
def test_refused_credentials_are_not_retried(
    proxy: FaultProxy, caplog: pytest.LogCaptureFixture, code: int, error: str
) -> None:
    proxy.add(s3_error(code, error), times=None)
    ds = _ds(proxy.endpoint, on_error="skip")
    with pytest.raises(StorageAuthError) as info:
        list(ds)
    _check_auth_error(info.value, proxy.endpoint, caplog)
    assert error in str(info.value)
    assert len(proxy.exchanges()) == 1


@pytest.mark.usefixtures("secret_env")
def test_credentials_refused_for_one_shard_mid_epoch(
    data: Dataset, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.add(s3_error(403, "AccessDenied"), method="GET", path="ds/shard-000003.tar", times=None)
    ds = _ds(proxy.endpoint, shuffle=False, on_error="skip")
    got, exc = _read_until_error(ds, StorageAuthError)
    _check_auth_error(exc, proxy.endpoint, caplog)
    assert data.url("ds", 3) in str(exc)
    assert got == data.ordered[: 3 * PER_SHARD]
    assert [e.status for e in _shard_gets(proxy, "ds", 3)] == [403]


def test_refused_credentials_of_a_profile_name_it(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[faulty]\naws_access_key_id = AKIDSENTINEL\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    caplog.set_level(logging.DEBUG, logger="streaming_wds")
    proxy.add(s3_error(403, "InvalidAccessKeyId"), times=None)
    with pytest.raises(StorageAuthError) as info:
        list(_ds(proxy.endpoint, profile="faulty"))
    _check_auth_error(info.value, proxy.endpoint, caplog)
    assert "faulty" in str(info.value)
    assert len(proxy.exchanges()) == 1


def test_missing_credentials(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata request
    monkeypatch.setenv("BOTO_CONFIG", "/nonexistent/boto-config")
    with pytest.raises(StorageAuthError) as info:
        list(_ds(proxy.endpoint))
    assert BUCKET in str(info.value)
    assert proxy.endpoint in str(info.value)
    assert proxy.exchanges() == []  # nothing was sent
