"""Run one loader for one epoch in this (fresh) process and write what it measured as JSON.

    <env python> benchmarks/run_loader.py PEER CONFIG_JSON OUT_JSON

Started by ``loader_bench.py`` in the peer's own environment (stdlib and the peer module only).
Time and CPU are counted from just before ``peer.make(cfg)`` (so interpreter start-up and
imports are not), to the last batch and the loader's release, plus the worker processes' CPU
once they are joined (the final ``gc.collect()`` that joins them is not counted).
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import resource
import sys
import time
from pathlib import Path


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> None:
    peer_name, cfg_json, out_path = sys.argv[1:4]
    cfg = json.loads(cfg_json)
    sys.path.insert(0, str(Path(__file__).parent))
    peer = importlib.import_module(f"peers.{peer_name}")
    import torch  # noqa: F401  # imported by every peer; keep its import out of the timing

    cpu0 = _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    loader = peer.make(cfg)
    keys: list[str] = []
    ttfb = None
    it = iter(loader)
    for batch in it:
        if ttfb is None:
            ttfb = time.perf_counter() - t0
            peer.check(batch, cfg["mode"])
        keys.extend(peer.keys(batch))
    elapsed = time.perf_counter() - t0
    del it, loader, batch  # a DataLoader iterator shuts its workers down as it goes
    cpu_self = _cpu(resource.RUSAGE_SELF) - cpu0
    # Joins workers still referenced by a cycle. Its own CPU is not counted: a full collection
    # of the interpreter's heap (180,000 objects after importing torch, 0.1-0.15 s) measures
    # this script, not the loader. The workers' CPU is counted once they are joined.
    gc.collect()
    cpu = cpu_self + _cpu(resource.RUSAGE_CHILDREN)
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    result = {
        "samples": len(keys),
        "unique": len(set(keys)),
        "keys_sha256": digest,
        "seconds": elapsed,
        "ttfb": ttfb,
        "cpu": cpu,
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
