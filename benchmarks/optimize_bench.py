"""Throughput of ``optimize`` writing shards to local disk and to a local S3 server, against peers.

    .venv/bin/python benchmarks/optimize_bench.py                  # ~2,000 samples x ~100 KB, 3 repeats
    .venv/bin/python benchmarks/optimize_bench.py --samples 4000 --repeats 5 --workers 0,2,4
    .venv/bin/python benchmarks/optimize_bench.py --payload encode # fn encodes a JPEG per sample
    .venv/bin/python benchmarks/optimize_bench.py --fn-ms 5 --samples 500   # a heavier fn
    .venv/bin/python benchmarks/optimize_bench.py --no-s3          # local disk only

Every configuration writes the same samples (``__key__``, ``jpg`` ~100 KB, ``cls`` int, ``json``
dict) into shards of ``--maxcount`` samples, into a fresh output, and is timed from the call to
its return (worker start-up, waiting for uploads and writing the index included):

* ``streaming_wds.optimize(fn, range(N), out, num_workers=W)`` for each ``--workers`` value W, to
  local disk and to ``s3://`` on the local server;
* ``streaming_wds.ShardWriter`` in this process (what ``optimize`` is built on), for reference;
* ``webdataset.ShardWriter`` in this process to local disk, and to S3 the way webdataset does it:
  each shard written locally, then uploaded with boto3 by ``post=`` (synchronously) and deleted;
* ``litdata.optimize`` to local disk, only if ``import litdata`` works.

Payload (``--payload``):

* ``pool`` (default): ``--pool`` distinct random-noise JPEGs of ~``--payload-kb`` KB are encoded
  once up front (not timed); ``fn(i)`` takes JPEG ``i % pool`` and inserts a comment segment with
  ``i`` after its start marker, so every sample's bytes differ and stay a valid JPEG at almost no
  CPU cost. This measures the writers themselves: encoding tar members, moving samples between
  processes, writing and uploading shards.
* ``encode``: ``fn(i)`` draws a random-noise image seeded by ``i`` and encodes it as JPEG
  (about 1.5-2.5 ms per sample on the 2-core machine of the README), so encoding cost is included.

``--fn-ms X`` makes ``fn`` also burn X ms of CPU per sample, standing for heavier preprocessing:
it shows from which cost of ``fn`` worker processes pay off.

The S3 server is moto's ``ThreadedMotoServer`` on 127.0.0.1, started in a separate process so its
request handling does not compete with the benchmark for this process's GIL; objects are deleted
after each run (not timed). Local outputs go to a temporary directory (``--tmpdir``) and are
deleted after each run; nothing is fsync'ed, by any writer, so local figures are mostly writes
into the page cache. Configurations are run round-robin, ``--repeats`` times each, after one
small untimed warm-up run each; the table shows the median, min and max wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import streaming_wds
from streaming_wds import S3Options, ShardWriter, optimize

BUCKET = "bench"

# -- payload -----------------------------------------------------------------------------------

_POOLS: dict[tuple[int, int, int], list[bytes]] = {}  # per process: built once, inherited by fork


def noise_jpeg(seed: int, side: int) -> bytes:
    """A ``side`` x ``side`` random-noise JPEG (noise barely compresses: ~0.9 B per pixel)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def side_for(payload_kb: float) -> int:
    """The image side whose noise JPEG is about ``payload_kb`` KB."""
    side = 300
    for _ in range(3):
        size = len(noise_jpeg(0, side))
        side = max(8, round(side * (payload_kb * 1000 / size) ** 0.5))
    return side


def with_comment(jpg: bytes, text: str) -> bytes:
    """``jpg`` with a COM segment holding ``text`` right after the SOI marker: still a valid JPEG."""
    body = text.encode()
    return jpg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpg[2:]


def burn_cpu(ms: float) -> None:
    """Spend ``ms`` milliseconds of this process's CPU time (stands for heavier preprocessing)."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass


def sample_of(i: int, jpg: bytes, source: int) -> dict[str, Any]:
    return {"__key__": f"s{i:08d}", "jpg": jpg, "cls": i % 1000, "json": {"index": i, "source": source}}


@dataclass(frozen=True)
class PooledSample:
    """``fn(i)`` for ``--payload pool``: a pooled JPEG made unique by a comment. Pickles small."""

    pool: int
    side: int
    seed: int = 0
    fn_ms: float = 0

    def jpegs(self) -> list[bytes]:
        key = (self.pool, self.side, self.seed)
        if key not in _POOLS:
            _POOLS[key] = [noise_jpeg(self.seed + k, self.side) for k in range(self.pool)]
        return _POOLS[key]

    def __call__(self, i: int) -> dict[str, Any]:
        burn_cpu(self.fn_ms)
        return sample_of(i, with_comment(self.jpegs()[i % self.pool], f"sample {i}"), i % self.pool)


@dataclass(frozen=True)
class EncodedSample:
    """``fn(i)`` for ``--payload encode``: a fresh noise image encoded as JPEG on every call."""

    side: int
    fn_ms: float = 0

    def __call__(self, i: int) -> dict[str, Any]:
        burn_cpu(self.fn_ms)
        return sample_of(i, noise_jpeg(i, self.side), i)


@dataclass(frozen=True)
class LitdataSample:
    """The same sample for ``litdata.optimize`` (flat, no key: litdata indexes samples itself)."""

    fn: PooledSample | EncodedSample

    def __call__(self, i: int) -> dict[str, Any]:
        s = self.fn(i)
        return {"jpg": s["jpg"], "cls": s["cls"], "index": i}


# -- the local S3 server, in its own process ---------------------------------------------------


def serve_s3(conn: Connection) -> None:
    """Child process: run moto's threaded server on 127.0.0.1 until told to stop."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's per-request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: any free port
    server.start()
    conn.send(server.get_host_and_port())
    conn.recv()  # blocks until the parent asks us to stop (or goes away)
    server.stop()


class S3Server:
    def __init__(self) -> None:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            os.environ.pop(var, None)
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
        )
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_s3, args=(child,), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            raise RuntimeError("the local S3 server did not start within 60 s")
        host, port = self.conn.recv()
        self.endpoint = f"http://{host}:{port}"
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint)
        self.client.create_bucket(Bucket=BUCKET)

    def clear(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (moto keeps them in memory)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the server process may be gone already
            self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


# -- configurations ----------------------------------------------------------------------------


@dataclass
class Env:
    fn: PooledSample | EncodedSample
    maxcount: int
    tmpdir: str
    s3: S3Server | None
    runs: int = 0

    def new_local(self) -> str:
        self.runs += 1
        return tempfile.mkdtemp(prefix=f"run{self.runs:03d}-", dir=self.tmpdir)

    def new_prefix(self) -> str:
        self.runs += 1
        return f"run{self.runs:03d}"

    @property
    def s3_options(self) -> S3Options:
        assert self.s3 is not None
        return S3Options(endpoint_url=self.s3.endpoint)


def dir_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.suffix == ".tar")


def swds_optimize(env: Env, n: int, workers: int, to_s3: bool) -> tuple[int, int, float]:
    dest = f"s3://{BUCKET}/{env.new_prefix()}" if to_s3 else env.new_local()
    try:
        t0 = time.perf_counter()
        result = optimize(
            env.fn,
            range(n),
            dest,
            num_workers=workers,
            maxcount=env.maxcount,
            s3=env.s3_options if to_s3 else None,
            progress=False,
        )
        elapsed = time.perf_counter() - t0
        return result.samples, sum(e.size for e in result.shards), elapsed
    finally:
        cleanup(env, dest)


def swds_writer(env: Env, n: int, to_s3: bool) -> tuple[int, int, float]:
    dest = f"s3://{BUCKET}/{env.new_prefix()}" if to_s3 else env.new_local()
    try:
        t0 = time.perf_counter()
        with ShardWriter(dest, maxcount=env.maxcount, s3=env.s3_options if to_s3 else None) as writer:
            for i in range(n):
                writer.write(env.fn(i))
        elapsed = time.perf_counter() - t0
        return writer.total, sum(e.size for e in writer.entries), elapsed
    finally:
        cleanup(env, dest)


def wds_writer(env: Env, n: int, to_s3: bool) -> tuple[int, int, float]:
    import webdataset as wds

    local = env.new_local()
    prefix = env.new_prefix()
    uploaded: list[int] = []

    def upload(fname: str) -> None:  # webdataset's hook, called after each shard is closed
        assert env.s3 is not None
        uploaded.append(os.path.getsize(fname))
        env.s3.client.upload_file(fname, BUCKET, f"{prefix}/{os.path.basename(fname)}")
        os.unlink(fname)

    try:
        t0 = time.perf_counter()
        with wds.ShardWriter(
            os.path.join(local, "shard-%06d.tar"),
            maxcount=env.maxcount,
            maxsize=1 << 40,
            verbose=0,
            post=upload if to_s3 else None,
        ) as writer:
            for i in range(n):
                writer.write(env.fn(i))
            total = writer.total
        elapsed = time.perf_counter() - t0
        return total, sum(uploaded) if to_s3 else dir_bytes(local), elapsed
    finally:
        shutil.rmtree(local, ignore_errors=True)
        if to_s3:
            cleanup(env, f"s3://{BUCKET}/{prefix}")


def litdata_optimize(env: Env, n: int, workers: int) -> tuple[int, int, float]:
    import litdata

    local = env.new_local()
    out = os.path.join(local, "out")
    try:
        t0 = time.perf_counter()
        litdata.optimize(
            fn=LitdataSample(env.fn),
            inputs=list(range(n)),
            output_dir=out,
            num_workers=max(1, workers),
            chunk_size=env.maxcount,
        )
        elapsed = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        return n, size, elapsed
    finally:
        shutil.rmtree(local, ignore_errors=True)


def cleanup(env: Env, dest: str) -> None:
    if dest.startswith("s3://"):
        assert env.s3 is not None
        env.s3.clear(dest[len(f"s3://{BUCKET}/") :] + "/")
    else:
        shutil.rmtree(dest, ignore_errors=True)


@dataclass
class Config:
    name: str
    target: str
    workers: str
    run: Callable[[int], tuple[int, int, float]]
    times: list[float] = field(default_factory=list)
    nbytes: int = 0
    problems: list[str] = field(default_factory=list)


def configurations(env: Env, args: argparse.Namespace, has_litdata: bool) -> list[Config]:
    targets = [False, True] if env.s3 is not None else [False]
    configs: list[Config] = []
    for to_s3 in targets:
        where = "S3 (moto)" if to_s3 else "local disk"
        for w in args.workers:
            configs.append(
                Config(
                    "streaming_wds optimize",
                    where,
                    str(w),
                    lambda n, w=w, to_s3=to_s3: swds_optimize(env, n, w, to_s3),
                )
            )
        configs.append(
            Config("streaming_wds ShardWriter", where, "-", lambda n, to_s3=to_s3: swds_writer(env, n, to_s3))
        )
        configs.append(
            Config(
                "webdataset ShardWriter" + (" + post= upload" if to_s3 else ""),
                where,
                "-",
                lambda n, to_s3=to_s3: wds_writer(env, n, to_s3),
            )
        )
    if has_litdata:
        for w in sorted({max(1, w) for w in args.workers}):  # litdata needs a worker at least
            configs.append(
                Config("litdata optimize", "local disk", str(w), lambda n, w=w: litdata_optimize(env, n, w))
            )
    return configs


# -- main --------------------------------------------------------------------------------------


def versions() -> str:
    import boto3
    import moto
    import PIL
    import webdataset

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return (
        f"python {platform.python_version()}, streaming_wds {streaming_wds.__version__}, "
        f"webdataset {webdataset.__version__}, moto {moto.__version__}, boto3 {boto3.__version__}, "
        f"torch {torch_version}, pillow {PIL.__version__}, numpy {np.__version__}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000, help="samples per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    parser.add_argument(
        "--workers", default="0,1,2", help="comma-separated num_workers values for optimize (0: in-process)"
    )
    parser.add_argument("--maxcount", type=int, default=250, help="samples per shard")
    parser.add_argument("--payload", choices=("pool", "encode"), default="pool", help="see above")
    parser.add_argument("--payload-kb", type=float, default=100, help="JPEG size, about")
    parser.add_argument("--pool", type=int, default=16, help="distinct JPEGs for --payload pool")
    parser.add_argument(
        "--fn-ms", type=float, default=0, help="extra CPU milliseconds burnt in fn per sample (default 0)"
    )
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 configurations")
    parser.add_argument("--tmpdir", help="where local outputs go (default: the system temp dir)")
    args = parser.parse_args()
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 0:
        parser.error("--workers needs at least one value, none negative")
    if args.samples < 1 or args.repeats < 1 or args.maxcount < 1 or args.pool < 1 or args.payload_kb <= 0:
        parser.error("--samples, --repeats, --maxcount, --pool and --payload-kb must be positive")
    if args.fn_ms < 0:
        parser.error("--fn-ms must not be negative")
    return args


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    try:
        import litdata  # noqa: F401

        has_litdata = True
    except ImportError:
        has_litdata = False

    side = side_for(args.payload_kb)
    fn: PooledSample | EncodedSample
    if args.payload == "pool":
        fn = PooledSample(args.pool, side, fn_ms=args.fn_ms)
        jpegs = fn.jpegs()  # built here, untimed; fork-started workers inherit it
        mean_kb = sum(len(j) for j in jpegs) / len(jpegs) / 1000
        payload = f"pool of {args.pool} noise JPEGs ({side}x{side}, mean {mean_kb:.1f} KB), made unique"
    else:
        fn = EncodedSample(side, fn_ms=args.fn_ms)
        sizes = [len(fn(i)["jpg"]) for i in range(8)]
        t0 = time.perf_counter()
        for i in range(20):
            fn(i)
        per_sample_ms = (time.perf_counter() - t0) / 20 * 1000 - args.fn_ms
        mean_kb = sum(sizes) / len(sizes) / 1000
        payload = (
            f"one JPEG encoded per sample in fn ({side}x{side} noise, ~{mean_kb:.1f} KB, "
            f"{per_sample_ms:.1f} ms per sample here)"
        )
    if args.fn_ms:
        payload += f"; fn also burns {args.fn_ms:g} ms of CPU per sample"

    print("optimize benchmark")
    print(f"  {versions()}")
    print(
        f"  {platform.platform()}, {os.cpu_count()} CPUs, start method "
        f"{multiprocessing.get_start_method()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  {args.samples} samples per run, {args.maxcount} per shard; payload: {payload}; "
        f"{args.repeats} repeats"
    )

    server = None if args.no_s3 else S3Server()
    tmp = tempfile.mkdtemp(prefix="swds-optbench-", dir=args.tmpdir)
    try:
        if server is not None:
            print(f"  local S3 server (moto, own process) at {server.endpoint}")
        env = Env(fn, args.maxcount, tmp, server)
        configs = configurations(env, args, has_litdata)
        warm = min(args.samples, 2 * args.maxcount, 100)
        print(f"\nwarm-up: one untimed run of {warm} samples per configuration ...")
        for c in configs:
            c.run(warm)
        for r in range(args.repeats):
            print(f"repeat {r + 1}/{args.repeats}:", end="", flush=True)
            for c in configs:
                samples, nbytes, elapsed = c.run(args.samples)
                c.times.append(elapsed)
                c.nbytes = nbytes
                if samples != args.samples:
                    c.problems.append(f"wrote {samples} samples, not {args.samples}")
                print(f" {elapsed:.2f}s", end="", flush=True)
            print(f"  (load average {os.getloadavg()[0]:.2f})")
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()

    print(f"\nMedian of {args.repeats} runs; MB/s counts shard bytes written (tar headers included).")
    header = (
        f"{'writer':<38} {'output':<11} {'workers':>7} {'median s':>9} {'samples/s':>10} "
        f"{'MB/s':>7} {'min s':>7} {'max s':>7}"
    )
    print(header)
    print("-" * len(header))
    for c in configs:
        med = statistics.median(c.times)
        print(
            f"{c.name:<38} {c.target:<11} {c.workers:>7} {med:>9.3f} {args.samples / med:>10,.0f} "
            f"{c.nbytes / med / 1e6:>7.1f} {min(c.times):>7.3f} {max(c.times):>7.3f}"
        )
    if not has_litdata:
        print("litdata not installed: skipped")
    mb = configs[0].nbytes / 1e6
    print(f"\nshard output per run: {mb:.1f} MB; load average after: {load_after:.2f}")
    print(f"total time {time.perf_counter() - t_start:.0f}s")
    failed = [f"{c.name} -> {c.target} (workers {c.workers}): {p}" for c in configs for p in c.problems]
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
