"""Write a WebDataset to S3 with ``ShardWriter``, then list what was written and read one sample back.

By default it starts a local S3 server (moto) on 127.0.0.1 with fake credentials, so it runs
offline::

    .venv/bin/python examples/write_to_s3.py

Against a real store, pass its endpoint (MinIO, R2, Ceph, ... or ``https://s3.amazonaws.com`` for
AWS itself); the credentials are the ones boto3 normally finds (environment, ``--profile``,
instance role) and the bucket must exist::

    .venv/bin/python examples/write_to_s3.py --output s3://my-bucket/my-dataset/train \\
        --endpoint-url http://minio.local:9000 --num-samples 10000

Shards are named ``shard-000000.tar``, ``shard-000001.tar``, ... directly under ``--output``;
each is uploaded whole when it is closed, so a reader never sees a partial shard.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlparse

from local_s3 import add_s3_arguments, s3_output, start_local_server
from PIL import Image

from streaming_wds import S3Options, ShardWriter, StreamingWebDataset


def make_sample(i: int, rng: random.Random) -> dict[str, Any]:
    """One sample: a random-colour JPEG, its class, a caption and a JSON dict."""
    color = tuple(rng.randrange(256) for _ in range(3))
    cls = rng.randrange(10)
    return {
        "__key__": f"sample{i:07d}",
        "jpg": Image.new("RGB", (64, 48), color),  # PIL images are encoded by the extension
        "cls": cls,  # int -> "3"
        "txt": f"a {cls} coloured {color}",  # str -> UTF-8
        "json": {"index": i, "color": list(color)},  # dict -> JSON
    }


def list_written(output: str, s3: S3Options) -> None:
    """List the objects under ``output`` with plain boto3, as any S3 tool would see them."""
    import boto3

    url = urlparse(output)
    prefix = url.path.strip("/") + "/" if url.path.strip("/") else ""
    session = boto3.session.Session(profile_name=s3.profile, region_name=s3.region)
    client = session.client("s3", endpoint_url=s3.endpoint_url)
    objects = [
        obj
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=prefix)
        for obj in page.get("Contents", ())
    ]
    print(f"\n{len(objects)} object(s) under {output}:")
    for obj in objects[:5]:
        print(f"  {obj['Size']:>10,} B  s3://{url.netloc}/{obj['Key']}")
    if len(objects) > 5:
        print(f"  ... {len(objects) - 5} more")
    print(f"  {sum(o['Size'] for o in objects):>10,} B  in total")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_s3_arguments(parser, "s3://demo/my-dataset/train")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--maxcount", type=int, default=250, help="samples per shard at most")
    parser.add_argument("--maxsize-mb", type=float, default=64, help="shard size in MB at most")
    args = parser.parse_args()
    url = s3_output(parser, args)

    with ExitStack() as stack:
        endpoint = args.endpoint_url or start_local_server(stack, url.netloc)
        s3 = S3Options(endpoint_url=endpoint, profile=args.profile)

        t0 = time.perf_counter()
        rng = random.Random(0)
        maxsize = int(args.maxsize_mb * 1e6)
        with ShardWriter(args.output, maxcount=args.maxcount, maxsize=maxsize, s3=s3) as writer:
            for i in range(args.num_samples):
                writer.write(make_sample(i, rng))
        elapsed = time.perf_counter() - t0
        print(
            f"wrote {writer.total} samples into {len(writer.written)} shard(s) under {args.output} "
            f"in {elapsed:.1f}s"
        )

        list_written(args.output, s3)

        # Read the first sample back, undecoded fields and all, as a reader would see it.
        dataset = StreamingWebDataset(args.output, s3=s3, schema={"cls": "int", "json": "json", "txt": "txt"})
        stream = iter(dataset)
        first = next(stream)
        stream.close()  # stops its download threads
        fields = {k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in first.items()}
        print(f"\n{len(dataset.shards)} shards listed by StreamingWebDataset; first sample:")
        for k, v in fields.items():
            print(f"  {k}: {v}")
        ok = len(dataset.shards) == len(writer.written) and first["__key__"] == "sample0000000"
    if not ok:
        print("FAILED: what was read back does not match what was written")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
