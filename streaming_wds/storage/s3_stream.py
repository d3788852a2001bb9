"""A shard's bytes from S3 as one stream that survives a body breaking off.

botocore retries a request (throttling, 5xx, connection errors) until its response begins, but
not a body that breaks off later: a connection closed or reset mid-body, a read stalled past the
read timeout, a body shorter than its ``Content-Length``. :class:`S3Stream` then sends a new
``GetObject`` for ``Range: bytes=<byte reached>-`` conditioned with ``If-Match`` on the ETag (from
the listing, else from the first response), at most ``max_resumes`` times per stream, with a
jittered exponential pause between attempts. If the object changed in between, the store answers
412 and :class:`~streaming_wds.errors.ShardChangedError` is raised: two versions of a shard are
never spliced.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from . import s3_errors

if TYPE_CHECKING:
    from .s3 import S3Storage

log = logging.getLogger(__name__)

_PAUSE = 0.05  # seconds before the first resume; doubled each time, at most _MAX_PAUSE
_MAX_PAUSE = 2.0


class _Receiver:
    """Reads a botocore body's ``http.client`` response straight into the caller's buffers.

    urllib3's ``readinto`` reads a new ``bytes`` object and copies it into the buffer: one
    allocation and one copy of every piece, in the download thread's own malloc arena (about
    1 MB left resident per thread). ``http.client``'s ``readinto`` receives into the buffer
    itself. Unlike urllib3 it ends quietly when the connection closes before ``Content-Length``
    is reached; that is raised here as ``IncompleteRead``, a broken body, as urllib3 raises it.
    """

    def __init__(self, raw: Any, response: http.client.HTTPResponse) -> None:
        self._raw = raw  # urllib3's response, which owns the pooled connection
        self._response = response

    @classmethod
    def of(cls, body: Any) -> _Receiver | None:
        """One for ``body`` where urllib3 would hand its bytes over unchanged (botocore asks it
        not to decode content), else ``None``: then the body is read through urllib3."""
        raw = getattr(body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        if isinstance(fp, http.client.HTTPResponse) and getattr(raw, "decode_content", True) is False:
            return cls(raw, fp)
        return None

    def readinto(self, view: memoryview) -> int:
        n = self._response.readinto(view)
        left = self._response.length  # None when the body is chunked (http.client checks those)
        if not n and len(view) and left:
            raise http.client.IncompleteRead(b"", left)
        return n

    def release(self) -> None:
        """Before the body is closed: if it was read to its end, give its connection back to
        the pool for another request, as urllib3 does at the end of a body it reads."""
        if self._response.isclosed() and not self._response.length:
            self._raw.release_conn()


class S3Stream:
    """``GetObject`` of ``bytes=start-``, sent on the first read, read in pieces, resumed."""

    def __init__(self, store: S3Storage, name: str, start: int, etag: str | None, max_resumes: int) -> None:
        self._store = store
        self._name = name
        self._pos = start
        self._etag = etag
        self._max_resumes = max_resumes
        self.resumes = 0
        self._body: Any = None
        self._reader: Any = None  # what reads the body: a _Receiver, or the body itself
        self._ended = False

    @property
    def etag(self) -> str | None:
        """The version being read (``None`` until the first response if none was given)."""
        return self._etag

    def _open(self) -> None:
        target = f"{self._store.url(self._name)} from byte {self._pos}"
        byte_range = f"bytes={self._pos}-"
        got = self._store._ranged_get(self._name, byte_range, target, if_match=self._etag, at=self._pos)
        if got is None:
            self._ended = True
            return
        self._body, etag = got
        self._reader = _Receiver.of(self._body) or self._body
        if self._etag is None:
            self._etag = etag

    def _broke(self, exc: BaseException) -> None:
        """The body broke off at ``self._pos``: prepare a resume, or give up."""
        self._close_body()
        url = self._store.url(self._name)
        if self.resumes >= self._max_resumes:
            raise StorageError(
                f"cannot read {url} at byte {self._pos} ({self._store.describe()}): the response "
                f"broke off {self.resumes + 1} times (max_resumes={self._max_resumes}); last: "
                f"{s3_errors.reason(exc)}"
            ) from exc
        self.resumes += 1
        self._store.count_resume()
        log.warning(
            "resuming %s from byte %d (resume %d of at most %d) after: %s",
            url,
            self._pos,
            self.resumes,
            self._max_resumes,
            s3_errors.reason(exc),
        )
        time.sleep(min(_MAX_PAUSE, _PAUSE * 2 ** (self.resumes - 1)) * random.random())

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the object's end."""
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        del buf[got:]
        return bytes(buf)

    def readinto(self, view: memoryview) -> int:
        """Fill ``view``; returns the bytes read, fewer than ``len(view)`` only at the end."""
        got = 0
        while got < len(view) and not self._ended:
            if self._body is None:
                self._open()
                continue
            try:
                n: int = self._reader.readinto(view[got:])
            except Exception as exc:
                if not s3_errors.is_broken_body(exc):
                    raise
                self._broke(exc)
                continue
            if not n:
                self._ended = True
                self._close_body()
                break
            got += n
            self._pos += n
        return got

    def _close_body(self) -> None:
        body, reader, self._body, self._reader = self._body, self._reader, None, None
        if body is None:
            return
        if isinstance(reader, _Receiver):
            reader.release()
        body.close()

    def close(self) -> None:
        self._ended = True
        self._close_body()
