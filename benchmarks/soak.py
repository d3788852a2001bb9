"""Soak test: many epochs through a faulty network, counting what arrives (127.0.0.1 only).

::

    .venv/bin/python benchmarks/soak.py                          # 5 epochs, 2 workers, 25% faults
    .venv/bin/python benchmarks/soak.py --epochs 20 --workers 4 --fault-rate 0.4 --seed 3
    .venv/bin/python benchmarks/soak.py --no-index --on-error skip --server moto

A dataset of ``--shards`` x ``--per-shard`` samples (each with ``--payload`` bytes whose content
is a function of its key) is written to a temporary directory served by
``benchmarks/s3server.py`` (or moto's ``ThreadedMotoServer`` with ``--server moto``). The
loader reads it through the fault-injecting proxy of ``tests/faults/proxy.py``, which breaks a
seeded random share (``--fault-rate``) of the requests with one of: 503 SlowDown, 500, 429,
connection closed or reset before the response, body cut short (FIN) or reset (RST) at a random
byte, body stalled past the read timeout (``--read-timeout``). Every epoch runs
``StreamingDataLoader(num_workers=--workers)`` over a fresh iterator.

Printed per epoch and in total:

* ``samples``: delivered; ``dups``: keys delivered more than once; ``lost``: keys of the dataset
  never delivered; ``bad``: samples whose content is not what was written (spliced or corrupt);
* ``faults``: requests the proxy broke; ``retries``: requests answered with an error or dropped
  before any response (each one makes botocore try again); ``resumes``: ranged ``GetObject``
  requests that start past byte 0 (a reader resuming a body that broke off; with ``--no-index``
  all shard reads carry ``If-Match``, else resumes do);
* ``errors``: exceptions that ended an epoch early (type and message), and the loader's
  ``error_counts`` under ``--on-error skip``;
* ``peak RSS``: the largest sum of resident memory of this process and its descendants
  (sampled every 0.1 s from ``/proc``).

It exits with status 1 if any sample was duplicated, lost or bad, or an epoch raised.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proctree import tree_resident
from benchmarks.s3server import S3Server
from streaming_wds import (
    S3Options,
    ShardWriter,
    StreamingDataLoader,
    StreamingWebDataset,
    StreamOptions,
)
from tests.faults.proxy import (
    Fault,
    FaultProxy,
    Request,
    refuse,
    reset_after,
    reset_before,
    s3_error,
    stall_after,
    truncate_after,
)

BUCKET = "soak"
PREFIX = "ds"


def payload(key: str, base: int) -> bytes:
    """The content of sample ``key``: ``base`` bytes and up to 96 more, derived from the key."""
    size = base + int(key[1:]) % 97
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def write_dataset(root: Path, shards: int, per_shard: int, size: int, index: bool) -> list[str]:
    keys = [f"k{i:07d}" for i in range(shards * per_shard)]
    with ShardWriter(root / BUCKET / PREFIX, maxcount=per_shard, index=index) as w:
        for key in keys:
            w.write({"__key__": key, "bin": payload(key, size)})
    return keys


def fault_menu(shard_size: int, read_timeout: float) -> list[tuple[str, Fault, bool]]:
    """``(name, fault, body_fault)`` for every kind of fault the soak injects."""
    return [
        ("503", s3_error(503, "SlowDown"), False),
        ("500", s3_error(500, "InternalError"), False),
        ("429", s3_error(429, "SlowDown"), False),
        ("closed", refuse(), False),
        ("reset", reset_before(), False),
        ("cut", truncate_after(shard_size // 3), True),
        ("cut-early", truncate_after(700), True),
        ("rst", reset_after(shard_size // 2), True),
        ("stall", stall_after(shard_size // 4, seconds=read_timeout * 5), True),
    ]


def install_faults(
    proxy: FaultProxy, rng: random.Random, rate: float, shard_size: int, read_timeout: float
) -> None:
    """Break a ``rate`` share of the requests, each with a fault drawn uniformly from the menu
    (body faults only on shard reads). The draws are seeded, but which request gets which draw
    depends on thread timing."""
    menu = fault_menu(shard_size, read_timeout)
    last: list[Any] = [None, None]  # the request drawn for (rules are matched one request at a time)

    def draw(req: Request) -> str | None:
        if last[0] is not req:
            shard_read = req.method == "GET" and req.path.endswith(".tar")
            options = [name for name, _, body in menu if shard_read or not body]
            last[:] = [req, rng.choice(options) if rng.random() < rate else None]
        name: str | None = last[1]
        return name

    def drawn(name: str) -> Callable[[Request], bool]:
        return lambda req: draw(req) == name

    for name, fault, _ in menu:
        proxy.add(fault, times=None, when=drawn(name))


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Samples the RSS of this process and its descendants; yields ``[peak bytes]``."""
    peak = [0]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], tree_resident(os.getpid()))

    t = threading.Thread(target=run, name="soak-rss")
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def run_epoch(
    endpoint: str, args: argparse.Namespace, epoch: int
) -> tuple[list[tuple[str, bytes]], str | None, dict[str, int]]:
    s3 = S3Options(
        endpoint_url=endpoint,
        region="us-east-1",
        read_timeout=args.read_timeout,
        max_attempts=args.max_attempts,
    )
    options = StreamOptions(chunk_size=args.chunk_size, max_resumes=args.max_resumes, max_workers=4)
    ds = StreamingWebDataset(
        f"s3://{BUCKET}/{PREFIX}",
        s3=s3,
        shuffle=True,
        seed=args.seed,
        on_error=args.on_error,
        options=options,
    )
    ds.set_epoch(epoch)
    loader = StreamingDataLoader(ds, batch_size=16, num_workers=args.workers, collate_fn=list)
    got: list[tuple[str, bytes]] = []
    error = None
    try:
        for batch in loader:
            got += [(s["__key__"], s["bin"]) for s in batch]
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    counts = ds.error_counts if args.workers == 0 else {}
    return got, error, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: in-process)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=50)
    p.add_argument("--payload", type=int, default=4096, help="bytes per sample")
    p.add_argument("--fault-rate", type=float, default=0.25, help="share of requests broken")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=16 * 1024)
    p.add_argument("--max-resumes", type=int, default=5)
    p.add_argument("--max-attempts", type=int, default=8)
    p.add_argument("--read-timeout", type=float, default=1.0, help="seconds; stalls last 5x this")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--no-index", action="store_true", help="list the shards instead of reading index.json")
    p.add_argument("--server", choices=["s3server", "moto"], default="s3server")
    p.add_argument("-v", "--verbose", action="store_true", help="show the loader's warnings (resumes)")
    args = p.parse_args(argv)
    logging.basicConfig(format="%(processName)s %(name)s: %(message)s")
    logging.getLogger("streaming_wds").setLevel(logging.WARNING if args.verbose else logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    for name, value in [("AWS_ACCESS_KEY_ID", "soak"), ("AWS_SECRET_ACCESS_KEY", "soak")]:
        os.environ.setdefault(name, value)  # requests are signed; the local servers ignore it
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swds-soak-")))
        keys = write_dataset(root, args.shards, args.per_shard, args.payload, index=not args.no_index)
        shard_size = max(f.stat().st_size for f in (root / BUCKET / PREFIX).glob("*.tar"))
        endpoint = stack.enter_context(_server(args.server, root))
        proxy = stack.enter_context(FaultProxy(endpoint))
        install_faults(proxy, random.Random(args.seed), args.fault_rate, shard_size, args.read_timeout)
        peak = stack.enter_context(peak_rss())
        expected = set(keys)
        failed = False
        totals: collections.Counter[str] = collections.Counter()
        print(
            f"{len(keys)} samples in {args.shards} shards of ~{shard_size} bytes; {args.epochs} epochs, "
            f"{args.workers} workers, fault rate {args.fault_rate}, seed {args.seed}"
        )
        print(_line("epoch", {c: c for c, _ in COLUMNS}, "seconds", "errors"))
        for epoch in range(args.epochs):
            start, seen_before = time.monotonic(), len(proxy.exchanges())
            got, error, counts = run_epoch(proxy.endpoint, args, epoch)
            log = proxy.exchanges()[seen_before:]
            seen = collections.Counter(k for k, _ in got)
            row = {
                "samples": len(got),
                "dups": sum(n - 1 for n in seen.values() if n > 1),
                "lost": len(expected - set(seen)),
                "bad": sum(1 for k, b in got if b != payload(k, args.payload)),
                "faults": sum(1 for e in log if e.fault is not None),
                "retries": sum(1 for e in log if e.fault is not None and not e.fault.forwards),
                "resumes": sum(
                    1 for e in log if e.request.path.endswith(".tar") and (e.request.range_start or 0) > 0
                ),
            }
            totals.update(row)
            failed |= bool(row["dups"] or row["lost"] or row["bad"] or error)
            errors = "; ".join(x for x in [error, str(counts) if counts else None] if x) or "-"
            print(_line(str(epoch), row, f"{time.monotonic() - start:.1f}", errors[:300]))
        print(_line("total", totals, "", ""))
    print(f"peak RSS of the process tree: {peak[0] / 2**20:.0f} MiB")
    print("FAILED: samples duplicated, lost, bad, or an epoch raised" if failed else "OK")
    return 1 if failed else 0


COLUMNS = [
    ("samples", 8),
    ("dups", 5),
    ("lost", 5),
    ("bad", 5),
    ("faults", 7),
    ("retries", 8),
    ("resumes", 8),
]


def _line(label: str, row: Mapping[str, object], seconds: str, errors: str) -> str:
    cells = " ".join(f"{row[c]!s:>{w}}" for c, w in COLUMNS)
    return f"{label:>5} {cells} {seconds:>8}  {errors}"


@contextmanager
def _server(kind: str, root: Path) -> Iterator[str]:
    """The S3 endpoint serving ``root/<bucket>/<key>``."""
    if kind == "s3server":
        with S3Server(root) as srv:
            yield srv.endpoint
        return
    import boto3

    from tests.helpers import moto_s3_server

    with moto_s3_server(BUCKET) as srv:
        client = boto3.client("s3", endpoint_url=srv.endpoint, region_name="us-east-1")
        for f in sorted((root / BUCKET / PREFIX).iterdir()):
            client.upload_file(str(f), BUCKET, f"{PREFIX}/{f.name}")
        client.close()
        yield srv.endpoint


if __name__ == "__main__":
    sys.exit(main())
