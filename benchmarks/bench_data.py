"""The synthetic ImageNet-like dataset of the loader benchmark, written once and reused.

Each sample is ``{"__key__": "0000123", "jpg": ~95 KB JPEG of 500x375 RGB, "cls": ASCII int,
"json": {"key", "label", "width", "height"}}``. A pool of distinct JPEGs (smooth colour fields
with grain, quality 90, 4:2:0, so they decode at about the rate of photos of that size) is
encoded once; sample ``i`` takes JPEG ``i % pool`` with a comment segment holding its key
inserted after the start marker, so every sample's bytes differ and remain a valid JPEG.
Shards are written by ``streaming_wds.ShardWriter`` (with its ``index.json``) into
``ROOT/<bucket>/<prefix>/train/``, where :mod:`s3server` serves them.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

BUCKET = "bench"
PREFIX = "imagenet"
SPLIT = "train"


@dataclass(frozen=True)
class DataSpec:
    shards: int = 16
    per_shard: int = 1000
    pool: int = 64
    seed: int = 0

    @property
    def samples(self) -> int:
        return self.shards * self.per_shard

    def keys(self) -> list[str]:
        return [f"{i:07d}" for i in range(self.samples)]


def jpeg_pool(n: int, seed: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC), np.int16)
        grain = rng.normal(0, 8, (375, 500, 1)).astype(np.int16)
        img = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, subsampling=2)
        out.append(buf.getvalue())
    return out


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a COM segment after SOI: different bytes, same pixels."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def sample(i: int, pool: list[bytes]) -> dict[str, object]:
    key = f"{i:07d}"
    label = i % 1000
    meta = {"key": key, "label": label, "width": 500, "height": 375}
    return {"__key__": key, "jpg": with_comment(pool[i % len(pool)], key), "cls": label, "json": meta}


def split_dir(root: Path) -> Path:
    return root / BUCKET / PREFIX / SPLIT


def is_written(root: Path, spec: DataSpec) -> bool:
    """Whether ``root`` holds the dataset of ``spec`` (its stamp says so)."""
    stamp = split_dir(root) / ".spec.json"
    return stamp.exists() and json.loads(stamp.read_text()) == asdict(spec)


def ensure_dataset(root: Path, spec: DataSpec) -> Path:
    """Write the dataset under ``root`` unless the same spec is already there; its split folder."""
    out = split_dir(root)
    if is_written(root, spec):
        return out
    from streaming_wds import ShardWriter

    if out.exists():
        for old in out.iterdir():
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    pool = jpeg_pool(spec.pool, spec.seed)
    with ShardWriter(str(out), maxcount=spec.per_shard, maxsize=10**12, pattern="shard-%06d.tar") as w:
        for i in range(spec.samples):
            w.write(sample(i, pool))
    (out / ".spec.json").write_text(json.dumps(asdict(spec)))
    return out


def shard_files(root: Path) -> list[Path]:
    return sorted(split_dir(root).glob("*.tar"))


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="write the benchmark dataset unless it is there")
    p.add_argument("root", type=Path)
    p.add_argument("--shards", type=int, default=DataSpec.shards)
    p.add_argument("--per-shard", type=int, default=DataSpec.per_shard)
    a = p.parse_args()
    ensure_dataset(a.root, DataSpec(shards=a.shards, per_shard=a.per_shard))
