"""A small, cheap S3-compatible server over a local directory, for benchmarks (127.0.0.1 only).

``ROOT/<bucket>/<key>`` is object ``s3://bucket/key``. It answers what a loader needs and
nothing more: ``ListObjectsV2`` (prefix, delimiter, ``max-keys``, continuation tokens,
``start-after``), ``HeadBucket``, ``HeadObject`` and ``GetObject`` with ``Range`` and the
conditional headers (``If-Match``, ``If-None-Match``, ``If-Modified-Since``,
``If-Unmodified-Since``), ``PutObject`` (including ``aws-chunked`` bodies) and multipart
uploads (create, upload part, complete, abort), so boto3's ``upload_file`` works. Requests are
not authenticated, so ``curl http://127.0.0.1:PORT/bucket/key`` works too.

Bodies go out with ``os.sendfile``, so serving costs about as little CPU as a static file
server: the point is to leave the two cores to the loader under test. Options emulate a remote
store: ``latency`` seconds before the first byte of every response, ``bandwidth`` bytes per
second shared by all connections (a token bucket), and ``connection_bandwidth`` bytes per second
for each response on its own (a remote store's per-connection throughput).

Run it in its own process (``python benchmarks/s3server.py ROOT --latency-ms 20``; it prints
``PORT <n>`` when listening) or in-process with :class:`S3Server` as a context manager.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import html
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_SEND = 256 * 1024


class _Throttle:
    """A token bucket shared by all connections: ``rate`` bytes per second, 1/10 s burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate / 10, _SEND)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _route(self) -> tuple[str, str, dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = urllib.parse.unquote(url.path).lstrip("/")
        bucket, _, key = path.partition("/")
        return bucket, key, query

    def _file(self, bucket: str, key: str) -> Path | None:
        root = self.server.root
        path = (root / bucket / key).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._wait()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, resource: str = "") -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{html.escape(message)}</Message>"
            f"<Resource>{html.escape(resource)}</Resource></Error>"
        ).encode()
        self._reply(status, body, {"Content-Type": "application/xml"})

    def _wait(self) -> None:
        if self.server.latency:
            time.sleep(self.server.latency)

    def _drain(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length) if length else b""
        if "aws-chunked" in self.headers.get("Content-Encoding", ""):
            data = _unchunk(data)
        return data

    # -- verbs ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.count("requests")
        bucket, key, query = self._route()
        if not bucket or not (self.server.root / bucket).is_dir():
            self._error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
        elif not key:
            if self.command == "HEAD":
                self._reply(200)
            else:
                self._list(bucket, query)
        else:
            self._object(bucket, key)

    def do_PUT(self) -> None:
        self.server.count("requests")
        bucket, key, query = self._route()
        data = self._drain()
        if "uploadId" in query:  # UploadPart
            part = self.server.parts_dir(query["uploadId"]) / f"{int(query['partNumber']):05d}"
            part.write_bytes(data)
            self._reply(200, headers={"ETag": f'"{len(data):x}-{query["partNumber"]}"'})
            return
        if not key:
            (self.server.root / bucket).mkdir(parents=True, exist_ok=True)
            self._reply(200)
            return
        path = self.server.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._reply(200, headers={"ETag": _etag(path.stat())})

    def do_POST(self) -> None:
        self.server.count("requests")
        bucket, key, query = self._route()
        self._drain()
        if "uploads" in query:  # CreateMultipartUpload
            upload = f"{threading.get_ident():x}{time.monotonic_ns():x}"
            self.server.parts_dir(upload).mkdir(parents=True)
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult xmlns="{_XMLNS}">'
                f"<Bucket>{html.escape(bucket)}</Bucket><Key>{html.escape(key)}</Key>"
                f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>"
            )
            self._reply(200, body.encode(), {"Content-Type": "application/xml"})
        elif "uploadId" in query:  # CompleteMultipartUpload: parts in number order
            parts_dir = self.server.parts_dir(query["uploadId"])
            path = self.server.root / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
            with open(tmp, "wb") as out:
                for part in sorted(parts_dir.iterdir()):
                    out.write(part.read_bytes())
                    part.unlink()
            parts_dir.rmdir()
            os.replace(tmp, path)
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult xmlns="{_XMLNS}">'
                f"<Bucket>{html.escape(bucket)}</Bucket><Key>{html.escape(key)}</Key>"
                f"<ETag>{html.escape(_etag(path.stat()))}</ETag></CompleteMultipartUploadResult>"
            )
            self._reply(200, body.encode(), {"Content-Type": "application/xml"})
        else:
            self._error(501, "NotImplemented", "only multipart uploads are POSTed here")

    def do_DELETE(self) -> None:
        self.server.count("requests")
        bucket, key, query = self._route()
        if "uploadId" in query:  # AbortMultipartUpload
            parts_dir = self.server.parts_dir(query["uploadId"])
            for part in parts_dir.glob("*"):
                part.unlink()
            if parts_dir.exists():
                parts_dir.rmdir()
        else:
            (self.server.root / bucket / key).unlink(missing_ok=True)
        self._reply(204)

    def _list(self, bucket: str, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = min(int(query.get("max-keys", "1000")), 1000)
        after = query.get("continuation-token") or query.get("start-after", "")
        base = self.server.root / bucket
        keys = sorted(
            str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        contents: list[str] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key in keys:
            if not key.startswith(prefix) or key <= after:
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if (prefixes and prefixes[-1] == common) or common <= after:
                        continue
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    last = common
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            st = (base / key).stat()
            contents.append(
                f"<Contents><Key>{html.escape(key)}</Key><LastModified>{_iso(st.st_mtime)}</LastModified>"
                f"<ETag>{html.escape(_etag(st))}</ETag><Size>{st.st_size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = key
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_XMLNS}">',
            f"<Name>{html.escape(bucket)}</Name><Prefix>{html.escape(prefix)}</Prefix>",
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{html.escape(delimiter)}</Delimiter>")
        if truncated:
            parts.append(f"<NextContinuationToken>{html.escape(last)}</NextContinuationToken>")
        parts += contents
        parts += [f"<CommonPrefixes><Prefix>{html.escape(p)}</Prefix></CommonPrefixes>" for p in prefixes]
        parts.append("</ListBucketResult>")
        self._reply(200, "".join(parts).encode(), {"Content-Type": "application/xml"})

    def _object(self, bucket: str, key: str) -> None:
        path = self._file(bucket, key)
        if path is None:
            self._error(404, "NoSuchKey", "The specified key does not exist.", f"/{bucket}/{key}")
            return
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            etag = _etag(st)
            headers = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            failed = _preconditions(self.headers, etag, st.st_mtime)
            if failed == 412:
                self._error(412, "PreconditionFailed", "At least one of the preconditions failed")
                return
            if failed == 304:
                self._reply(304, headers={"ETag": etag})
                return
            size = st.st_size
            start, stop, status = 0, size, 200
            spec = self.headers.get("Range")
            if spec:
                parsed = _parse_range(spec, size)
                if parsed is None:
                    self._error(416, "InvalidRange", "The requested range is not satisfiable")
                    return
                start, stop = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            self._wait()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(stop - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            self._send(f.fileno(), start, stop)

    def _send(self, fd: int, start: int, stop: int) -> None:
        out = self.connection.fileno()
        throttle = self.server.throttle
        rate = self.server.connection_rate
        own = _Throttle(rate) if rate else None
        pos = start
        while pos < stop:
            n = min(_SEND, stop - pos)
            if throttle is not None:
                throttle.take(n)
            if own is not None:
                own.take(n)
            sent = os.sendfile(out, fd, pos, n)
            if sent == 0:
                raise ConnectionError("client went away")
            pos += sent
        self.server.count("bytes", stop - start)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            break
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out)


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


def _preconditions(headers: Any, etag: str, mtime: float) -> int | None:
    """412 or 304 if a conditional header fails (RFC 9110 order), else ``None``."""
    if (h := headers.get("If-Match")) is not None:
        if not _matches(h, etag):
            return 412
    elif (h := headers.get("If-Unmodified-Since")) is not None:
        when = email.utils.parsedate_to_datetime(h).timestamp()
        if int(mtime) > when:
            return 412
    if (h := headers.get("If-None-Match")) is not None:
        if _matches(h, etag):
            return 304
    elif (h := headers.get("If-Modified-Since")) is not None:
        when = email.utils.parsedate_to_datetime(h).timestamp()
        if int(mtime) <= when:
            return 304
    return None


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single ``bytes=`` range, or ``None`` if not satisfiable."""
    unit, _, value = spec.partition("=")
    first, _, last = value.strip().partition("-")
    if unit.strip() != "bytes" or "," in value:
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(first)
    stop = min(int(last) + 1, size) if last else size
    return (start, stop) if start < size and start < stop else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the connection threads
    request_queue_size = 128

    def __init__(
        self, root: Path, latency: float, bandwidth: float | None, connection_bandwidth: float | None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.latency = latency
        self.throttle = _Throttle(bandwidth) if bandwidth else None
        self.connection_rate = connection_bandwidth
        self.stats: dict[str, int] = {"requests": 0, "bytes": 0}
        self._stats_lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._stats_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._stats_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def hang_up(self) -> None:
        """End every open connection, so that their threads finish."""
        with self._stats_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def parts_dir(self, upload: str) -> Path:
        if not upload.isalnum():
            raise ValueError(f"bad upload id {upload!r}")
        return self.root / ".uploads" / upload

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is normal
            super().handle_error(request, client_address)

    def count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n


class S3Server:
    """The server in a background thread of this process; a context manager."""

    def __init__(
        self,
        root: str | Path,
        latency: float = 0.0,
        bandwidth: float | None = None,
        connection_bandwidth: float | None = None,
    ) -> None:
        self._httpd = _HTTPServer(Path(root), latency, bandwidth, connection_bandwidth)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._httpd.stats)

    def start(self) -> S3Server:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="s3server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.hang_up()
        self._httpd.server_close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="directory whose subdirectories are the buckets")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before every response")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="cap, MB/s over all connections")
    p.add_argument("--connection-mbps", type=float, default=None, help="cap, MB/s per response")
    args = p.parse_args(argv)
    bw = args.bandwidth_mbps * 1e6 if args.bandwidth_mbps else None
    per = args.connection_mbps * 1e6 if args.connection_mbps else None
    server = S3Server(args.root, args.latency_ms / 1000, bw, per)
    print(f"PORT {server.port}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.hang_up()
        server._httpd.server_close()
        print(f"STATS {server.stats}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
