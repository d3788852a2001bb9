"""S3 and S3-compatible stores through boto3.

The boto3 client is created lazily, once per process: it is dropped when the object is pickled
and rebuilt when the process id changes (fork), so datasets work with fork, spawn and forkserver
DataLoader workers. A forked worker builds its client from the boto3 session inherited from the
parent, whose loaded service model makes that ten times cheaper than a new session (about
15 ms of CPU instead of 150).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..config import S3Options
from ..errors import (
    ObjectNotFoundError,
    ShardChangedError,
    ShardNotFoundError,
    StorageAuthError,
    StorageError,
)
from . import s3_errors
from .base import ObjectInfo
from .s3_stream import S3Stream

_MIN_POOL = 10  # botocore's default pool size


class S3Storage:
    """Objects under ``s3://bucket/prefix``."""

    #: Objects at least this large are uploaded in parts (aborted on failure, so a failed
    #: upload never leaves an object under its final name).
    multipart_threshold = 64 * 1024 * 1024

    def __init__(self, bucket: str, prefix: str, options: S3Options | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options or S3Options()
        self._client: Any = None
        self._session: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._reserved = 0  # connections reserved for download threads
        #: Shard streams resumed after their body broke off, in this process.
        self.resumes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_session"] = None
        state["_pid"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def reserve_connections(self, n: int) -> None:
        """Make the connection pool at least ``n`` (the download threads); before first use."""
        with self._lock:
            if n > self._reserved:
                self._reserved = n
                self._client = None  # rebuilt with the larger pool on next use

    def count_resume(self) -> None:
        with self._lock:
            self.resumes += 1

    def describe(self) -> str:
        """Bucket, profile and endpoint, for messages (never credentials)."""
        o = self.options
        parts = [f"bucket={self.bucket!r}"]
        if o.profile:
            parts.append(f"profile={o.profile!r}")
        if o.endpoint_url:
            parts.append(f"endpoint={o.endpoint_url!r}")
        if o.anonymous:
            parts.append("anonymous")
        return ", ".join(parts)

    @property
    def client(self) -> Any:
        """The boto3 S3 client of this process, created on first use."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    self._client = self._make_client()
                    self._pid = pid
        return self._client

    def warm_up(self) -> None:
        """Create this process's client now rather than in the first request's download thread.

        Creating a client costs tens of milliseconds of CPU; done by the first of several
        download threads, it holds the GIL while the others start and send their requests.
        """
        _ = self.client

    def _make_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        from .s3_models import botocore_session

        o = self.options
        config = Config(
            signature_version=UNSIGNED if o.anonymous else None,
            max_pool_connections=max(o.max_pool_connections or _MIN_POOL, self._reserved),
            retries={"mode": o.retry_mode, "total_max_attempts": o.max_attempts},
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
        )
        if self._session is None:
            self._session = boto3.session.Session(
                botocore_session=botocore_session(), profile_name=o.profile, region_name=o.region
            )
        return self._session.client("s3", endpoint_url=o.endpoint_url, config=config)

    def _error(self, action: str, target: str, exc: BaseException) -> StorageError:
        """The typed error for a failure of ``action`` on ``target`` (see ``s3_errors``)."""
        if s3_errors.is_auth_error(exc):
            return StorageAuthError(
                f"cannot {action} {target} ({self.describe()}): credentials missing, refused or "
                f"expired: {s3_errors.reason(exc)}"
            )
        return StorageError(f"cannot {action} {target} ({self.describe()}): {s3_errors.reason(exc)}")

    @staticmethod
    def _is_store_error(exc: BaseException) -> bool:
        return s3_errors.is_client_error(exc) or s3_errors.is_botocore_error(exc)

    def list(self, suffix: str) -> list[ObjectInfo]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        infos: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(prefix) :]
                    if name.endswith(suffix):
                        infos.append(
                            ObjectInfo(
                                name=name,
                                size=int(obj["Size"]),
                                url=f"s3://{self.bucket}/{obj['Key']}",
                                etag=obj.get("ETag"),
                            )
                        )
        except Exception as exc:
            if self._is_store_error(exc):
                raise self._error("list", self.location, exc) from exc
            raise
        return sorted(infos, key=lambda i: i.name)

    def _ranged_get(
        self, name: str, byte_range: str, target: str, *, if_match: str | None = None, at: int = 0
    ) -> tuple[Any, str | None] | None:
        """``(body, etag)`` of ``GetObject`` for ``byte_range`` (``bytes=a-b`` or ``bytes=a-``),
        only of version ``if_match`` if given; ``None`` if the range starts at or past the end.

        Raises:
            ShardNotFoundError: If the object does not exist.
            ShardChangedError: If it is no longer version ``if_match`` (412).
            StorageAuthError: If the credentials are missing, refused or expired.
            StorageError: For any other failure (after botocore's retries), naming ``target``.
        """
        kwargs = {"IfMatch": if_match} if if_match is not None else {}
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name), Range=byte_range, **kwargs)
        except Exception as exc:
            code = s3_errors.code(exc) if s3_errors.is_client_error(exc) else ""
            if code in s3_errors.NOT_FOUND:
                raise ShardNotFoundError(self.url(name)) from exc
            if code in s3_errors.BAD_RANGE:
                return None
            if code in s3_errors.CHANGED:
                raise ShardChangedError(
                    self.url(name),
                    at,
                    f"the object changed while it was read (ETag {if_match} no longer matches); "
                    "its two versions are not spliced",
                ) from exc
            if self._is_store_error(exc):
                raise self._error("read", target, exc) from exc
            raise
        return resp["Body"], resp.get("ETag")

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        target = f"{self.url(name)} bytes {start}-{stop}"
        got = self._ranged_get(name, f"bytes={start}-{stop - 1}", target, at=start)
        if got is None:
            return b""
        try:
            return bytes(got[0].read())
        except Exception as exc:
            if s3_errors.is_botocore_error(exc):
                raise self._error("read", target, exc) from exc
            raise

    def open_read(self, name: str, start: int, etag: str | None = None, max_resumes: int = 0) -> S3Stream:
        """A stream of ``name`` from byte ``start``: one request, resumed up to ``max_resumes``
        times if its body breaks off, reading only version ``etag`` if given (see ``s3_stream``)."""
        return S3Stream(self, name, start, etag, max_resumes)

    def get(self, name: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
            return bytes(resp["Body"].read())
        except Exception as exc:
            if s3_errors.is_client_error(exc) and s3_errors.code(exc) in s3_errors.NOT_FOUND:
                raise ObjectNotFoundError(self.url(name)) from exc
            if self._is_store_error(exc):
                raise self._error("read", self.url(name), exc) from exc
            raise

    def put(self, name: str, data: bytes) -> None:
        import io

        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_threshold // 4, 5 * 1024 * 1024),
            use_threads=False,
        )
        try:
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(name), Config=config)
        except Exception as exc:
            if isinstance(exc, S3UploadFailedError) or self._is_store_error(exc):
                raise self._error("write", self.url(name), exc) from exc
            raise
