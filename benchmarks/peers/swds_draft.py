"""streaming-wds with the opt-in reduced-size JPEG decode: ``ImageDecoder("rgb8", draft=(250, 187))``.

Only meaningful in ``decode`` mode (in ``raw`` mode it is :mod:`peers.swds`). JPEGs of 500x375
decode at 1/2 scale (250x188), for pipelines that train at 187 px or less anyway.
"""

from __future__ import annotations

from typing import Any

import boto3  # noqa: F401  # imported here like every peer imports it: imports are not timed

import streaming_wds

from . import swds

ENV = "main"
MODES = ("decode",)


def make(cfg: dict[str, Any]) -> Any:
    schema = {"jpg": streaming_wds.ImageDecoder("rgb8", draft=(250, 187)), "cls": "int", "json": "json"}
    return swds.make({**cfg, "schema": schema} if cfg["mode"] == "decode" else cfg)


keys = swds.keys


def check(batch: Any, mode: str) -> None:
    if mode == "raw":
        swds.check(batch, mode)
    else:
        img = batch["jpg"]
        assert str(img.dtype).endswith("uint8") and tuple(img.shape[1:]) == (188, 250, 3), img.shape
