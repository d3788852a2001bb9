"""Convert an image folder (one sub-folder per class) into WebDataset shards on S3 with ``optimize``.

Run it offline (it makes a synthetic folder of 3 classes x 40 JPEGs in a temporary directory and
starts a local S3 server, moto, on 127.0.0.1 with fake credentials)::

    .venv/bin/python examples/image_folder_to_s3.py

Your own folder (``root/<class>/<name>.jpg``; only ``.jpg``/``.jpeg`` files are taken) and your own
S3-compatible store (boto3's usual credentials or ``--profile``; the bucket must exist)::

    .venv/bin/python examples/image_folder_to_s3.py --input ~/data/flowers \\
        --output s3://my-bucket/flowers/train --endpoint-url http://minio.local:9000 --maxcount 1000

What it does:

1. lists ``root/<class>/*.jpg``; classes are the sorted sub-folder names, numbered from 0;
2. ``optimize(to_sample, paths, output, num_workers=2, maxcount=...)``: ``to_sample(path)`` runs
   in worker processes, reads the file and returns ``{"__key__": "<class>/<stem>", "jpg": <the
   file's bytes, unchanged>, "cls": <class index>, "json": {...}}``; shards are written in input
   order as ``shard-000000.tar``, ... with ``index.json`` beside them;
3. reads everything back with ``StreamingWebDataset(output, schema={"jpg": "rgb8", "cls": "int"})``
   and checks the sample count, the count per class, the image sizes against the JSON metadata
   and (for the synthetic folder) that each image's dominant colour is its class;
4. prints the dataset index (``index.json``): shards, samples, bytes and SHA-256.

Re-running with the same arguments against the same ``--output`` of a real store finds the
finished job's manifest (``.swds-optimize-node0000.json``) and returns at once. Give every new
dataset its own ``--output``: the manifest identifies a job by the function's name, the number of
inputs and the shard limits only, so another folder of as many images would not be converted.
Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from checks import Checks
from local_s3 import add_s3_arguments, s3_output, start_local_server
from PIL import Image

from streaming_wds import S3Options, StreamingWebDataset, optimize

#: Synthetic classes: the dominant colour channel of their images.
COLOURS = ("red", "green", "blue")
IMAGE_EXTENSIONS = (".jpg", ".jpeg")


def make_image_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> dict[str, int]:
    """``root/<colour>/<colour>_NNNN.jpg``: noisy images whose dominant channel is the class.

    Returns each class folder's dominant channel (0 red, 1 green, 2 blue).
    """
    rng = np.random.default_rng(seed)
    channels = {}
    for c in range(classes):
        name = COLOURS[c] if c < len(COLOURS) else f"class{c:03d}"
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(96, 257)), int(rng.integers(72, 193))
            pixels = rng.integers(0, 90, (h, w, 3))
            pixels[..., c % 3] += 150  # the class channel dominates
            pixels += rng.integers(-15, 16, (h, w, 1))  # some brightness texture
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            img.save(root / name / f"{name}_{i:04d}.jpg", format="JPEG", quality=90)
        channels[name] = c % 3
    return channels


def list_image_folder(root: Path) -> tuple[list[Path], list[str]]:
    """The JPEG files under ``root/<class>/`` sorted by class and name, and the class names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths = [
        p
        for c in classes
        for p in sorted((root / c).iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return paths, classes


def sample_key(path: Path) -> str:
    """``<class>/<stem>``: a dot in the key's last part would split key and field, so none there."""
    return f"{path.parent.name}/{path.stem.replace('.', '_')}"


def to_sample(path: Path, class_index: dict[str, int]) -> dict[str, Any]:
    """One sample per image file. Module-level, so it pickles into the worker processes."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:  # reads the header only: no decoding
        width, height = img.size
    cls_name = path.parent.name
    return {
        "__key__": sample_key(path),
        "jpg": data,  # bytes are stored as they are: no re-encoding
        "cls": class_index[cls_name],  # int -> "2"
        "json": {"file": f"{cls_name}/{path.name}", "class": cls_name, "width": width, "height": height},
    }


def read_back(
    output: str, s3: S3Options, classes: list[str], channels: dict[str, int] | None
) -> dict[str, Any]:
    """Stream every sample back and gather what the checks need."""
    dataset = StreamingWebDataset(output, schema={"jpg": "rgb8", "cls": "int"}, s3=s3)
    per_class: collections.Counter[int] = collections.Counter()
    keys: list[str] = []
    problems: list[str] = []
    stream = iter(dataset)
    try:
        for sample in stream:
            keys.append(sample["__key__"])
            cls, img = sample["cls"], sample["jpg"]
            per_class[cls] += 1
            meta = json.loads(sample["json"])  # fields outside the schema stay bytes
            if img.dtype != np.uint8 or img.shape != (meta["height"], meta["width"], 3):
                problems.append(f"{sample['__key__']}: array {img.shape} {img.dtype}, json {meta}")
            if meta["class"] != classes[cls] or not sample["__key__"].startswith(f"{classes[cls]}/"):
                problems.append(f"{sample['__key__']}: cls {cls} but json class {meta['class']!r}")
            dominant = int(img.reshape(-1, 3).mean(axis=0).argmax())
            if channels is not None and dominant != channels[classes[cls]]:
                problems.append(f"{sample['__key__']}: dominant channel {dominant} is not {classes[cls]}")
    finally:
        stream.close()  # stops its download threads
    return {"dataset": dataset, "keys": keys, "per_class": per_class, "problems": problems}


def run(args: argparse.Namespace, s3: S3Options, root: Path, channels: dict[str, int] | None) -> int:
    checks = Checks()
    paths, classes = list_image_folder(root)
    if not paths:
        print(f"no .jpg/.jpeg files under {root}/<class>/")
        return 1
    class_index = {name: i for i, name in enumerate(classes)}
    expected = collections.Counter(class_index[p.parent.name] for p in paths)
    input_bytes = sum(p.stat().st_size for p in paths)
    print(
        f"\n1. Input: {len(paths)} JPEGs ({input_bytes / 1e6:.1f} MB) in {len(classes)} classes "
        f"under {root}: " + ", ".join(f"{i}={name} ({expected[i]})" for i, name in enumerate(classes))
    )

    print(f"\n2. optimize(to_sample, paths, {args.output!r}, num_workers={args.num_workers}, ...)")
    t0 = time.perf_counter()
    result = optimize(
        functools.partial(to_sample, class_index=class_index),
        paths,
        args.output,
        num_workers=args.num_workers,
        maxcount=args.maxcount,
        maxsize=int(args.maxsize_mb * 1e6),
        s3=s3,
        progress=sys.stderr.isatty(),
    )
    elapsed = time.perf_counter() - t0
    shard_bytes = sum(e.size for e in result.shards)
    print(
        f"   {result.samples} samples in {len(result.shards)} shards ({shard_bytes / 1e6:.1f} MB) "
        f"in {elapsed:.2f}s: {result.samples / elapsed:,.0f} samples/s; index written: "
        f"{result.index_written}"
    )
    checks.check(
        "optimize wrote every input, skipped none", result.samples == len(paths) and not result.failed
    )
    checks.check("optimize wrote the dataset index", result.index_written)
    n_shards = -(-len(paths) // args.maxcount)
    checks.check(
        f"shards of at most {args.maxcount} samples",
        all(e.samples <= args.maxcount for e in result.shards) and len(result.shards) >= n_shards,
        ", ".join(str(e.samples) for e in result.shards),
    )

    print(
        f"\n3. Reading back with StreamingWebDataset({args.output!r}, schema={{'jpg': 'rgb8', 'cls': 'int'}})"
    )
    t0 = time.perf_counter()
    back = read_back(args.output, s3, classes, channels)
    elapsed = time.perf_counter() - t0
    keys, per_class, problems, dataset = back["keys"], back["per_class"], back["problems"], back["dataset"]
    print(f"   {len(keys)} samples decoded in {elapsed:.2f}s")
    want_keys = [sample_key(p) for p in paths]
    checks.check(
        "every image read back once, in input order",
        keys == want_keys,
        f"{len(keys)} read, {len(set(keys))} distinct, {len(paths)} written",
    )
    checks.check(
        "samples per class match the folder",
        per_class == expected,
        ", ".join(f"{classes[c]}: {per_class[c]}/{expected[c]}" for c in sorted(expected)),
    )
    what = "uint8 HxWx3 arrays of the JSON's size, cls matches key and JSON"
    if channels is not None:  # the synthetic folder
        what += ", dominant colour is the class's"
    checks.check(what, not problems, "; ".join(problems[:3]))
    checks.check(
        "len(dataset) and num_samples come from index.json",
        dataset.index is not None and dataset.num_samples == len(paths) == len(dataset),
    )

    index = dataset.index
    if index is not None:
        print(f"\n4. Index (index.json under {args.output}): {index.total_samples} samples")
        print(f"   {'shard':<20} {'samples':>7} {'bytes':>12}  sha256")
        for entry in index.shards:
            print(f"   {entry.name:<20} {entry.samples:>7} {entry.size:>12,}  {entry.sha256[:16]}…")
        print(f"   {'total':<20} {index.total_samples:>7} {sum(e.size for e in index.shards):>12,}")

    return checks.summary()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, help="image folder root/<class>/*.jpg (default: synthetic)")
    parser.add_argument("--classes", type=int, default=3, help="synthetic folder: classes")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic folder: images per class")
    add_s3_arguments(parser, "s3://demo/image-folder/train")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--maxcount", type=int, default=50, help="samples per shard at most")
    parser.add_argument("--maxsize-mb", type=float, default=256, help="shard size in MB at most")
    args = parser.parse_args()
    url = s3_output(parser, args)
    if args.input is not None and not args.input.is_dir():
        parser.error(f"--input {args.input} is not a directory")

    t0 = time.perf_counter()
    with ExitStack() as stack:
        endpoint = args.endpoint_url or start_local_server(stack, url.netloc)
        s3 = S3Options(endpoint_url=endpoint, profile=args.profile)
        if args.input is not None:
            root, channels = args.input, None
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swds-images-")))
            channels = make_image_folder(root, args.classes, args.per_class)
        rc = run(args, s3, root, channels)
    print(f"Total time {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
