"""Shard bodies from a real HTTP server are received straight into the reader's buffers.

moto's threaded server on 127.0.0.1 serves the objects over a socket, as S3 does; what breaks
bodies on the wire (short, reset, stalled) is in ``test_transport_faults.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import urllib3

from streaming_wds import S3Options, S3Storage
from tests.helpers import Server, moto_s3_server

BUCKET = "swds-receive"
DATA = {"a.bin": os.urandom(300_000), "b.bin": os.urandom(123_457)}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with moto_s3_server(BUCKET) as srv:
        client = boto3.client("s3", endpoint_url=srv.endpoint, region_name="us-east-1")
        for name, data in DATA.items():
            client.put_object(Bucket=BUCKET, Key=f"p/{name}", Body=data)
        client.close()
        yield srv


def _read(store: S3Storage, name: str, start: int = 0, limit: int | None = None) -> bytes:
    stream = store.open_read(name, start)
    buf, out = bytearray(50_000), bytearray()
    try:
        while limit is None or len(out) < limit:
            n = stream.readinto(memoryview(buf))
            if not n:
                break
            out += buf[:n]
    finally:
        stream.close()
    return bytes(out)


def _count(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _store_counting_connections(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[S3Storage, list[int]]:
    """A store whose client exists, and the connections its pool opens from now on."""
    store = S3Storage(BUCKET, "p", S3Options(endpoint_url=server.endpoint))
    store.warm_up()
    return store, _count(monkeypatch, urllib3.connectionpool.HTTPConnectionPool, "_new_conn")


def test_bodies_are_received_into_the_buffer_not_copied_through_urllib3(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Storage(BUCKET, "p", S3Options(endpoint_url=server.endpoint))
    reads = _count(monkeypatch, urllib3.response.HTTPResponse, "read")
    assert _read(store, "a.bin") == DATA["a.bin"]
    assert _read(store, "b.bin", start=1_001) == DATA["b.bin"][1_001:]
    assert reads == []


def test_a_body_read_to_its_end_gives_its_connection_back(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, connections = _store_counting_connections(server, monkeypatch)
    for name, data in [*DATA.items(), *DATA.items()]:
        assert _read(store, name) == data
    assert len(connections) == 1


def test_a_body_closed_before_its_end_does_not_give_its_connection_back(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unread bytes of the first body must never be read as the start of the next response."""
    store, connections = _store_counting_connections(server, monkeypatch)
    assert _read(store, "a.bin", limit=1) == DATA["a.bin"][:50_000]
    assert _read(store, "b.bin") == DATA["b.bin"]
    assert _read(store, "a.bin", start=7) == DATA["a.bin"][7:]
    assert len(connections) == 2
