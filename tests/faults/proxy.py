"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for tests of what a flaky network does to a reader.

::

    with FaultProxy(server.endpoint) as proxy:
        proxy.add(truncate_after(3000), method="GET", path="shard-000001.tar")
        ds = StreamingWebDataset(..., s3=S3Options(endpoint_url=proxy.endpoint))
        ...
        first, resume = proxy.exchanges(path="shard-000001.tar")
        assert resume.request.range == "bytes=3000-"

How it works: every request read from a client connection (keep-alive, ``Content-Length`` or
chunked bodies, ``Expect: 100-continue``) is forwarded on a fresh upstream connection with
``Connection: close``, and the whole response is read (``Content-Length``, chunked or to EOF)
before anything goes back. A :class:`Rule` that matches the request then sees the complete body and
acts at an exact body offset; the response goes back de-chunked, with a ``Content-Length`` of the
complete body, so a client notices a body cut short. Faults that replace the response
(:func:`status`, :func:`refuse`, :func:`reset_before`) never reach the upstream server.

Every exchange is recorded (:meth:`FaultProxy.exchanges`): the request's method, target and
headers (``Range``, ``If-Match``), the status sent back with the upstream's response headers
(``ETag``), and the fault applied. Leaving the ``with`` block stops accepting, wakes every
connection (stalled ones included), joins every thread and closes every socket.

A reset closes the socket with ``SO_LINGER`` 0, which sends a RST only when no other process holds
a copy of it: connections accepted before a ``fork`` (DataLoader workers) are shared with the
children, so use :func:`truncate_after` (a ``shutdown``) for faults seen by forked workers.
"""

from __future__ import annotations

import contextlib
import http
import select
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Exchange",
    "Fault",
    "FaultProxy",
    "Request",
    "Rule",
    "corrupt_at",
    "delay",
    "refuse",
    "reset_after",
    "reset_before",
    "s3_error",
    "stall_after",
    "status",
    "truncate_after",
]

FaultKind = Literal["truncate", "reset", "stall", "corrupt", "delay", "status", "refuse", "reset_before"]

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_MAX_LINE = 64 * 1024
_POLL = 0.1  # seconds between checks of the stop flag while waiting on a socket


# -- faults ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What happens to a matching exchange; build one with the functions below."""

    kind: FaultKind
    at: int = 0
    seconds: float = 0.0
    code: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def forwards(self) -> bool:
        """Whether the request still reaches the upstream server."""
        return self.kind in ("truncate", "reset", "stall", "corrupt", "delay")


def truncate_after(n: int) -> Fault:
    """Send the headers and ``n`` body bytes, then close cleanly (FIN)."""
    return Fault("truncate", at=n)


def reset_after(n: int) -> Fault:
    """Send the headers and ``n`` body bytes, then reset the connection (RST)."""
    return Fault("reset", at=n)


def stall_after(n: int, seconds: float = 60.0) -> Fault:
    """Send the headers and ``n`` body bytes, then send nothing until the client gives up (or
    ``seconds`` pass, or the proxy stops); then close."""
    return Fault("stall", at=n, seconds=seconds)


def corrupt_at(offset: int) -> Fault:
    """Flip every bit of body byte ``offset`` (no change if the body is shorter)."""
    return Fault("corrupt", at=offset)


def delay(seconds: float) -> Fault:
    """Hold the complete response ``seconds`` before sending it."""
    return Fault("delay", seconds=seconds)


def status(code: int, body: bytes = b"", *, headers: tuple[tuple[str, str], ...] = ()) -> Fault:
    """Answer with ``code`` and ``body`` instead of forwarding (the connection stays open)."""
    return Fault("status", code=code, body=body, headers=headers)


def s3_error(code: int, error_code: str, message: str = "injected by FaultProxy") -> Fault:
    """An S3 error response: ``s3_error(503, "SlowDown")``, ``s3_error(403, "AccessDenied")``."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{error_code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()
    return status(code, body, headers=(("Content-Type", "application/xml"),))


def refuse() -> Fault:
    """Close the client connection (FIN) after reading the request, before any response."""
    return Fault("refuse")


def reset_before() -> Fault:
    """Reset the client connection (RST) after reading the request, before any response."""
    return Fault("reset_before")


# -- requests, rules and the log ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A request as the client sent it; header names are lower-case."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        """The unquoted path of the target, without the query."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.target).path)

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.target).query

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_match(self) -> str | None:
        return self.headers.get("if-match")

    @property
    def range_start(self) -> int | None:
        """``N`` of a ``Range: bytes=N-…`` header, else ``None``."""
        r = self.range
        if r is None or not r.startswith("bytes="):
            return None
        first = r[len("bytes=") :].split("-", 1)[0]
        return int(first) if first.isdigit() else None


@dataclass(frozen=True)
class Exchange:
    """One request and what the proxy did with it.

    Attributes:
        seq: Order of arrival at the proxy (0-based).
        request: The request.
        status: Status sent to the client; ``None`` if no response was sent.
        response_headers: The upstream response's headers, names lower-case (empty when the
            request was not forwarded).
        body_size: Bytes of the upstream response body (0 when not forwarded).
        fault: The fault applied, if any.
    """

    seq: int
    request: Request
    status: int | None
    response_headers: dict[str, str]
    body_size: int
    fault: Fault | None


@dataclass
class Rule:
    """Apply ``fault`` to requests that match every given condition.

    The matching requests are counted (``seen``) by every rule whose conditions they meet; the
    ``nth`` (1-based) to the ``nth + times - 1``-th of them get the fault (``times=None``: every
    one from the ``nth`` on). When several rules would apply, the first added wins.

    Attributes:
        fault: What to do.
        method: HTTP method, such as ``"GET"``.
        path: Substring of the request target (path and query), such as ``"shard-000001.tar"``
            or ``"list-type=2"`` (ListObjectsV2).
        nth: First matching request that gets the fault.
        times: How many matching requests get it; ``None`` for all from ``nth`` on.
        ranged: Only requests with (``True``) or without (``False``) a ``Range`` header.
        conditional: Only requests with (``True``) or without (``False``) ``If-Match``.
        when: Any further predicate on the request.
        on_apply: Called (on a proxy thread) with the request just before the fault is applied;
            for a forwarded request, after the upstream answered. Exceptions it raises are
            kept in :attr:`FaultProxy.callback_errors`.
    """

    fault: Fault
    method: str | None = None
    path: str | None = None
    nth: int = 1
    times: int | None = 1
    ranged: bool | None = None
    conditional: bool | None = None
    when: Callable[[Request], bool] | None = None
    on_apply: Callable[[Request], None] | None = None
    seen: int = 0
    applied: int = 0

    def matches(self, req: Request) -> bool:
        if self.method is not None and req.method != self.method.upper():
            return False
        if self.path is not None and self.path not in urllib.parse.unquote(req.target):
            return False
        if self.ranged is not None and (req.range is not None) != self.ranged:
            return False
        if self.conditional is not None and (req.if_match is not None) != self.conditional:
            return False
        return self.when is None or self.when(req)

    def _due(self) -> bool:
        last = None if self.times is None else self.nth + self.times - 1
        return self.seen >= self.nth and (last is None or self.seen <= last)


# -- sockets -------------------------------------------------------------------------------------


class _Closed(Exception):
    """The peer closed the connection (or the proxy is stopping)."""


class _Reader:
    """Buffered reads of lines and exact sizes from a socket, giving up when ``stop`` is set."""

    def __init__(self, sock: socket.socket, stop: threading.Event | None, timeout: float) -> None:
        self.sock = sock
        self.stop = stop
        self.timeout = timeout
        self.buf = bytearray()

    def _fill(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.stop is not None and self.stop.is_set():
                raise _Closed("proxy stopping")
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise _Closed("timed out") from None
                continue
            except OSError as exc:
                raise _Closed(str(exc)) from exc
            if not data:
                raise _Closed("connection closed")
            self.buf += data
            return

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > _MAX_LINE:
                raise _Closed("line too long")
            self._fill()

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill()
            except _Closed:
                out = bytes(self.buf)
                self.buf.clear()
                return out

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while True:
            line = self.readline()
            if not line:
                return out
            name, _, value = line.decode("latin-1").partition(":")
            out.append((name.strip(), value.strip()))

    def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.readline():  # trailers
                    pass
                return bytes(body)
            body += self.read(size)
            self.readline()


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _has_body(method: str, code: int) -> bool:
    return method != "HEAD" and code >= 200 and code not in (204, 304)


# -- the proxy -----------------------------------------------------------------------------------


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    log: list[Exchange] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``).

    Args:
        upstream: Base URL of the server behind the proxy (plain HTTP).
        upstream_timeout: Seconds to wait for the upstream server's response.
    """

    def __init__(self, upstream: str, *, upstream_timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(upstream)
        if url.scheme != "http" or url.hostname is None or url.port is None:
            raise ValueError(f"FaultProxy needs an http://host:port upstream, got {upstream!r}")
        self.upstream = (url.hostname, url.port)
        self.upstream_timeout = upstream_timeout
        self._state = _State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._conn_ids = 0
        self.port = 0

    # -- public ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str | None = None,
        nth: int = 1,
        times: int | None = 1,
        ranged: bool | None = None,
        conditional: bool | None = None,
        when: Callable[[Request], bool] | None = None,
        on_apply: Callable[[Request], None] | None = None,
    ) -> Rule:
        """Add a :class:`Rule` (see there for the conditions) and return it."""
        rule = Rule(fault, method, path, nth, times, ranged, conditional, when, on_apply)
        with self._lock:
            self._state.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule and the log."""
        with self._lock:
            self._state.rules.clear()
            self._state.log.clear()

    def exchanges(self, *, path: str | None = None, method: str | None = None) -> list[Exchange]:
        """Recorded exchanges in arrival order, optionally only those whose target contains
        ``path`` and whose method is ``method``."""
        with self._lock:
            log = list(self._state.log)
        return [
            e
            for e in log
            if (path is None or path in urllib.parse.unquote(e.request.target))
            and (method is None or e.request.method == method)
        ]

    @property
    def callback_errors(self) -> list[BaseException]:
        """Exceptions raised by ``on_apply`` callbacks (and by the proxy's own threads)."""
        with self._lock:
            return list(self._state.errors)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "fault-proxy-accept")

    def close(self) -> None:
        """Stop accepting, wake and close every connection, and join every thread. Idempotent.

        Raises:
            RuntimeError: If a thread does not finish within 10 seconds.
        """
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        stuck = []
        for t in threads:
            t.join(10.0)
            if t.is_alive():
                stuck.append(t.name)
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()
        if self._listener is not None:
            self._listener.close()
        if stuck:
            raise RuntimeError(f"FaultProxy threads did not finish: {stuck}")

    # -- plumbing --------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        t = threading.Thread(target=self._guard, args=(target, *args), name=name)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _guard(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:
            if not self._stop.is_set():
                with self._lock:
                    self._state.errors.append(exc)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            if self._stop.is_set():
                s.close()
                raise _Closed("proxy stopping")
            self._socks.add(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        s.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], _POLL)
            if not ready:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            try:
                self._track(conn)
            except _Closed:
                return
            conn.settimeout(_POLL)
            with self._lock:
                self._conn_ids += 1
                n = self._conn_ids
            self._spawn(self._serve, f"fault-proxy-conn-{n}", conn)

    def _pick(self, req: Request) -> Rule | None:
        with self._lock:
            chosen = None
            for rule in self._state.rules:
                if rule.matches(req):
                    rule.seen += 1
                    if chosen is None and rule._due():
                        chosen = rule
            if chosen is not None:
                chosen.applied += 1
            return chosen

    def _record(
        self, req: Request, code: int | None, headers: list[tuple[str, str]], size: int, fault: Fault | None
    ) -> None:
        with self._lock:
            self._state.log.append(
                Exchange(len(self._state.log), req, code, {k.lower(): v for k, v in headers}, size, fault)
            )

    def _callback(self, rule: Rule, req: Request) -> None:
        if rule.on_apply is None:
            return
        try:
            rule.on_apply(req)
        except Exception as exc:
            with self._lock:
                self._state.errors.append(exc)

    def _read_request(self, reader: _Reader, conn: socket.socket) -> tuple[Request, bytes]:
        line = reader.readline()
        while not line:  # tolerate stray CRLF between requests
            line = reader.readline()
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers = reader.headers()
        if (_get(headers, "expect") or "").lower() == "100-continue":
            self._send_all(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if (_get(headers, "transfer-encoding") or "").lower() == "chunked":
            body = reader.chunked()
        else:
            body = reader.read(int(_get(headers, "content-length") or 0))
        names = {k.lower(): v for k, v in headers}
        return Request(method.upper(), target, names), body

    def _forward(
        self, req: Request, raw_headers: dict[str, str], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream on a new connection; the complete response."""
        up = socket.create_connection(self.upstream, timeout=self.upstream_timeout)
        self._track(up)
        try:
            lines = [f"{req.method} {req.target} HTTP/1.1"]
            for k, v in raw_headers.items():
                if k in _HOP_BY_HOP or k in ("expect", "content-length"):
                    continue
                lines.append(f"{k}: {v}")
            if body or "content-length" in raw_headers or "transfer-encoding" in raw_headers:
                lines.append(f"content-length: {len(body)}")
            lines.append("connection: close")
            up.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            reader = _Reader(up, None, self.upstream_timeout)
            while True:
                version_code_reason = reader.readline().decode("latin-1").split(" ", 2)
                code = int(version_code_reason[1])
                reason = version_code_reason[2] if len(version_code_reason) > 2 else ""
                headers = reader.headers()
                if code >= 200 or code == 101:
                    break
            if not _has_body(req.method, code):
                data = b""
            elif (_get(headers, "transfer-encoding") or "").lower() == "chunked":
                data = reader.chunked()
            elif _get(headers, "content-length") is not None:
                data = reader.read(int(_get(headers, "content-length") or 0))
            else:
                data = reader.read_to_eof()
            return code, reason, headers, data
        finally:
            self._untrack(up)

    def _send_response(
        self,
        conn: socket.socket,
        req: Request,
        code: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        fault: Fault | None,
    ) -> bool:
        """Send the response, with ``fault`` applied; whether the connection stays open."""
        if not reason:
            try:
                reason = http.HTTPStatus(code).phrase
            except ValueError:
                reason = "Unknown"
        lines = [f"HTTP/1.1 {code} {reason}"]
        for k, v in headers:
            if k.lower() in _HOP_BY_HOP:
                continue
            if k.lower() == "content-length" and _has_body(req.method, code):
                continue
            lines.append(f"{k}: {v}")
        if _has_body(req.method, code):
            lines.append(f"Content-Length: {len(body)}")
        close_after = (req.headers.get("connection") or "").lower() == "close"
        if close_after:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if fault is None or fault.kind in ("corrupt", "delay"):
            if fault is not None and fault.kind == "corrupt" and fault.at < len(body):
                body = body[: fault.at] + bytes([body[fault.at] ^ 0xFF]) + body[fault.at + 1 :]
            if fault is not None and fault.kind == "delay":
                self._stop.wait(fault.seconds)
            self._send_all(conn, head + body)
            return not close_after
        self._send_all(conn, head + body[: fault.at])
        if fault.kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closed by the caller: RST
        if fault.kind == "stall":
            self._stall(conn, fault.seconds)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        return False

    def _send_all(self, conn: socket.socket, data: bytes) -> None:
        """``sendall`` that waits as long as the client takes to read, until the proxy stops."""
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                raise _Closed("proxy stopping")
            try:
                sent = conn.send(view[:65536])
            except TimeoutError:
                continue  # the client is not reading yet
            view = view[sent:]

    def _stall(self, conn: socket.socket, seconds: float) -> None:
        """Send nothing until the client closes, ``seconds`` pass, or the proxy stops."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([conn], [], [], _POLL)
            if not ready:
                continue
            try:
                if not conn.recv(65536):
                    return  # the client gave up
            except OSError:
                return

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn, self._stop, timeout=float("inf"))
        try:
            while not self._stop.is_set():
                try:
                    req, body = self._read_request(reader, conn)
                except _Closed:
                    return
                rule = self._pick(req)
                fault = rule.fault if rule is not None else None
                if rule is not None and fault is not None and not fault.forwards:
                    self._callback(rule, req)
                    if fault.kind == "status":
                        self._record(req, fault.code, list(fault.headers), 0, fault)
                        if self._send_response(
                            conn, req, fault.code, "", list(fault.headers), fault.body, None
                        ):
                            continue
                        return
                    self._record(req, None, [], 0, fault)
                    if fault.kind == "reset_before":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    else:
                        conn.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    code, reason, headers, data = self._forward(req, req.headers, body)
                except (OSError, _Closed, ValueError, IndexError) as exc:
                    if self._stop.is_set():
                        return
                    msg = f"FaultProxy: upstream failed: {type(exc).__name__}: {exc}".encode()
                    self._record(req, 502, [], 0, None)
                    if self._send_response(conn, req, 502, "", [("Content-Type", "text/plain")], msg, None):
                        continue
                    return
                if rule is not None:
                    self._callback(rule, req)
                self._record(req, code, headers, len(data), fault)
                if not self._send_response(conn, req, code, reason, headers, data, fault):
                    return
        except (OSError, _Closed):
            return  # the client went away mid-response, or the proxy is stopping
        finally:
            self._untrack(conn)
