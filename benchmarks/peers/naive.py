"""A hand-written baseline: a plain ``torch.utils.data.IterableDataset`` over boto3 streams.

Worker ``w`` of ``N`` reads shards ``shards[w::N]`` (in a seeded random order when shuffling; no
sample shuffle buffer), each as ``get_object(...)["Body"]`` fed straight to
``tarfile.open(fileobj=body, mode="r|*")``; consecutive members sharing a key (basename up to the
first dot) form a sample. ``decode`` mode decodes jpg with PIL to an RGB uint8 numpy array, cls to
int and json to a dict, in the workers. ``DataLoader(batch_size=B, num_workers=N)`` with a collate
that stacks arrays and keeps everything else as lists. A batch is a dict of lists / arrays.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import numpy as np
import torch
from PIL import Image

ENV = "wds"


def tar_samples(fileobj: Any) -> Iterator[dict[str, Any]]:
    """The samples of a WebDataset tar read as a stream: ``{"__key__": str, ext: bytes, ...}``."""
    sample: dict[str, Any] = {}
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.rsplit("/", 1)[-1].split(".", 1)
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if sample:
        yield sample


class NaiveS3Tars(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def _shards(self) -> list[str]:
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        shards = list(self.cfg["shards"][wid::n])
        if self.cfg["shuffle"]:
            random.Random(self.cfg["seed"] + wid).shuffle(shards)
        return shards

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        client = boto3.client("s3", endpoint_url=cfg["endpoint"])  # in the worker process
        for shard in self._shards():
            body = client.get_object(Bucket=cfg["bucket"], Key=shard)["Body"]
            for sample in tar_samples(body):
                yield decode(sample) if cfg["mode"] == "decode" else sample


def decode(sample: dict[str, Any]) -> dict[str, Any]:
    """jpg -> RGB uint8 HxWx3 numpy array (PIL), cls -> int, json -> dict; in place."""
    sample["jpg"] = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
    sample["cls"] = int(sample["cls"])
    sample["json"] = json.loads(sample["json"])
    return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Arrays stacked into one array; bytes, str, int, dict fields kept as lists."""
    out: dict[str, Any] = {k: [s[k] for s in samples] for k in samples[0]}
    if isinstance(out["jpg"][0], np.ndarray):
        out["jpg"] = np.stack(out["jpg"])
    return out


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    n = cfg["num_workers"]
    return torch.utils.data.DataLoader(
        NaiveS3Tars(cfg), batch_size=cfg["batch_size"], num_workers=n, collate_fn=collate
    )


def keys(batch: Any) -> list[str]:
    return list(batch["__key__"])


def check(batch: Any, mode: str) -> None:
    jpgs = batch["jpg"]
    if mode == "raw":
        assert all(isinstance(j, bytes) and j[:2] == b"\xff\xd8" for j in jpgs), "jpg is not JPEG bytes"
        assert all(isinstance(c, bytes) for c in batch["cls"])
    else:
        assert jpgs.dtype == np.uint8 and jpgs.shape[1:] == (375, 500, 3), (jpgs.dtype, jpgs.shape)
        assert all(isinstance(c, int) for c in batch["cls"])
        assert all(isinstance(j, dict) for j in batch["json"])
