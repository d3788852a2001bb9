"""S3 shard streams under failure: resumed bodies, changed objects, refused credentials.

moto's in-process mock serves the objects; the client's ``get_object`` is wrapped so that chosen
responses break off after a number of body bytes, the way a real connection does (botocore
raises, it does not retry a body). Faults on the wire are covered by the proxy tests in
``tests/integration/test_transport_faults.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
from moto import mock_aws

from streaming_wds import (
    S3Options,
    S3Storage,
    ShardChangedError,
    ShardNotFoundError,
    StorageAuthError,
    StorageError,
)

BUCKET = "swds-faults"
DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's (and the stream's) pauses between attempts are not what is tested here."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    monkeypatch.setattr("streaming_wds.storage.s3_stream._PAUSE", 0.0)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="p/a.tar", Body=DATA)
        yield client


class _Breaking:
    """A response body that raises ``exc`` once ``limit`` bytes have been read from it."""

    def __init__(self, body: Any, limit: int, exc: Exception) -> None:
        self.body, self.left, self.exc = body, limit, exc

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            raise self.exc
        data: bytes = self.body.read(min(n, self.left))
        self.left -= len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()


def _break_bodies(store: S3Storage, limits: list[int], exc: Exception) -> list[dict[str, Any]]:
    """Wrap ``get_object``: the i-th response breaks after ``limits[i]`` bytes (later ones don't).

    Returns the list of calls' arguments, appended as they are made.
    """
    client = store.client
    real = client.get_object
    calls: list[dict[str, Any]] = []

    def get_object(**kw: Any) -> Any:
        calls.append(kw)
        resp = real(**kw)
        if len(calls) <= len(limits):
            resp["Body"] = _Breaking(resp["Body"], limits[len(calls) - 1], exc)
        return resp

    client.get_object = get_object
    return calls


def _read_all(stream: Any, piece: int = 4096) -> bytes:
    out = []
    while chunk := stream.read(piece):
        out.append(chunk)
    stream.close()
    return b"".join(out)


def _etag(s3: Any) -> str:
    etag: str = s3.head_object(Bucket=BUCKET, Key="p/a.tar")["ETag"]
    return etag


def _broken() -> ResponseStreamingError:
    return ResponseStreamingError(error="Connection broken: IncompleteRead(3000 bytes read)")


def test_a_broken_body_is_resumed_from_the_byte_reached_on_the_same_version(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    etag = _etag(s3)
    calls = _break_bodies(store, [3000, 5000], _broken())
    stream = store.open_read("a.tar", 0, etag=etag, max_resumes=2)
    assert _read_all(stream) == DATA
    assert [(c["Range"], c["IfMatch"]) for c in calls] == [
        ("bytes=0-", etag),
        ("bytes=3000-", etag),
        ("bytes=8000-", etag),
    ]
    assert store.resumes == 2


def test_a_stream_from_an_offset_resumes_too(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    calls = _break_bodies(store, [100], ReadTimeoutError(endpoint_url="http://127.0.0.1:1/p/a.tar"))
    stream = store.open_read("a.tar", 7000, etag=_etag(s3), max_resumes=1)
    assert _read_all(stream, 64) == DATA[7000:]
    assert [c["Range"] for c in calls] == ["bytes=7000-", "bytes=7100-"]


def test_without_a_listed_etag_the_first_response_pins_the_version(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    calls = _break_bodies(store, [1000], ConnectionResetError(104, "Connection reset by peer"))
    assert _read_all(store.open_read("a.tar", 0, max_resumes=1)) == DATA
    assert "IfMatch" not in calls[0]
    assert calls[1]["IfMatch"] == _etag(s3)


def test_resumes_are_bounded(s3: Any) -> None:
    store = S3Storage(BUCKET, "p", S3Options(endpoint_url=None, profile=None))
    _break_bodies(store, [100, 100, 100, 100], _broken())
    stream = store.open_read("a.tar", 0, etag=_etag(s3), max_resumes=2)
    with pytest.raises(StorageError) as info:
        _read_all(stream)
    assert not isinstance(info.value, ShardChangedError)
    assert str(info.value) == (
        f"cannot read s3://{BUCKET}/p/a.tar at byte 300 (bucket='{BUCKET}'): the response broke off "
        "3 times (max_resumes=2); last: ResponseStreamingError: An error occurred while reading from "
        "response stream: Connection broken: IncompleteRead(3000 bytes read)"
    )
    assert store.resumes == 2


def test_no_resume_without_max_resumes(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    calls = _break_bodies(store, [100], _broken())
    with pytest.raises(StorageError, match=r"at byte 100 .*broke off 1 times \(max_resumes=0\)"):
        _read_all(store.open_read("a.tar", 0))
    assert len(calls) == 1


def test_an_object_replaced_mid_read_is_never_spliced(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    etag = _etag(s3)
    calls = _break_bodies(store, [4096], _broken())
    stream = store.open_read("a.tar", 0, etag=etag, max_resumes=3)
    assert stream.read(4096) == DATA[:4096]
    # the object is replaced while its first response is being read (it breaks at 4096)
    s3.put_object(Bucket=BUCKET, Key="p/a.tar", Body=DATA[::-1])
    with pytest.raises(ShardChangedError) as info:
        stream.read(4096)
    assert info.value.offset == 4096
    assert str(info.value) == (
        f"s3://{BUCKET}/p/a.tar at byte 4096: the object changed while it was read "
        f"(ETag {etag} no longer matches); its two versions are not spliced"
    )
    assert len(calls) == 2


def test_a_listed_etag_that_no_longer_matches_is_a_changed_shard(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    with pytest.raises(ShardChangedError, match=r"at byte 0: the object changed"):
        store.open_read("a.tar", 0, etag='"0123456789abcdef0123456789abcdef"').read(10)


def test_a_vanished_object_is_a_missing_shard(s3: Any) -> None:
    store = S3Storage(BUCKET, "p")
    stream = store.open_read("a.tar", 0, etag=_etag(s3), max_resumes=1)
    s3.delete_object(Bucket=BUCKET, Key="p/a.tar")
    with pytest.raises(ShardNotFoundError):
        stream.read(10)


def _respond(store: S3Storage, status: int, code: str, times: int) -> list[str]:
    """The first ``times`` requests get an S3 error response ``status``/``code``."""
    sent: list[str] = []

    def hook(request: Any, **kw: Any) -> AWSResponse | None:
        sent.append(request.url)
        if len(sent) > times:
            return None
        body = f"<Error><Code>{code}</Code><Message>injected {code}</Message></Error>".encode()
        raw = _Raw(body)
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, raw)

    store.client.meta.events.register("before-send.s3", hook)
    return sent


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kw: Any) -> Iterator[bytes]:
        yield self.body


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "SlowDown"),
        (500, "InternalError"),
        (502, "BadGateway"),
        (504, "GatewayTimeout"),
        (429, "TooManyRequests"),
    ],
)
def test_throttling_and_server_errors_are_retried(s3: Any, status: int, code: str) -> None:
    store = S3Storage(BUCKET, "p", S3Options(max_attempts=4))
    sent = _respond(store, status, code, times=3)
    assert _read_all(store.open_read("a.tar", 0)) == DATA
    assert len(sent) == 4
    infos = store.list(".tar")
    assert [i.name for i in infos] == ["a.tar"]


def test_retries_are_bounded_by_max_attempts(s3: Any) -> None:
    store = S3Storage(BUCKET, "p", S3Options(max_attempts=2))
    sent = _respond(store, 503, "SlowDown", times=5)
    with pytest.raises(StorageError, match=r"SlowDown: injected SlowDown"):
        store.open_read("a.tar", 0).read(10)
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (403, "AccessDenied"),
        (403, "InvalidAccessKeyId"),
        (403, "SignatureDoesNotMatch"),
        (400, "ExpiredToken"),
    ],
)
def test_refused_credentials_are_not_retried_and_never_shown(
    s3: Any, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="streaming_wds")
    store = S3Storage(BUCKET, "p", S3Options(endpoint_url="http://127.0.0.1:9"))
    sent = _respond(store, status, code, times=10)
    with pytest.raises(StorageAuthError) as info:
        store.open_read("a.tar", 0).read(10)
    assert isinstance(info.value, PermissionError)
    assert str(info.value) == (
        f"cannot read s3://{BUCKET}/p/a.tar from byte 0 (bucket='{BUCKET}', "
        f"endpoint='http://127.0.0.1:9'): credentials missing, refused or expired: {code}: injected {code}"
    )
    assert len(sent) == 1
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in str(info.value) and secret not in repr(info.value.__cause__)
    assert secret not in caplog.text


def test_no_credentials_is_an_auth_error(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Storage(BUCKET, "p")
    with pytest.raises(
        StorageAuthError, match=r"credentials missing, refused or expired: NoCredentialsError"
    ):
        store.list(".tar")
