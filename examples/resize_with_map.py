"""Resize an image folder in parallel with ``map``, into a local folder and onto S3.

Run it offline (it makes a synthetic folder of 3 classes x 40 JPEGs of assorted sizes in a
temporary directory, and starts a local S3 server, moto, on 127.0.0.1 with fake credentials)::

    .venv/bin/python examples/resize_with_map.py

Your own folder (``root/<class>/<name>.jpg``; only ``.jpg``/``.jpeg`` files are taken), a local
output folder of your choice, and your own S3-compatible store (boto3's usual credentials or
``--profile``; the bucket must exist)::

    .venv/bin/python examples/resize_with_map.py --input ~/data/flowers --max-side 256 \\
        --local-output /tmp/flowers-256 --output s3://my-bucket/flowers-256 \\
        --endpoint-url http://minio.local:9000

``resize_into(path, out_dir)`` runs in worker processes (``num_workers=2``): it shrinks one image
to fit in ``--max-side`` x ``--max-side`` pixels, keeping its aspect ratio, and saves it as
``out_dir/<class>/<name>``. ``map`` calls it

1. with the local output folder itself as ``out_dir``;
2. for the ``s3://`` output, with a fresh temporary folder per input, whose files are uploaded
   under the prefix with the same relative paths (``<prefix>/<class>/<name>``) and then deleted.

It then lists both outputs and checks that every image is there, in its class folder, with the
size expected from its original, and re-runs the S3 job to show that ``map`` skips inputs its
manifest (``.swds-map-node0000.json``, beside the output) records as done. Exits non-zero if a
check fails.

Give every job its own output: the manifest identifies a job by the function's name and the
number of inputs only, so running again into the same output with another ``--max-side`` or
another folder of as many images skips everything (the verification then fails).
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from checks import Checks
from local_s3 import add_s3_arguments, s3_output, start_local_server
from PIL import Image

from streaming_wds import S3Options, map

COLOURS = ("red", "green", "blue")
IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MANIFEST_PREFIX = ".swds-"  # map's progress record, kept beside the output


def make_image_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """``root/<colour>/<colour>_NNNN.jpg``: noisy JPEGs of assorted sizes and shapes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        name = COLOURS[c] if c < len(COLOURS) else f"class{c:03d}"
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(120, 641)), int(rng.integers(120, 481))
            pixels = rng.integers(0, 90, (h, w, 3))
            pixels[..., c % 3] += 150
            img = Image.fromarray(pixels.astype(np.uint8))
            img.save(root / name / f"{name}_{i:04d}.jpg", format="JPEG", quality=90)


def list_image_folder(root: Path) -> list[Path]:
    """The JPEG files under ``root/<class>/``, sorted by class and name."""
    return [
        p
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
        for p in sorted(d.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]


def resize_into(path: Path, out_dir: str, max_side: int) -> None:
    """Save ``path`` shrunk to fit ``max_side`` as ``out_dir/<class>/<name>``.

    Module-level, so it pickles into the worker processes. Writing the same file again gives the
    same result, so ``map`` may safely repeat it after an interruption.
    """
    with Image.open(path) as img:
        img.thumbnail((max_side, max_side))  # keeps the aspect ratio; never enlarges
        small = img.convert("RGB")
    dest = Path(out_dir) / path.parent.name / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    small.save(dest, format="JPEG", quality=90)


def size_problem(name: str, original: tuple[int, int], resized: tuple[int, int], max_side: int) -> str:
    """Why ``resized`` is not ``original`` fitted into ``max_side`` (empty if it is)."""
    (w, h), (rw, rh) = original, resized
    long_side = min(max_side, max(w, h))  # thumbnail() never enlarges
    scale = long_side / max(w, h)
    ok = max(rw, rh) == long_side and abs(rw - w * scale) <= 1 and abs(rh - h * scale) <= 1
    if not ok:
        return f"{name}: {w}x{h} became {rw}x{rh}, expected ~{w * scale:.1f}x{h * scale:.1f}"
    return ""


def list_local(out: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``out`` (the manifest left out)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(MANIFEST_PREFIX)
    }


def list_s3(output: str, s3: S3Options) -> dict[str, bytes]:
    """Relative key -> content of every object under ``output``, with plain boto3."""
    import boto3

    url = urlparse(output)
    prefix = url.path.strip("/") + "/" if url.path.strip("/") else ""
    session = boto3.session.Session(profile_name=s3.profile, region_name=s3.region)
    client = session.client("s3", endpoint_url=s3.endpoint_url)
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=prefix)
        for obj in page.get("Contents", ())
    ]
    return {
        key[len(prefix) :]: client.get_object(Bucket=url.netloc, Key=key)["Body"].read()
        for key in keys
        if not key.rsplit("/", 1)[-1].startswith(MANIFEST_PREFIX)
    }


def verify(
    checks: Checks, where: str, files: dict[str, bytes], originals: dict[str, tuple[int, int]], max_side: int
) -> None:
    """Every input resized, in its class folder, nothing else there."""
    problems = []
    sizes: dict[str, tuple[int, int]] = {}
    for name, data in files.items():
        if name not in originals:
            problems.append(f"unexpected file {name}")
            continue
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                problems.append(f"{name} is {img.format}, not JPEG")
            sizes[name] = img.size
        problem = size_problem(name, originals[name], sizes[name], max_side)
        if problem:
            problems.append(problem)
    for name in list(sizes)[:3]:
        (w, h), (rw, rh) = originals[name], sizes[name]
        print(f"   {name:<24} {w:>4}x{h:<4} -> {rw:>3}x{rh:<3} {len(files[name]):>7,} B")
    if len(sizes) > 3:
        print(f"   ... {len(sizes) - 3} more")
    per_class = collections.Counter(name.split("/", 1)[0] for name in files)
    missing = sorted(set(originals) - set(files))
    counts = ", ".join(f"{c}: {n}" for c, n in sorted(per_class.items()))
    checks.check(
        f"{where}: one resized file per input, in its class folder",
        not missing and len(files) == len(originals),
        f"{len(files)}/{len(originals)} files; {counts}" if not missing else f"missing e.g. {missing[:3]}",
    )
    checks.check(
        f"{where}: each is a JPEG of its original's size fitted into {max_side}x{max_side}",
        not problems,
        "; ".join(problems[:3]),
    )


def run(args: argparse.Namespace, s3: S3Options, root: Path, local_out: Path) -> int:
    checks = Checks()
    paths = list_image_folder(root)
    if not paths:
        print(f"no .jpg/.jpeg files under {root}/<class>/")
        return 1
    originals: dict[str, tuple[int, int]] = {}
    for p in paths:
        with Image.open(p) as img:
            originals[f"{p.parent.name}/{p.name}"] = img.size
    input_bytes = sum(p.stat().st_size for p in paths)
    sides = [max(s) for s in originals.values()]
    print(
        f"\nInput: {len(paths)} JPEGs ({input_bytes / 1e6:.1f} MB, longest side "
        f"{min(sides)}-{max(sides)} px) under {root}"
    )
    fn = functools.partial(resize_into, max_side=args.max_side)
    progress = sys.stderr.isatty()

    print(f"\n1. map(resize_into, paths, {str(local_out)!r}, num_workers={args.num_workers})")
    t0 = time.perf_counter()
    result = map(fn, paths, local_out, num_workers=args.num_workers, progress=progress)
    elapsed = time.perf_counter() - t0
    local_files = list_local(local_out)
    out_bytes = sum(len(d) for d in local_files.values())
    print(
        f"   {result.done} done in {elapsed:.2f}s ({len(paths) / elapsed:,.0f} images/s): "
        f"{len(local_files)} files, {out_bytes / 1e6:.2f} MB, e.g. {local_out / next(iter(local_files))}"
    )
    if result.skipped_done:
        print(f"   ({result.skipped_done} inputs were done by an earlier run into this folder: skipped)")
    checks.check("map completed every input", result.done == len(paths) and not result.failed)
    verify(checks, "local", local_files, originals, args.max_side)

    print(f"\n2. map(resize_into, paths, {args.output!r}, num_workers={args.num_workers}, s3=...)")
    t0 = time.perf_counter()
    result = map(fn, paths, args.output, num_workers=args.num_workers, s3=s3, progress=progress)
    elapsed = time.perf_counter() - t0
    print(
        f"   {result.done} done in {elapsed:.2f}s ({len(paths) / elapsed:,.0f} images/s): "
        f"uploaded {result.files} files, {result.bytes / 1e6:.2f} MB"
    )
    if result.skipped_done:
        print(f"   ({result.skipped_done} inputs were done by an earlier run into this output: skipped)")
    s3_files = list_s3(args.output, s3)
    example = next(iter(s3_files), "")
    print(f"   listed {len(s3_files)} objects, e.g. {args.output.rstrip('/')}/{example}")
    checks.check(
        "map completed every input and uploaded one file per input it ran",
        result.done == len(paths) and not result.failed and result.files == len(paths) - result.skipped_done,
    )
    if not result.skipped_done:
        checks.check(
            "bytes uploaded == bytes listed",
            result.bytes == sum(len(d) for d in s3_files.values()),
            f"{result.bytes:,} B",
        )
    verify(checks, "s3", s3_files, originals, args.max_side)
    checks.check("local and S3 copies are byte-identical", s3_files == local_files)

    print("\n3. The same S3 job again: its manifest says every input is done")
    t0 = time.perf_counter()
    again = map(fn, paths, args.output, num_workers=args.num_workers, s3=s3, progress=progress)
    print(
        f"   {again.skipped_done} skipped as done, {again.files} files uploaded, "
        f"in {time.perf_counter() - t0:.2f}s"
    )
    checks.check("the re-run skips every input", again.skipped_done == len(paths) and again.files == 0)

    return checks.summary()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, help="image folder root/<class>/*.jpg (default: synthetic)")
    parser.add_argument("--classes", type=int, default=3, help="synthetic folder: classes")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic folder: images per class")
    parser.add_argument("--max-side", type=int, default=64, help="longest side of the resized images")
    parser.add_argument("--local-output", type=Path, help="local output folder (default: a temporary one)")
    add_s3_arguments(parser, "s3://demo/resized")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    url = s3_output(parser, args)
    if args.input is not None and not args.input.is_dir():
        parser.error(f"--input {args.input} is not a directory")
    if args.max_side < 1:
        parser.error("--max-side must be positive")

    t0 = time.perf_counter()
    with ExitStack() as stack:
        endpoint = args.endpoint_url or start_local_server(stack, url.netloc)
        s3 = S3Options(endpoint_url=endpoint, profile=args.profile)
        if args.input is not None:
            root = args.input
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swds-images-")))
            make_image_folder(root, args.classes, args.per_class)
        local_out = args.local_output or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="swds-resized-"))
        )
        rc = run(args, s3, root, local_out)
    print(f"Total time {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
