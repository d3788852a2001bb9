"""The fault-injecting proxy itself (``tests/faults/proxy.py``), against a tiny stdlib HTTP server."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.faults.hooks import (
    FaultHook,
    connection_closed,
    connection_refused,
    instant_backoff,
    read_timeout,
)
from tests.faults.hooks import s3_error as s3_error_response
from tests.faults.proxy import (
    FaultProxy,
    Request,
    Rule,
    corrupt_at,
    delay,
    refuse,
    reset_after,
    reset_before,
    s3_error,
    stall_after,
    status,
    truncate_after,
)

BODY = bytes(range(256)) * 40  # 10,240 bytes
CHUNKS = [b"alpha-", b"beta-", b"gamma"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _seen(self) -> None:
        with self.server.lock:
            self.server.seen.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            )

    def do_HEAD(self) -> None:
        self._seen()
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("ETag", '"abc"')
        self.end_headers()

    def do_GET(self) -> None:
        self._seen()
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for c in CHUNKS:
                self.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/eof":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
            return
        start = 0
        rng = self.headers.get("Range")
        if rng is not None:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(BODY) - start))
        self.send_header("ETag", '"abc"')
        self.end_headers()
        self.wfile.write(BODY[start:])

    def do_PUT(self) -> None:
        self._seen()
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Upstream(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    srv = _Upstream()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name="upstream")
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.endpoint) as p:
        yield p


def _conn(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)


def _raw_get(proxy: FaultProxy, target: str = "/obj", timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return s


def _recv_until_end(s: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything received until EOF, or until an error (returned too)."""
    got = bytearray()
    while True:
        try:
            data = s.recv(65536)
        except OSError as exc:
            return bytes(got), exc
        if not data:
            return bytes(got), None
        got += data


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


# -- forwarding --------------------------------------------------------------------------------


def test_forwards_requests_on_one_keep_alive_connection(proxy: FaultProxy, upstream: _Upstream) -> None:
    c = _conn(proxy)
    try:
        c.request("GET", "/obj", headers={"X-Test": "one", "Range": "bytes=10-"})
        r = c.getresponse()
        assert (r.status, r.read()) == (206, BODY[10:])
        c.request("HEAD", "/obj")
        r = c.getresponse()
        assert (r.status, r.getheader("Content-Length"), r.read()) == (200, str(len(BODY)), b"")
        c.request("PUT", "/echo", body=b"payload")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"payload")
        c.request("GET", "/chunked")
        r = c.getresponse()
        # de-chunked: the client gets a Content-Length
        assert r.getheader("Transfer-Encoding") is None
        assert r.getheader("Content-Length") == str(len(b"".join(CHUNKS)))
        assert r.read() == b"".join(CHUNKS)
        c.request("GET", "/eof")
        r = c.getresponse()
        assert r.read() == b"until the end"
    finally:
        c.close()
    log = proxy.exchanges()
    assert [(e.seq, e.request.method, e.request.target, e.status) for e in log] == [
        (0, "GET", "/obj", 206),
        (1, "HEAD", "/obj", 200),
        (2, "PUT", "/echo", 200),
        (3, "GET", "/chunked", 200),
        (4, "GET", "/eof", 200),
    ]
    assert log[0].request.headers["x-test"] == "one"
    assert log[0].request.range == "bytes=10-"
    assert log[0].request.range_start == 10
    assert log[0].response_headers["etag"] == '"abc"'
    assert log[0].body_size == len(BODY) - 10
    assert all(e.fault is None for e in log)
    # each request went upstream on its own connection
    assert [m for m, _, _ in upstream.seen] == ["GET", "HEAD", "PUT", "GET", "GET"]
    assert all(h["connection"] == "close" for _, _, h in upstream.seen)
    assert upstream.seen[0][2]["x-test"] == "one"


def test_expect_100_continue_is_answered(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        raw = b""
        while not raw.endswith(b"data"):
            raw += s.recv(1000)
    assert raw.startswith(b"HTTP/1.1 200 ")


def test_chunked_request_bodies_are_forwarded(proxy: FaultProxy, upstream: _Upstream) -> None:
    c = _conn(proxy)
    try:
        c.request("PUT", "/echo", body=iter([b"ab", b"cde"]), encode_chunked=True)
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"abcde")
    finally:
        c.close()
    assert upstream.seen[0][2]["content-length"] == "5"


def test_an_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once closed
    with FaultProxy(f"http://127.0.0.1:{dead}") as p:
        c = _conn(p)
        try:
            c.request("GET", "/obj")
            r = c.getresponse()
            assert r.status == 502
            assert b"upstream failed" in r.read()
        finally:
            c.close()
        assert [e.status for e in p.exchanges()] == [502]


# -- faults ------------------------------------------------------------------------------------


def test_truncate_after_sends_n_body_bytes_then_fin(proxy: FaultProxy) -> None:
    proxy.add(truncate_after(3000), path="/obj")
    with _raw_get(proxy) as s:
        raw, err = _recv_until_end(s)
    head, body = _split(raw)
    assert err is None  # a clean close
    assert f"Content-Length: {len(BODY)}".encode() in head  # the complete body was announced
    assert body == BODY[:3000]
    (e,) = proxy.exchanges()
    assert (e.status, e.fault, e.body_size) == (200, truncate_after(3000), len(BODY))


def test_truncated_body_is_an_incomplete_read_for_http_client(proxy: FaultProxy) -> None:
    proxy.add(truncate_after(100), path="/obj")
    c = _conn(proxy)
    try:
        c.request("GET", "/obj")
        r = c.getresponse()
        with pytest.raises(http.client.IncompleteRead) as exc:
            r.read()
        assert exc.value.partial == BODY[:100]
    finally:
        c.close()


def test_reset_after_sends_n_body_bytes_then_rst(proxy: FaultProxy) -> None:
    proxy.add(reset_after(2500), path="/obj")
    with _raw_get(proxy) as s:
        time.sleep(0.2)  # the RST has arrived; the bytes before it are still delivered
        raw, err = _recv_until_end(s)
    assert isinstance(err, ConnectionResetError)
    assert _split(raw)[1] == BODY[:2500]


def test_stall_after_sends_n_bytes_then_nothing_and_close_does_not_wait(proxy: FaultProxy) -> None:
    proxy.add(stall_after(1000, seconds=60), path="/obj")
    with _raw_get(proxy, timeout=0.5) as s:
        raw = b""
        with pytest.raises(TimeoutError):
            while True:
                raw += s.recv(65536)
        assert _split(raw)[1] == BODY[:1000]
        started = time.monotonic()
        proxy.close()  # wakes the stalled connection
        assert time.monotonic() - started < 2.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fault-proxy")]


def test_a_stall_ends_when_the_client_gives_up(proxy: FaultProxy) -> None:
    proxy.add(stall_after(10, seconds=60), path="/obj")
    s = _raw_get(proxy, timeout=0.3)
    with pytest.raises(TimeoutError):
        while True:
            s.recv(65536)
    s.close()
    deadline = time.monotonic() + 3.0
    while [t for t in threading.enumerate() if t.name.startswith("fault-proxy-conn")]:
        assert time.monotonic() < deadline, "the stalled connection's thread did not end"
        time.sleep(0.02)


def test_stall_for_a_limited_time_then_close(proxy: FaultProxy) -> None:
    proxy.add(stall_after(10, seconds=0.3), path="/obj")
    with _raw_get(proxy) as s:
        started = time.monotonic()
        raw, err = _recv_until_end(s)
    assert err is None
    assert _split(raw)[1] == BODY[:10]
    assert 0.25 < time.monotonic() - started < 3.0


def test_corrupt_at_flips_one_byte(proxy: FaultProxy) -> None:
    proxy.add(corrupt_at(777), path="/obj")
    c = _conn(proxy)
    try:
        c.request("GET", "/obj")
        got = c.getresponse().read()
        c.request("GET", "/obj")  # the next one is intact, on the same connection
        again = c.getresponse().read()
    finally:
        c.close()
    assert len(got) == len(BODY)
    assert [i for i in range(len(BODY)) if got[i] != BODY[i]] == [777]
    assert got[777] == BODY[777] ^ 0xFF
    assert again == BODY


def test_delay_holds_the_response(proxy: FaultProxy) -> None:
    proxy.add(delay(0.3), path="/obj")
    c = _conn(proxy)
    try:
        started = time.monotonic()
        c.request("GET", "/obj")
        assert c.getresponse().read() == BODY
        assert time.monotonic() - started >= 0.3
    finally:
        c.close()


def test_status_replaces_the_response_not_forwarded(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.add(s3_error(503, "SlowDown"), path="/obj")
    proxy.add(status(412, b"nope"), method="PUT")
    c = _conn(proxy)
    try:
        c.request("GET", "/obj")
        r = c.getresponse()
        body = r.read()
        assert (r.status, r.getheader("Content-Type")) == (503, "application/xml")
        assert b"<Code>SlowDown</Code>" in body
        c.request("PUT", "/echo", body=b"x")
        r = c.getresponse()
        assert (r.status, r.read()) == (412, b"nope")
        c.request("GET", "/obj")  # the connection stays usable
        assert c.getresponse().read() == BODY
    finally:
        c.close()
    assert [(m, p) for m, p, _ in upstream.seen] == [("GET", "/obj")]
    assert [e.status for e in proxy.exchanges()] == [503, 412, 200]


def test_refuse_closes_before_any_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.add(refuse(), path="/obj")
    c = _conn(proxy)
    try:
        c.request("GET", "/obj")
        with pytest.raises(http.client.RemoteDisconnected):
            c.getresponse()
    finally:
        c.close()
    assert upstream.seen == []
    (e,) = proxy.exchanges()
    assert (e.status, e.fault) == (None, refuse())


def test_reset_before_resets_before_any_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.add(reset_before(), path="/obj")
    with _raw_get(proxy) as s:
        time.sleep(0.1)
        raw, err = _recv_until_end(s)
    assert raw == b""
    assert isinstance(err, ConnectionResetError)
    assert upstream.seen == []


# -- rules -------------------------------------------------------------------------------------


def _req(method: str = "GET", target: str = "/b/k.tar", **headers: str) -> Request:
    return Request(method, target, {k.replace("_", "-"): v for k, v in headers.items()})


def test_request_properties() -> None:
    r = _req(target="/bucket/a%20b.tar?list-type=2&prefix=x", range="bytes=42-", if_match='"e"')
    assert (r.path, r.query, r.range, r.range_start, r.if_match) == (
        "/bucket/a b.tar",
        "list-type=2&prefix=x",
        "bytes=42-",
        42,
        '"e"',
    )
    assert _req().range_start is None
    assert _req(range="bytes=-5").range_start is None


def test_rule_conditions() -> None:
    f = status(500)
    assert Rule(f, method="get").matches(_req())
    assert not Rule(f, method="PUT").matches(_req())
    assert Rule(f, path="k.tar").matches(_req())
    assert not Rule(f, path="other").matches(_req())
    assert Rule(f, path="a b").matches(_req(target="/a%20b"))  # on the unquoted target
    assert Rule(f, ranged=True).matches(_req(range="bytes=0-"))
    assert not Rule(f, ranged=True).matches(_req())
    assert Rule(f, ranged=False).matches(_req())
    assert Rule(f, conditional=True).matches(_req(if_match='"e"'))
    assert not Rule(f, conditional=False).matches(_req(if_match='"e"'))
    assert not Rule(f, when=lambda r: r.method == "PUT").matches(_req())


def _statuses(proxy: FaultProxy, n: int, target: str = "/obj") -> list[int]:
    c = _conn(proxy)
    out = []
    try:
        for _ in range(n):
            c.request("GET", target)
            r = c.getresponse()
            r.read()
            out.append(r.status)
    finally:
        c.close()
    return out


def test_nth_and_times_pick_which_matching_requests_fail(proxy: FaultProxy) -> None:
    rule = proxy.add(status(500), path="/obj", nth=2, times=2)
    assert _statuses(proxy, 5) == [200, 500, 500, 200, 200]
    assert (rule.seen, rule.applied) == (5, 2)


def test_times_none_fails_every_request_from_nth_on(proxy: FaultProxy) -> None:
    proxy.add(status(503), path="/obj", nth=3, times=None)
    assert _statuses(proxy, 5) == [200, 200, 503, 503, 503]


def test_the_first_rule_wins_and_every_matching_rule_counts(proxy: FaultProxy) -> None:
    first = proxy.add(status(500), path="/obj", nth=2)
    second = proxy.add(status(502), path="/obj", nth=1, times=3)
    assert _statuses(proxy, 4) == [502, 500, 502, 200]
    assert (first.seen, first.applied, second.seen, second.applied) == (4, 1, 4, 2)


def test_clear_drops_rules_and_log(proxy: FaultProxy) -> None:
    proxy.add(status(500), times=None)
    assert _statuses(proxy, 1) == [500]
    proxy.clear()
    assert proxy.exchanges() == []
    assert _statuses(proxy, 1) == [200]


def test_on_apply_runs_before_the_fault_and_its_errors_are_kept(proxy: FaultProxy) -> None:
    calls: list[Request] = []
    proxy.add(truncate_after(5), path="/obj", on_apply=calls.append)

    def boom(req: Request) -> None:
        raise RuntimeError("callback failed")

    proxy.add(status(500), path="/other", on_apply=boom)
    with _raw_get(proxy) as s:
        _, body = _split(_recv_until_end(s)[0])
    assert body == BODY[:5]
    assert [c.target for c in calls] == ["/obj"]
    assert _statuses(proxy, 1, "/other") == [500]  # the fault still applies
    assert [str(e) for e in proxy.callback_errors] == ["callback failed"]


# -- lifetime ----------------------------------------------------------------------------------


def test_close_joins_threads_closes_idle_connections_and_stops_listening(upstream: _Upstream) -> None:
    p = FaultProxy(upstream.endpoint)
    p.start()
    c = _conn(p)
    c.request("GET", "/obj")
    c.getresponse().read()  # an idle keep-alive connection stays open
    assert any(t.name.startswith("fault-proxy-conn") for t in threading.enumerate())
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 2.0
    c.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    p.close()  # idempotent


def test_upstream_must_be_plain_http_with_a_port() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        FaultProxy("https://127.0.0.1:443")
    with pytest.raises(ValueError, match="http://host:port"):
        FaultProxy("http://127.0.0.1")


# -- botocore hooks (tests/faults/hooks.py), in-process under moto's mock_aws ---------------------


@pytest.fixture
def mocked_s3() -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws(), instant_backoff():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="hooks-bucket")
        client.put_object(Bucket="hooks-bucket", Key="k", Body=b"data")
        client.put_object(Bucket="hooks-bucket", Key="other", Body=b"other data")
        yield client
        client.close()


def test_hook_answers_the_first_attempts_then_lets_them_through(mocked_s3: Any) -> None:
    hook = FaultHook("GetObject", [s3_error_response(503, "SlowDown"), connection_closed()], match="/k")
    with hook.installed(mocked_s3):
        assert mocked_s3.get_object(Bucket="hooks-bucket", Key="other")["Body"].read() == b"other data"
        assert hook.attempts == 0  # not matched
        assert mocked_s3.get_object(Bucket="hooks-bucket", Key="k")["Body"].read() == b"data"
        assert (hook.attempts, hook.injected) == (3, 2)
        assert mocked_s3.list_objects_v2(Bucket="hooks-bucket")["KeyCount"] == 2  # another operation
    assert hook.urls == ["https://hooks-bucket.s3.amazonaws.com/k"] * 3
    assert mocked_s3.get_object(Bucket="hooks-bucket", Key="k")["Body"].read() == b"data"
    assert hook.attempts == 3  # removed


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (s3_error_response(500, "InternalError"), "InternalError"),
        (connection_refused(), "EndpointConnectionError"),
        (connection_closed(), "ConnectionClosedError"),
        (read_timeout(), "ReadTimeoutError"),
    ],
)
def test_hook_faults_are_retried_until_max_attempts(mocked_s3: Any, fault: Any, error: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", region_name="us-east-1", config=Config(retries={"mode": "standard", "total_max_attempts": 3})
    )
    hook = FaultHook("GetObject", [fault] * 10, match=lambda url: url.endswith("/k"))
    try:
        with hook.installed(client), pytest.raises(Exception) as info:
            client.get_object(Bucket="hooks-bucket", Key="k")
    finally:
        client.close()
    assert error in f"{type(info.value).__name__} {info.value}"
    assert hook.attempts == 3


def test_hook_auth_errors_are_not_retried(mocked_s3: Any) -> None:
    from botocore.exceptions import ClientError

    hook = FaultHook("ListObjectsV2", [s3_error_response(403, "AccessDenied")] * 5)
    with hook.installed(mocked_s3), pytest.raises(ClientError) as info:
        mocked_s3.list_objects_v2(Bucket="hooks-bucket")
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert hook.attempts == 1
