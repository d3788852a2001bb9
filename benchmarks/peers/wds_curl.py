"""webdataset 1.0.2 reading the shards over plain HTTP with ``pipe:curl`` (its documented way to stream).

Configuration (webdataset's idiomatic training setup)::

    wds.WebDataset(["pipe:curl -s -f http://HOST/bench/<shard>", ...],
                   shardshuffle=100 if shuffle else False, seed=seed,
                   nodesplitter=wds.single_node_only, workersplitter=wds.split_by_worker)
       [.shuffle(1000, seed=seed)]           # when shuffling
       [.decode("rgb8")]                     # decode mode: jpg -> HxWx3 uint8 numpy, cls -> int, json -> dict
       .to_tuple("__key__", "jpg", "cls", "json")
       .batched(batch_size, partial=True)    # default collation: stacks arrays, lists of bytes/str
    wds.WebLoader(ds, batch_size=None, num_workers=N)

Each DataLoader worker takes every N-th shard (``split_by_worker``), then shuffles its own shards.
A batch is the tuple ``(keys, jpgs, clss, jsons)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import webdataset as wds

ENV = "wds"


def build(urls: list[str], cfg: dict[str, Any]) -> wds.WebLoader:
    """The webdataset pipeline over ``urls`` (any URL that ``wds.gopen`` can open), wrapped in a WebLoader."""
    shuffle = bool(cfg["shuffle"])
    ds = wds.WebDataset(
        urls,
        shardshuffle=100 if shuffle else False,
        seed=cfg["seed"],
        nodesplitter=wds.single_node_only,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # with more workers than shards a worker legitimately gets none
    )
    if shuffle:
        ds = ds.shuffle(1000, seed=cfg["seed"])
    if cfg["mode"] == "decode":
        ds = ds.decode("rgb8")
    ds = ds.to_tuple("__key__", "jpg", "cls", "json").batched(cfg["batch_size"], partial=True)
    n = cfg["num_workers"]
    return wds.WebLoader(
        ds, batch_size=None, num_workers=n, persistent_workers=False, prefetch_factor=2 if n else None
    )


def make(cfg: dict[str, Any]) -> Iterable[Any]:
    base = f"{cfg['endpoint']}/{cfg['bucket']}"
    return build([f"pipe:curl -s -f {base}/{key}" for key in cfg["shards"]], cfg)


def keys(batch: Any) -> list[str]:
    return list(batch[0])


def check(batch: Any, mode: str) -> None:
    _, jpgs, clss, jsons = batch
    if mode == "raw":
        assert all(isinstance(j, bytes) and j[:2] == b"\xff\xd8" for j in jpgs), "jpg is not JPEG bytes"
        assert all(isinstance(c, bytes) for c in clss) and all(isinstance(j, bytes) for j in jsons)
    else:
        # the DataLoader's default_convert turns the stacked numpy batch into a torch tensor
        assert str(jpgs.dtype).endswith("uint8") and tuple(jpgs.shape[1:]) == (375, 500, 3), jpgs.shape
        assert len(clss) == len(jpgs) and all(isinstance(j, dict) for j in jsons)
