"""The previous streaming-wds release from PyPI (0.1.28), as its README uses it.

Configuration::

    StreamingWebDataset(remote="s3://bench/imagenet/train", shuffle=shuffle, profile=None,
                        max_workers=2, schema=..., file_cache_limit_bytes=1 << 40)
    StreamingDataLoader(ds, batch_size=B, num_workers=N, collate_fn=collate)

How 0.1.28 works and what that forces here:

* It lists the ``.tar`` objects under ``remote`` itself (``cfg["shards"]`` is not passed) and gives
  each DataLoader worker a contiguous block of them; more workers than shards is a ValueError.
* Each worker downloads whole shards to a local disk cache (``download_file``), then untars them.
  The cache is ``Path.home()/.cache/streaming_wds/...``: ``make`` points ``HOME`` at
  ``<workdir>/swds01-home`` and empties it, so every run starts cold and the copies stay in workdir.
* Its LRU cache never evicts (read counts are never incremented), so a worker blocks forever once
  its shards exceed ``file_cache_limit_bytes`` (default 2 GB): the limit is raised to 1 TiB.
* S3 client: ``boto3.Session(profile_name=profile)``; the default ``profile="default"`` needs an AWS
  config file, so ``profile=None`` and the endpoint comes from ``AWS_ENDPOINT_URL`` (set here).
* ``shuffle=True`` is accepted but has no effect in 0.1.28: shards are shuffled, then the unshuffled
  list is split (``GetWorkerSplit.apply(self.shards, ...)``); there is no sample shuffle.
* Decoding uses its schema decoders, keyed by extension with the dot (``".jpg": "jpg"`` gives
  ``np.asarray(PIL.Image.open(...))``); a ``cls`` -> int decoder is registered with its
  ``register_decoder``. The loader drops the sample key from batches, so ``_decode_sample`` is
  wrapped to copy it into ``__key__``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

ENV = "swds01"


def _import_release() -> Any:
    """``streaming_wds`` from site-packages, never this checkout's package of the same name (which
    shadows it when the repo root, or ``''`` with the repo root as cwd, is on ``sys.path``)."""
    root = Path(__file__).resolve().parents[2]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        module = importlib.import_module("streaming_wds")
    finally:
        sys.path[:] = saved
    assert "site-packages" in str(module.__file__), f"wrong streaming_wds: {module.__file__}"
    return module


_swds = _import_release()

_swds.decoders.register_decoder("int", lambda b: int(b))


class _KeyedDataset(_swds.StreamingWebDataset):  # type: ignore[misc,name-defined]
    def _decode_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = super()._decode_sample(sample)
        out["__key__"] = os.path.basename(out["__wds_sample_key__"])
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Arrays stacked into one array; bytes, str, int, dict fields kept as lists."""
    out: dict[str, Any] = {k: [s[k] for s in samples] for k in samples[0]}
    if isinstance(out[".jpg"][0], np.ndarray):
        out[".jpg"] = np.stack(out[".jpg"])
    return out


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    os.environ["AWS_ENDPOINT_URL"] = cfg["endpoint"]
    os.environ["HOME"] = home = os.path.join(cfg["workdir"], "swds01-home")
    shutil.rmtree(os.path.join(home, ".cache"), ignore_errors=True)  # cold cache (it clears it too)
    decode = cfg["mode"] == "decode"
    schema = (
        {".jpg": "jpg", ".cls": "int", ".json": "json"}
        if decode
        else dict.fromkeys((".jpg", ".cls", ".json"), "bytes")
    )
    ds = _KeyedDataset(
        remote=f"s3://{cfg['bucket']}/{cfg['prefix']}",
        shuffle=bool(cfg["shuffle"]),
        profile=None,
        schema=schema,
        file_cache_limit_bytes=1 << 40,
    )
    return _swds.StreamingDataLoader(
        ds, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], collate_fn=collate
    )


def keys(batch: Any) -> list[str]:
    return list(batch["__key__"])


def check(batch: Any, mode: str) -> None:
    jpgs = batch[".jpg"]
    if mode == "raw":
        assert all(isinstance(j, bytes) and j[:2] == b"\xff\xd8" for j in jpgs), "jpg is not JPEG bytes"
        assert all(isinstance(c, bytes) for c in batch[".cls"])
    else:
        assert jpgs.dtype == np.uint8 and jpgs.shape[1:] == (375, 500, 3), (jpgs.dtype, jpgs.shape)
        assert all(isinstance(c, int) for c in batch[".cls"])
        assert all(isinstance(j, dict) for j in batch[".json"])
