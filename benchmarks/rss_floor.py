"""The smallest peak RSS a DataLoader process tree has on this machine, whatever the loader.

    .venv/bin/python benchmarks/rss_floor.py [--workers 1,2,4] [--samples 16000]

A torch ``DataLoader`` (batch 32, default collate, ``fork``) over an ``IterableDataset`` that
does no I/O and no decoding: each sample is made in memory. The process imports what every
loader in ``loader_bench.py`` imports (torch, numpy, boto3, PIL), and peak RSS is measured as
there: the sum of resident pages over the process tree (``/proc/PID/statm``), sampled every
20 ms. Whatever a real loader adds (downloads, parsing, decoding, read-ahead) comes on top.

Settings (one line each, per worker count):

* ``ints``: each sample an ``int``: the interpreters and their imports alone.
* ``full``: each sample a fresh 375x500x3 ``uint8`` array, the size of one of the benchmark's
  JPEGs decoded at full size (a batch is 18 MB); the main process takes each batch and drops
  it without reading its pixels, as ``loader_bench.py``'s runs do (they read the keys only).
* ``full-read``: the same, and the main process reads every batch (``sum``), as a training
  step does (``max``): the batch's pages count in the main process too.
* ``half``: 188x250x3 arrays, a JPEG decoded at 1/2 scale (a batch is 4.5 MB).

For each, the parts at the peak: per process, ``RssAnon``/``RssFile``/``RssShmem`` in MiB
(``/proc/PID/status``). Pages a forked worker shares copy-on-write with the main process count
in both, as ``ps`` counts them. File-backed RSS depends on the page cache (see the benchmark
README: run ``loader_bench.py --drop-caches`` first to compare with its tables).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import warnings
from typing import Any

import boto3  # noqa: F401  # imported by every loader measured
import numpy as np
import PIL.Image  # noqa: F401  # imported by every loader that decodes
import torch
from proctree import resident, tree
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

SHAPES: dict[str, tuple[int, ...] | None] = {
    "ints": None,
    "full": (375, 500, 3),
    "full-read": (375, 500, 3),
    "half": (188, 250, 3),
}


class Made(IterableDataset):  # type: ignore[type-arg]
    """``samples`` samples split over the workers, each made in memory."""

    def __init__(self, samples: int, shape: tuple[int, ...] | None) -> None:
        self.samples = samples
        self.shape = shape

    def __iter__(self) -> Any:
        info = get_worker_info()
        first, step = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(first, self.samples, step):
            yield i if self.shape is None else np.full(self.shape, i % 251, np.uint8)


def _parts(pid: int) -> str:
    parts = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon", "RssFile", "RssShmem")):
                    key, value = line.split(":")
                    parts[key[3:]] = int(value.split()[0]) // 1024
    except OSError:
        return "gone"
    return "/".join(str(parts.get(k, 0)) for k in ("Anon", "File", "Shmem"))


def measure(setting: str, workers: int, samples: int) -> tuple[float, str]:
    """Peak tree RSS in MB (1e6 bytes) over one pass, and the parts at the peak."""
    peak, at_peak = 0, ""
    done = threading.Event()

    def watch() -> None:
        nonlocal peak, at_peak
        me = os.getpid()
        while not done.wait(0.02):
            pids = tree(me)
            total = sum(resident(p) for p in pids)
            if total > peak:
                peak = total
                at_peak = " + ".join(("main " if p == me else "worker ") + _parts(p) for p in pids)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        loader = DataLoader(Made(samples, SHAPES[setting]), batch_size=32, num_workers=workers)
        for batch in loader:
            if setting == "full-read":
                batch.max()  # every page read, no temporary (a sum would widen to int64)
        del loader, batch
    finally:
        done.set()
        watcher.join()
    return peak / 1e6, at_peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--samples", type=int, default=16000)
    p.add_argument("--settings", default=",".join(SHAPES))
    p.add_argument("--one", nargs=2, metavar=("SETTING", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # one measurement, in this fresh process
        # torch warns about more workers than CPUs; 4 on 2 CPUs is one of the settings measured
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        mb, parts = measure(args.one[0], int(args.one[1]), args.samples)
        print(f"| {args.one[1]} | {args.one[0]} | {mb:,.0f} | {parts} |", flush=True)
        return
    print(f"# torch {torch.__version__}, numpy {np.__version__}; parts: Anon/File/Shmem MiB per process")
    print("| workers | setting | peak RSS MB | parts at the peak |")
    print("|---|---|---|---|")
    for workers in args.workers.split(","):
        for setting in args.settings.split(","):
            one = ["--one", setting, workers, "--samples", str(args.samples)]
            subprocess.run([sys.executable, __file__, *one], check=True)


if __name__ == "__main__":
    main()
