"""The benchmark's S3-compatible server answers boto3 and streaming-wds like S3 does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from benchmarks.s3server import S3Server
from streaming_wds import S3Options, StreamingWebDataset
from tests.helpers import all_keys, write_dataset


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[S3Server, Any, Path]]:
    (tmp_path / "bkt" / "p").mkdir(parents=True)
    with S3Server(tmp_path) as srv:
        client = boto3.client("s3", endpoint_url=srv.endpoint)
        yield srv, client, tmp_path


def test_listing_pages_ranges_and_conditions(server: tuple[S3Server, Any, Path]) -> None:
    srv, client, root = server
    for i in range(5):
        (root / "bkt" / "p" / f"o{i}.tar").write_bytes(bytes(range(10)) * (i + 1))
    (root / "bkt" / "p" / "sub").mkdir()
    (root / "bkt" / "p" / "sub" / "x").write_bytes(b"x")
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket="bkt", Prefix="p/", Delimiter="/", PaginationConfig={"PageSize": 2}
    )
    keys = [o["Key"] for page in pages for o in page.get("Contents", ())]
    assert keys == [f"p/o{i}.tar" for i in range(5)]
    head = client.head_object(Bucket="bkt", Key="p/o1.tar")
    assert head["ContentLength"] == 20
    got = client.get_object(Bucket="bkt", Key="p/o1.tar", Range="bytes=3-", IfMatch=head["ETag"])
    assert got["Body"].read() == (bytes(range(10)) * 2)[3:]
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        client.get_object(Bucket="bkt", Key="p/o1.tar", IfMatch='"other"')
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket="bkt", Key="p/none")
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidRange"):
        client.get_object(Bucket="bkt", Key="p/o1.tar", Range="bytes=20-")
    assert srv.stats["requests"] >= 6


def test_multipart_upload_and_latency(server: tuple[S3Server, Any, Path], tmp_path: Path) -> None:
    _, client, root = server
    data = bytes(range(256)) * 50_000  # 12.8 MB: 3 parts of 5 MiB
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    client.upload_file(str(src), "bkt", "p/up.bin", Config=TransferConfig(multipart_threshold=5 << 20))
    assert (root / "bkt" / "p" / "up.bin").read_bytes() == data
    with S3Server(root, latency=0.05) as slow:
        c = boto3.client("s3", endpoint_url=slow.endpoint)
        t0 = time.perf_counter()
        c.head_object(Bucket="bkt", Key="p/up.bin")
        assert time.perf_counter() - t0 >= 0.05


def test_each_response_is_capped_on_its_own(server: tuple[S3Server, Any, Path]) -> None:
    _, client, root = server
    client.put_object(Bucket="bkt", Key="p/big.bin", Body=bytes(3_000_000))
    with S3Server(root, connection_bandwidth=10e6) as capped:
        c = boto3.client("s3", endpoint_url=capped.endpoint)
        t0 = time.perf_counter()
        assert len(c.get_object(Bucket="bkt", Key="p/big.bin")["Body"].read()) == 3_000_000
        assert time.perf_counter() - t0 >= 0.2  # 1 MB of burst, then 2 MB at 10 MB/s


def test_streaming_wds_reads_a_dataset_from_it(server: tuple[S3Server, Any, Path]) -> None:
    srv, _, root = server
    write_dataset(root / "bkt" / "p" / "train", 30, 7)
    ds = StreamingWebDataset("s3://bkt/p", "train", shuffle=True, s3=S3Options(endpoint_url=srv.endpoint))
    assert sorted(s["__key__"] for s in ds) == all_keys(30)
