"""Shared test helpers: synthetic datasets written by the library's own ShardWriter."""

from __future__ import annotations

import gc
import io
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming_wds import MemoryStorage, S3Options, ShardWriter
from streaming_wds.tar import BytesSource

__all__ = ["BytesSource"]  # re-exported for the tests


def sample(i: int, shard_hint: int = 0) -> dict[str, Any]:
    """A small deterministic sample with several fields."""
    return {
        "__key__": f"s{i:06d}",
        "cls": i % 10,
        "txt": f"sample {i}",
        "json": {"i": i, "shard": shard_hint},
    }


def write_dataset(
    output: str | Path | MemoryStorage, num_samples: int, per_shard: int, **kw: Any
) -> list[str]:
    """Write ``num_samples`` samples, ``per_shard`` per shard; returns the shard names."""
    with ShardWriter(output, maxcount=per_shard, **kw) as w:
        for i in range(num_samples):
            w.write(sample(i, i // per_shard))
    return w.written


def memory_dataset(num_samples: int, per_shard: int) -> MemoryStorage:
    store = MemoryStorage()
    write_dataset(store, num_samples, per_shard)
    return store


def all_keys(num_samples: int) -> list[str]:
    return [f"s{i:06d}" for i in range(num_samples)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg_bytes(color: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (16, 12)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def keys_of(batches: Iterator[dict[str, Any]]) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


@dataclass(frozen=True)
class Server:
    """A local S3 server: its endpoint, and the options that reach it."""

    endpoint: str

    @property
    def s3(self) -> S3Options:
        return S3Options(endpoint_url=self.endpoint, region="us-east-1")

    def objects(self, bucket: str, prefix: str) -> dict[str, bytes]:
        """Every object under ``bucket/prefix/``, by name relative to the prefix."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        try:
            listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", ())
            return {
                o["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                for o in listed
            }
        finally:
            client.close()


@contextmanager
def moto_s3_server(bucket: str) -> Iterator[Server]:
    """moto's threaded S3 server on 127.0.0.1 and a free port, with ``bucket`` created; stopped
    on exit. Sets fake credentials for its lifetime (for fixtures wider than a test)."""
    import boto3
    import pytest
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.delenv("AWS_PROFILE", raising=False)
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        try:
            srv = Server(f"http://127.0.0.1:{port}")
            client = boto3.client("s3", endpoint_url=srv.endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=bucket)
            client.close()
            yield srv
        finally:
            moto.stop()


def ring_files() -> list[str]:
    """Shared-memory ring and tensor-arena files of this process's loaders still in ``/dev/shm``."""
    marks = (f"swds-ring-{os.getpid()}-", f"swds-arena-{os.getpid()}-")
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(marks))


def settle(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``check`` holds within ``timeout`` (pipes close and processes exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        gc.collect()
        time.sleep(0.02)
    return True
