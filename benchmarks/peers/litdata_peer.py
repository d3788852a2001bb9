"""litdata (0.2.76): litdata's optimized chunk format streamed from S3 by ``litdata.StreamingDataset``.

``prepare`` (untimed, once): ``litdata.optimize(fn, inputs=<shard keys>, output_dir=<local dir>,
chunk_bytes="64MB", num_workers=1, start_method="fork")``, where ``fn`` reads one WebDataset shard
from the server (boto3 + tarfile) and yields its samples ``{"__key__": str, "jpg": bytes,
"cls": bytes, "json": bytes}`` (the tar members' bytes as they are); the chunks and ``index.json``
are then uploaded with boto3 to ``s3://bench/litdata/<prefix>-<hash of the shard list>/``.
Skipped when that ``index.json`` exists.

``make``::

    litdata.StreamingDataset("s3://bench/litdata/...", cache_dir=<fresh dir under workdir>,
                             shuffle=shuffle, seed=seed, storage_options={"endpoint_url": endpoint},
                             transform=_to_decoded if mode == "decode" else _to_bytes)
    litdata.StreamingDataLoader(ds, batch_size=B, num_workers=N, collate_fn=collate)

``transform`` runs in the workers. litdata yields ``bytes`` fields as memoryviews into the chunk,
which a DataLoader worker cannot send (it hangs), so ``_to_bytes`` copies them to ``bytes`` first.
Chunks are fetched by obstore, which refuses an http:// endpoint unless ``allow_http`` is set in
litdata's client options (set below; no public setting). Every run starts with an empty cache
(older cache dirs of this peer are deleted).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import litdata
import litdata.streaming.downloader as _downloader

from .naive import check, collate, decode, keys, tar_samples

ENV = "litdata"
__all__ = ["ENV", "check", "keys", "make", "prepare"]
FIELDS = ("__key__", "jpg", "cls", "json")

# litdata fetches chunks with obstore, whose client refuses plain-http endpoints unless told
# ``allow_http``; litdata passes a fixed option dict and offers no setting for it.
_downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]


def _remote_prefix(cfg: dict[str, Any]) -> str:
    digest = hashlib.sha1("\n".join(cfg["shards"]).encode()).hexdigest()[:10]
    return f"litdata/{cfg['prefix']}-{digest}"


class _ReadShard:
    """``optimize``'s fn: the samples of one shard (a picklable callable, for its worker processes)."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint, self.bucket = endpoint, bucket

    def __call__(self, shard: str) -> Iterator[dict[str, Any]]:
        client = boto3.client("s3", endpoint_url=self.endpoint)
        for sample in tar_samples(client.get_object(Bucket=self.bucket, Key=shard)["Body"]):
            yield {k: sample[k] for k in FIELDS}


def _to_bytes(sample: dict[str, Any]) -> dict[str, Any]:
    """litdata returns ``bytes`` fields as memoryviews into the chunk, which cannot cross processes."""
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in sample.items()}


def _to_decoded(sample: dict[str, Any]) -> dict[str, Any]:
    return decode(_to_bytes(sample))


def prepare(cfg: dict[str, Any]) -> None:
    client = boto3.client("s3", endpoint_url=cfg["endpoint"])
    prefix = _remote_prefix(cfg)
    if client.list_objects_v2(Bucket=cfg["bucket"], Prefix=f"{prefix}/index.json").get("KeyCount", 0):
        return
    local = os.path.join(cfg["workdir"], "litdata-optimized")
    shutil.rmtree(local, ignore_errors=True)
    litdata.optimize(
        fn=_ReadShard(cfg["endpoint"], cfg["bucket"]),
        inputs=list(cfg["shards"]),
        output_dir=local,
        chunk_bytes="64MB",
        num_workers=1,
        start_method="fork",  # its default (spawn) re-imports the caller's __main__
        verbose=False,
    )
    names = sorted(os.listdir(local), key=lambda n: n == "index.json")  # index.json last
    if len(names) < 2 or names[-1] != "index.json":
        raise RuntimeError(f"litdata.optimize wrote {names} to {local}")
    for name in names:
        client.upload_file(os.path.join(local, name), cfg["bucket"], f"{prefix}/{name}")
    shutil.rmtree(local, ignore_errors=True)
    print(f"[litdata] uploaded {len(names)} files to s3://{cfg['bucket']}/{prefix}")


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    for old in glob.glob(os.path.join(cfg["workdir"], "litdata-cache-*")):
        shutil.rmtree(old, ignore_errors=True)
    ds = litdata.StreamingDataset(
        f"s3://{cfg['bucket']}/{_remote_prefix(cfg)}",
        cache_dir=tempfile.mkdtemp(prefix="litdata-cache-", dir=cfg["workdir"]),
        shuffle=bool(cfg["shuffle"]),
        seed=cfg["seed"],
        storage_options={"endpoint_url": cfg["endpoint"]},
        transform=_to_decoded if cfg["mode"] == "decode" else _to_bytes,
    )
    return litdata.StreamingDataLoader(
        ds, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], collate_fn=collate
    )
