"""Errors injected into a boto3 client in-process, through botocore's ``before-send`` event.

For moto's in-process ``mock_aws``, where no HTTP proxy can sit in front of the store. A
:class:`FaultHook` answers the first matching attempts of one operation with an S3 error
response, or raises as if the connection failed before any response; later attempts go on to
moto. It counts every matching attempt, so a test can assert how often botocore tried::

    hook = FaultHook("GetObject", [s3_error(503, "SlowDown")] * 2, match="shard-000003.tar")
    with hook.installed(ds.storage.client):
        samples = list(ds)
    assert hook.attempts == 3  # two refused, the third served

Handlers registered for ``before-send.s3.<Operation>`` run before moto's (registered for
``before-send``), and the first response returned wins. Retries are botocore's own: each attempt
emits ``before-send`` again. :func:`instant_backoff` removes botocore's backoff pauses, so tests
of retries stay fast.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pytest

__all__ = [
    "ConnectionFault",
    "ErrorResponse",
    "FaultHook",
    "connection_closed",
    "connection_refused",
    "instant_backoff",
    "read_timeout",
    "s3_error",
]


@dataclass(frozen=True)
class ErrorResponse:
    """An S3 error response: status, ``<Code>`` and ``<Message>``."""

    status: int
    code: str
    message: str = "injected by tests.faults.hooks"

    def response(self, url: str) -> Any:
        from botocore.awsrequest import AWSResponse

        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
            "<RequestId>FAULTHOOK</RequestId></Error>"
        ).encode()
        headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
        return AWSResponse(url, self.status, headers, _Raw(body))


@dataclass(frozen=True)
class ConnectionFault:
    """A failure before any response: the connection was closed, refused, or timed out."""

    kind: Literal["closed", "refused", "read_timeout"]

    def exception(self, url: str) -> Exception:
        from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

        cls = {"closed": ConnectionClosedError, "refused": EndpointConnectionError}.get(
            self.kind, ReadTimeoutError
        )
        exc: Exception = cls(endpoint_url=url)
        return exc


InjectedFault = ErrorResponse | ConnectionFault


def s3_error(status: int, code: str, message: str = "injected by tests.faults.hooks") -> ErrorResponse:
    """``s3_error(503, "SlowDown")``, ``s3_error(403, "AccessDenied")``, ..."""
    return ErrorResponse(status, code, message)


def connection_closed() -> ConnectionFault:
    """The server closed (or reset) the connection before a response."""
    return ConnectionFault("closed")


def connection_refused() -> ConnectionFault:
    """Nobody listening: ``EndpointConnectionError``."""
    return ConnectionFault("refused")


def read_timeout() -> ConnectionFault:
    """No response headers within the read timeout."""
    return ConnectionFault("read_timeout")


class _Raw:
    """The ``raw`` of an :class:`AWSResponse`: what botocore reads an error body from."""

    def __init__(self, body: bytes) -> None:
        self._body = io.BytesIO(body)

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        data = self._body.read()
        if data:
            yield data

    def read(self, amt: int | None = None) -> bytes:
        return self._body.read(amt)


class FaultHook:
    """The ``i``-th matching attempt of ``operation`` gets ``faults[i]``; later ones pass.

    Args:
        operation: Operation name, such as ``"GetObject"`` or ``"ListObjectsV2"``.
        faults: One fault per attempt, in order.
        match: Only attempts whose URL contains this string (or for which it returns ``True``).

    Attributes:
        urls: URL of every matching attempt, in order (faulted or not).
    """

    def __init__(
        self,
        operation: str,
        faults: Sequence[InjectedFault],
        *,
        match: str | Callable[[str], bool] | None = None,
    ) -> None:
        self.operation = operation
        self.faults = list(faults)
        self.match = match
        self.urls: list[str] = []
        self._lock = threading.Lock()

    @property
    def attempts(self) -> int:
        """Matching attempts seen."""
        with self._lock:
            return len(self.urls)

    @property
    def injected(self) -> int:
        """Attempts that got a fault."""
        with self._lock:
            return min(len(self.urls), len(self.faults))

    def _matches(self, url: str) -> bool:
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match in url
        return self.match(url)

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        url = str(request.url)
        if not self._matches(url):
            return None
        with self._lock:
            i = len(self.urls)
            self.urls.append(url)
        if i >= len(self.faults):
            return None
        fault = self.faults[i]
        if isinstance(fault, ConnectionFault):
            raise fault.exception(url)
        return fault.response(url)

    @property
    def _event(self) -> str:
        return f"before-send.s3.{self.operation}"

    def install(self, client: Any) -> None:
        """Register on ``client``'s events (the client of this process: ``ds.storage.client``)."""
        client.meta.events.register(self._event, self, unique_id=f"faulthook-{id(self)}")

    def remove(self, client: Any) -> None:
        client.meta.events.unregister(self._event, unique_id=f"faulthook-{id(self)}")

    @contextmanager
    def installed(self, client: Any) -> Iterator[FaultHook]:
        self.install(client)
        try:
            yield self
        finally:
            self.remove(client)


@contextmanager
def instant_backoff() -> Iterator[None]:
    """botocore retries at once: its standard-mode backoff (jittered, up to seconds for
    throttling errors) returns 0 within the block. Only the pauses change, not what is retried."""
    from botocore.retries import standard

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
        yield
