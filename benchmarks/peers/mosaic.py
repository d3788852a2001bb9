"""mosaicml-streaming (0.13.0): MDS shards streamed from S3 by ``StreamingDataset``.

``prepare`` (untimed, once): reads every WebDataset shard from the server (boto3 + tarfile) and
writes the samples with ``MDSWriter(columns={"__key__": "str", "jpg": "bytes", "cls": "bytes",
"json": "bytes"}, out="s3://bench/mds/<prefix>-<hash of the shard list>")`` (64 MiB MDS shards, no
compression: JPEGs do not compress), which uploads each shard as it closes. It is skipped when
that remote ``index.json`` exists. The tar members' bytes are stored as they are, so ``raw`` mode
yields the same bytes as the tar-based peers and ``decode`` does the same work.

``make``::

    StreamingDataset(remote=..., local=<fresh dir under workdir>, shuffle=shuffle,
                     shuffle_seed=seed, batch_size=B)            # defaults otherwise (py1e, relaxed)
    StreamingDataLoader(ds, batch_size=B, num_workers=N, collate_fn=collate)

``decode`` mode decodes in ``__getitem__`` of a subclass (mosaic's documented way to transform),
in the workers. The endpoint comes from ``S3_ENDPOINT_URL`` (set here), credentials from AWS_*.
Every run starts with an empty local cache (older cache dirs of this peer are deleted) and
``clean_stale_shared_memory()``.

torchvision from PyPI is a CUDA build that cannot load against the CPU torch, and
``import streaming`` imports ``streaming.vision`` (torchvision datasets, unused here): a stub module
stands in for ``streaming.vision`` before the import.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterable
from typing import Any

import boto3

sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
from streaming import MDSWriter, StreamingDataLoader, StreamingDataset  # noqa: E402
from streaming.base.util import clean_stale_shared_memory  # noqa: E402

from .naive import check, collate, decode, keys, tar_samples  # noqa: E402

ENV = "mosaic"
__all__ = ["ENV", "check", "keys", "make", "prepare"]
COLUMNS = {"__key__": "str", "jpg": "bytes", "cls": "bytes", "json": "bytes"}


def _remote_prefix(cfg: dict[str, Any]) -> str:
    digest = hashlib.sha1("\n".join(cfg["shards"]).encode()).hexdigest()[:10]
    return f"mds/{cfg['prefix']}-{digest}"


def prepare(cfg: dict[str, Any]) -> None:
    os.environ["S3_ENDPOINT_URL"] = cfg["endpoint"]
    client = boto3.client("s3", endpoint_url=cfg["endpoint"])
    prefix = _remote_prefix(cfg)
    listed = client.list_objects_v2(Bucket=cfg["bucket"], Prefix=f"{prefix}/index.json")
    if listed.get("KeyCount", 0):
        return
    n = 0
    with MDSWriter(columns=COLUMNS, out=f"s3://{cfg['bucket']}/{prefix}", size_limit=1 << 26) as out:
        for shard in cfg["shards"]:
            for sample in tar_samples(client.get_object(Bucket=cfg["bucket"], Key=shard)["Body"]):
                out.write({k: sample[k] for k in COLUMNS})
                n += 1
    print(f"[mosaic] wrote {n} samples as MDS to s3://{cfg['bucket']}/{prefix}")


class _Dataset(StreamingDataset):  # type: ignore[misc]
    def __init__(self, *, decoded: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.decoded = decoded

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample: dict[str, Any] = super().__getitem__(idx)
        return decode(sample) if self.decoded else sample


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    os.environ["S3_ENDPOINT_URL"] = cfg["endpoint"]
    for old in glob.glob(os.path.join(cfg["workdir"], "mosaic-cache-*")):
        shutil.rmtree(old, ignore_errors=True)
    clean_stale_shared_memory()
    ds = _Dataset(
        decoded=cfg["mode"] == "decode",
        remote=f"s3://{cfg['bucket']}/{_remote_prefix(cfg)}",
        local=tempfile.mkdtemp(prefix="mosaic-cache-", dir=cfg["workdir"]),
        shuffle=bool(cfg["shuffle"]),
        shuffle_seed=cfg["seed"],
        batch_size=cfg["batch_size"],
    )
    return StreamingDataLoader(
        ds, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], collate_fn=collate
    )
