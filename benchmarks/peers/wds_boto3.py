"""webdataset 1.0.2 with shard streams from boto3 ``get_object(...)["Body"]``.

The same pipeline as ``wds_curl`` (see there), over ``s3://bucket/key`` URLs: webdataset opens URLs
through its ``gopen_schemes`` table, and registering an ``s3`` handler there is its documented way to
plug in a transport. The handler streams the object body from a boto3 client made once per worker
process (``endpoint_url=cfg["endpoint"]``, credentials from the AWS_* environment variables).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Any

import boto3
import webdataset as wds

from .wds_curl import build, check, keys

ENV = "wds"
__all__ = ["ENV", "check", "keys", "make"]

_clients: dict[tuple[int, str], Any] = {}


def _open_s3(url: str, mode: str = "rb", bufsize: int = 8192, *, endpoint: str) -> Any:
    assert mode.startswith("r"), mode
    bucket, key = url.removeprefix("s3://").split("/", 1)
    client = _clients.get((os.getpid(), endpoint))
    if client is None:  # one client per (worker) process: boto3 clients must not cross a fork
        client = _clients[(os.getpid(), endpoint)] = boto3.client("s3", endpoint_url=endpoint)
    return client.get_object(Bucket=bucket, Key=key)["Body"]


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    wds.gopen_schemes["s3"] = functools.partial(_open_s3, endpoint=cfg["endpoint"])
    return build([f"s3://{cfg['bucket']}/{key}" for key in cfg["shards"]], cfg)
