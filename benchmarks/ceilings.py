"""What this machine can do at best, measured in the same run as the loaders.

    .venv/bin/python benchmarks/ceilings.py ENDPOINT DATA_ROOT [--threads 1,8]

Prints one JSON object:

* ``boto3_get_<T>t``: whole-object ``get_object`` of every shard, bodies read in 1 MiB pieces
  and dropped, ``T`` threads sharing one client: MB/s and CPU-seconds per GB of this process.
* ``tar_parse``: streaming-wds's tar parser and sample grouping over one shard held in memory,
  and the standard library's ``tarfile`` doing the same: samples/s and MB/s on one core.
* ``jpeg_decode``: full-size PIL decodes of the dataset's JPEGs to RGB ``uint8`` arrays on one
  core (images/s), and the same with a 1/2-scale DCT ``draft``; then both through ``simplejpeg``
  (the same pixels, as ``streaming_wds.jpeg`` decodes them), where it is installed.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_data import BUCKET, shard_files, split_dir


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def boto3_get(endpoint: str, keys: list[str], threads: int) -> dict[str, float]:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=max(10, threads)))

    def fetch(key: str) -> int:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        n = 0
        while chunk := body.read(1 << 20):
            n += len(chunk)
        return n

    fetch(keys[0])  # warm the connection pool and the page cache
    c0, t0 = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(fetch, keys))
    secs, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"MB/s": total / secs / 1e6, "cpu_s_per_GB": cpu / (total / 1e9)}


def tar_parse(shard: Path) -> dict[str, float]:
    from streaming_wds.samples import SampleReader
    from streaming_wds.tar import BytesSource, TarReader

    data = shard.read_bytes()
    t0 = time.perf_counter()
    reader = SampleReader(TarReader(BytesSource(data), shard.name))
    n = 0
    while reader.next_sample() is not None:
        n += 1
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for member in tf:
            f = tf.extractfile(member)
            if f is not None:
                f.read()
                m += 1
    std = time.perf_counter() - t0
    return {
        "samples": n,
        "streaming_wds samples/s": n / ours,
        "streaming_wds MB/s": len(data) / ours / 1e6,
        "tarfile members/s": m / std,
        "tarfile MB/s": len(data) / std / 1e6,
    }


def jpeg_decode(shard: Path, count: int = 200) -> dict[str, float]:
    import numpy as np
    from PIL import Image

    with tarfile.open(shard) as tf:
        jpegs = []
        for member in tf:
            if member.name.endswith(".jpg"):
                f = tf.extractfile(member)
                assert f is not None
                jpegs.append(f.read())
            if len(jpegs) == count:
                break
    out: dict[str, float] = {}
    for label, draft in (("full images/s", None), ("draft 1/2 images/s", (250, 187))):
        t0 = time.perf_counter()
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as img:
                if draft is not None:
                    img.draft("RGB", draft)
                np.asarray(img.convert("RGB"))
        out[label] = len(jpegs) / (time.perf_counter() - t0)
    from streaming_wds import jpeg

    if jpeg.available():  # the same pixels through simplejpeg, as streaming-wds decodes them
        cases = (("simplejpeg full images/s", None), ("simplejpeg draft 1/2 images/s", (250, 187)))
        for label, draft in cases:
            t0 = time.perf_counter()
            for data in jpegs:
                assert jpeg.rgb(data, draft, None) is not None
            out[label] = len(jpegs) / (time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("root", type=Path)
    p.add_argument("--threads", default="1,8")
    args = p.parse_args()
    shards = shard_files(args.root)
    keys = [str(s.relative_to(split_dir(args.root).parents[1])) for s in shards]
    result: dict[str, Any] = {}
    for t in (int(x) for x in args.threads.split(",")):
        result[f"boto3_get_{t}t"] = boto3_get(args.endpoint, keys, t)
    result["tar_parse"] = tar_parse(shards[0])
    result["jpeg_decode"] = jpeg_decode(shards[0])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
