"""streaming-wds end to end, offline: write to S3, stream, checkpoint mid-epoch, resume exactly.

What it does, all against a local S3 server (moto) on 127.0.0.1:

1. writes a synthetic image dataset (64 shards x 50 samples: a JPEG, a class id and a JSON dict
   per sample) to ``s3://demo/imagenet-mini/train`` with ``ShardWriter``;
2. streams one reference epoch through ``StreamingDataLoader`` (shuffled, 2 workers);
3. reads part of the same epoch with a second loader, takes ``state_dict()``, round-trips it
   through JSON, builds a brand-new dataset and loader, restores it and finishes the epoch;
4. checks that the two halves equal the reference exactly, that every sample came exactly once,
   and that the next epoch is another order of the same samples.

Run it with ``make demo`` or ``.venv/bin/python examples/demo.py``. Exits non-zero if any check
fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import torch
from checks import Checks
from local_s3 import start_local_server
from PIL import Image, ImageDraw

from streaming_wds import (
    S3Options,
    ShardWriter,
    StreamingDataLoader,
    StreamingWebDataset,
)

BUCKET = "demo"
PREFIX = "imagenet-mini/train"
URL = f"s3://{BUCKET}/{PREFIX}"
SCHEMA = {".jpg": "torchrgb8", ".cls": "int", ".json": "json"}
WIDTH, HEIGHT = 64, 48
NUM_CLASSES = 10


def make_sample(i: int, rng: random.Random) -> dict[str, Any]:
    """A random-colour image with a rectangle on it, its class, and metadata."""
    background = tuple(rng.randrange(256) for _ in range(3))
    foreground = tuple(rng.randrange(256) for _ in range(3))
    img = Image.new("RGB", (WIDTH, HEIGHT), background)
    x0, y0 = rng.randrange(16, WIDTH // 2), rng.randrange(16, HEIGHT // 2)
    ImageDraw.Draw(img).rectangle([x0, y0, x0 + 20, y0 + 14], fill=foreground)
    cls = i % NUM_CLASSES
    return {
        "__key__": f"img{i:06d}",
        "jpg": img,  # encoded as JPEG by the field's extension
        "cls": cls,
        "json": {"index": i, "cls": cls, "background": list(background)},
    }


def write_dataset(s3: S3Options, num_shards: int, per_shard: int) -> tuple[list[str], float]:
    rng = random.Random(1234)
    t0 = time.perf_counter()
    with ShardWriter(URL, maxcount=per_shard, s3=s3) as writer:
        for i in range(num_shards * per_shard):
            writer.write(make_sample(i, rng))
    return writer.written, time.perf_counter() - t0


def make_loader(s3: S3Options, batch_size: int, num_workers: int) -> StreamingDataLoader:
    dataset = StreamingWebDataset(URL, schema=SCHEMA, shuffle=True, seed=0, s3=s3)
    # timeout: fail instead of waiting forever should a worker get stuck
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers, timeout=120)


def keys_of(batches: Iterable[dict[str, Any]]) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def check_batch(batch: dict[str, Any], batch_size: int) -> list[str]:
    """Problems with one decoded, collated batch (empty when it looks right)."""
    problems = []
    img = batch["jpg"]
    n = len(batch["__key__"])
    if tuple(img.shape) != (n, 3, HEIGHT, WIDTH) or str(img.dtype) != "torch.uint8":
        problems.append(f"image batch has shape {tuple(img.shape)} and dtype {img.dtype}")
    if not 0 < n <= batch_size:
        problems.append(f"batch of {n} samples")
    meta = batch["json"]
    if batch["cls"].tolist() != meta["cls"].tolist():
        problems.append(".cls and .json disagree")
    for j, key in enumerate(batch["__key__"]):
        if key != f"img{int(meta['index'][j]):06d}":
            problems.append(f"key {key} does not match its json index {int(meta['index'][j])}")
            break
    # The top-left corner is always background; JPEG is lossy, so allow a small error.
    corner = img[:, :, :8, :8].float().mean(dim=(2, 3))
    expected = [[float(c[j]) for c in meta["background"]] for j in range(n)]
    err = (corner - torch.tensor(expected)).abs().max().item()
    if err > 12:
        problems.append(f"decoded pixels differ from the written colour by {err:.1f}")
    return problems


def run(args: argparse.Namespace) -> int:
    checks = Checks()
    s3 = S3Options(endpoint_url=args.endpoint_url)

    print(f"1. Writing {args.shards} shards x {args.per_shard} samples to {URL} ...")
    written, write_s = write_dataset(s3, args.shards, args.per_shard)
    total = args.shards * args.per_shard
    probe = StreamingWebDataset(URL, s3=s3)
    shard_bytes = sum(info.size for info in probe.shards)
    print(
        f"   wrote {len(written)} shards ({shard_bytes / 1e6:.1f} MB) in {write_s:.1f}s, "
        f"e.g. {probe.shards[0].url}"
    )
    checks.check("writer produced the expected shards", len(probe.shards) == args.shards == len(written))

    bs, nw = args.batch_size, args.num_workers
    print(f"\n2. Reference epoch: shuffle=True, seed=0, batch_size={bs}, num_workers={nw} ...")
    ref_loader = make_loader(s3, bs, nw)
    t0 = time.perf_counter()
    ref_batches = []
    batch_problems: list[str] = []
    for batch in ref_loader:
        batch_problems += check_batch(batch, bs)
        ref_batches.append({"__key__": batch["__key__"], "__url__": batch["__url__"]})
    ref_s = time.perf_counter() - t0
    reference = keys_of(ref_batches)
    full = [b for b in ref_batches if len(b["__key__"]) == bs]
    distinct = sum(len(set(b["__url__"])) for b in full) / max(1, len(full))
    print(f"   {len(reference)} samples in {len(ref_batches)} batches, {ref_s:.2f}s")
    checks.check(
        "decoded batches: uint8 3x48x64 images, cls == json cls, pixels match the written colour",
        not batch_problems,
        "; ".join(batch_problems[:3]),
    )
    checks.check(
        "reference epoch has every sample exactly once",
        len(reference) == total and len(set(reference)) == total,
        f"{len(reference)} yielded, {len(set(reference))} distinct",
    )

    stop_after = args.stop_after
    print(f"\n3. Interrupted run: read {stop_after} batches, checkpoint, resume in a new loader ...")
    first = make_loader(s3, bs, nw)
    it = iter(first)
    before = keys_of(next(it) for _ in range(stop_after))
    state = first.state_dict()
    text = json.dumps(state)
    del it, first  # shuts the workers down: nothing of the first run survives but `text`
    print(f"   checkpoint after {len(before)} samples: {len(text.encode())} bytes of JSON")

    resumed = make_loader(s3, bs, nw)
    resumed.load_state_dict(json.loads(text))
    t0 = time.perf_counter()
    after = keys_of(resumed)
    print(f"   resumed run read the remaining {len(after)} samples in {time.perf_counter() - t0:.2f}s")
    combined = before + after
    checks.check(
        "before + after == reference epoch, in the same order",
        combined == reference,
        f"first difference at position {_first_diff(combined, reference)}" if combined != reference else "",
    )
    counts = collections.Counter(combined)
    dupes = sum(1 for c in counts.values() if c > 1)
    checks.check(
        "every sample exactly once across the interruption",
        len(combined) == total and set(combined) == set(reference) and dupes == 0,
        f"{len(combined)} yielded, {len(counts)} distinct, {dupes} duplicated",
    )

    print("\n4. Next epoch (iter() again on the resumed loader, and on the reference loader) ...")
    next_epoch = keys_of(resumed)
    ref_next = keys_of(ref_loader)
    checks.check(
        "next epoch: same samples, different order",
        sorted(next_epoch) == sorted(reference) and next_epoch != reference,
        f"epoch {resumed.epoch}, {_moved(next_epoch, reference):.0%} of positions changed",
    )
    checks.check(
        "next epoch is the same for the resumed and the uninterrupted loader",
        next_epoch == ref_next,
    )
    del resumed, ref_loader

    mb = shard_bytes / 1e6
    print("\nReport")
    print(f"  dataset:        {total} samples in {args.shards} shards, {mb:.1f} MB, at {URL}")
    print(
        f"  throughput:     {total / ref_s:,.0f} samples/s, {mb / ref_s:.1f} MB/s "
        f"(reference epoch incl. worker start-up, {nw} workers, local S3 server)"
    )
    print(f"  mixing:         mean distinct shards per batch of {bs}: {distinct:.1f}")
    print(f"  checkpoint:     {len(text.encode())} bytes of JSON, positions only")
    print(f"  resumed at:     sample {len(before)} of {total} (after batch {stop_after})")
    return checks.summary()


def _first_diff(a: list[str], b: list[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _moved(a: list[str], b: list[str]) -> float:
    return sum(x != y for x, y in zip(a, b, strict=False)) / max(1, min(len(a), len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--stop-after", type=int, default=37, help="batches read before the checkpoint")
    args = parser.parse_args()
    if args.stop_after * args.batch_size >= args.shards * args.per_shard:
        parser.error("--stop-after must leave part of the epoch to resume")

    t0 = time.perf_counter()
    with ExitStack() as stack:  # the server stops when the stack closes, whatever happens
        args.endpoint_url = start_local_server(stack, BUCKET)
        print()
        rc = run(args)
    print(f"Total time {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
