"""streaming-wds (this repository): ``StreamingWebDataset`` + ``StreamingDataLoader``, defaults.

Raw mode leaves every field as bytes; decode mode uses the schema ``jpg: rgb8`` (full size, the
pixels of PIL's decode: by default JPEGs go through ``simplejpeg``, see ``streaming_wds/jpeg.py``),
``cls: int``, ``json: json``; ``swds_draft.py`` decodes the JPEG at a reduced DCT scale.
"""

from __future__ import annotations

from typing import Any

import boto3  # noqa: F401  # imported here like every peer imports it: imports are not timed

import streaming_wds  # noqa: F401

ENV = "main"


def make(cfg: dict[str, Any]) -> Any:
    from streaming_wds import S3Options, StreamingDataLoader, StreamingWebDataset, StreamOptions

    schema: dict[str, Any] = cfg.get("schema") or {}
    if cfg["mode"] == "decode" and not schema:
        schema = {"jpg": "rgb8", "cls": "int", "json": "json"}
    ds = StreamingWebDataset(
        f"s3://{cfg['bucket']}/{cfg['prefix'].rsplit('/', 1)[0]}",
        cfg["prefix"].rsplit("/", 1)[1],
        schema=schema,
        shuffle=cfg["shuffle"],
        seed=cfg["seed"],
        s3=S3Options(endpoint_url=cfg["endpoint"]),
        options=StreamOptions(**cfg.get("stream", {})),
    )
    return StreamingDataLoader(
        ds, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], **cfg.get("loader", {})
    )


def keys(batch: Any) -> list[str]:
    return list(batch["__key__"])


def check(batch: Any, mode: str) -> None:
    if mode == "raw":
        assert isinstance(batch["jpg"][0], bytes) and batch["jpg"][0][:2] == b"\xff\xd8"
    else:
        img = batch["jpg"]
        assert str(img.dtype).endswith("uint8") and tuple(img.shape[1:]) == (375, 500, 3), img.shape
