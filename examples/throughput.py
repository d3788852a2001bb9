"""Quick throughput check on local disk (the full benchmark against the peers is separate).

Writes a synthetic set of ~170 KB JPEG samples to a temporary directory once, then reads it with
``StreamingWebDataset`` in this process (fields left as bytes) and through
``StreamingDataLoader`` with worker processes, and prints samples/s and MB/s.

    .venv/bin/python examples/throughput.py [--samples 8000] [--per-shard 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
from PIL import Image

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset


def write(root: str, samples: int, per_shard: int) -> int:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    jpg = buf.getvalue()
    with ShardWriter(root, maxcount=per_shard) as w:
        for i in range(samples):
            w.write({"__key__": f"k{i:07d}", "jpg": jpg, "cls": i % 1000, "json": {"i": i}})
    return sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="swds-throughput-") as root:
        size = write(root, args.samples, args.per_shard)
        print(f"{args.samples} samples, {size / 1e6:.0f} MB in {args.samples // args.per_shard} shards")
        for shuffle in (False, True):
            ds = StreamingWebDataset(root, shuffle=shuffle)
            t = time.perf_counter()
            n = sum(1 for _ in ds)
            dt = time.perf_counter() - t
            print(f"in-process, shuffle={shuffle!s:5}: {n / dt:7.0f} samples/s {size / dt / 1e6:6.0f} MB/s")
        loader = StreamingDataLoader(
            StreamingWebDataset(root, shuffle=True), batch_size=32, num_workers=args.workers, collate_fn=list
        )
        t = time.perf_counter()
        n = sum(len(batch) for batch in loader)
        dt = time.perf_counter() - t
        print(
            f"loader, {args.workers} workers, shuffle=True: {n / dt:7.0f} samples/s "
            f"{size / dt / 1e6:6.0f} MB/s"
        )


if __name__ == "__main__":
    main()
