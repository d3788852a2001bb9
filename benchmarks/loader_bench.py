"""Loader throughput against the peers, from a local S3-compatible server, one command.

    .venv/bin/python benchmarks/loader_bench.py                   # everything, ~1.5 GB dataset
    .venv/bin/python benchmarks/loader_bench.py --latency-ms 20 --modes raw --workers 2 --runs 5
    .venv/bin/python benchmarks/loader_bench.py --loaders swds,naive --shards 4   # quick look

What it does:

1. Writes the synthetic ImageNet-like dataset (see ``bench_data.py``) under ``--data`` once.
2. For each ``--latency-ms`` setting, starts ``s3server.py`` on 127.0.0.1 in its own process
   (``os.sendfile`` bodies; optional ``--bandwidth-mbps`` cap) and measures the ceilings
   (``ceilings.py``: boto3 GET with 1 and 8 threads, tar parsing, JPEG decoding).
3. Runs every loader for one epoch in a fresh process of its own environment
   (``run_loader.py``, environments from ``envs.py``), for each mode and ``num_workers``, the
   loaders interleaved, ``--runs`` rounds. Per run: samples/s and MB/s (shard bytes over the
   time from building the loader to its last batch), time to first batch, CPU-seconds per GB
   (runner process and its joined workers, user + system, from just before the loader is
   built: interpreter start-up and imports are not counted), peak RSS (sum over the process
   tree, sampled every 20 ms), and whether every sample arrived exactly once.
4. Prints medians as a Markdown table and writes all runs to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data import BUCKET, PREFIX, SPLIT, DataSpec, is_written, shard_files  # noqa: E402
from proctree import tree_resident  # noqa: E402

DEFAULT_LOADERS = "swds,swds_draft,naive,wds_curl,wds_boto3,swds01,mosaic,litdata_peer"
ENV_VARS = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "PYTHONWARNINGS": "ignore",
}


# -- the server ----------------------------------------------------------------------------------


@contextmanager
def server(
    root: Path, latency_ms: float, bandwidth: float | None, connection: float | None = None
) -> Iterator[str]:
    cmd = [sys.executable, str(HERE / "s3server.py"), str(root), "--latency-ms", str(latency_ms)]
    if bandwidth:
        cmd += ["--bandwidth-mbps", str(bandwidth)]
    if connection:
        cmd += ["--connection-mbps", str(connection)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if not m:
            raise RuntimeError(f"s3server did not start: {line!r}")
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- measuring one run ---------------------------------------------------------------------------


def run_one(python: str, peer: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [python, str(HERE / "run_loader.py"), peer, json.dumps(cfg), out.name]
        env = {**os.environ, **ENV_VARS}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, tree_resident(proc.pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err = f"timed out after {timeout:.0f} s\n{err}"
        finally:
            done.set()
            watcher.join()
        if proc.returncode != 0 or not Path(out.name).stat().st_size:
            return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    result["peak_rss_mb"] = peak / 1e6
    return result


# -- environments and loaders --------------------------------------------------------------------


def peer_env(peer: str) -> str:
    text = (HERE / "peers" / f"{peer}.py").read_text()
    m = re.search(r'^ENV\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise RuntimeError(f"peers/{peer}.py declares no ENV")
    return m.group(1)


def peer_modes(peer: str) -> list[str] | None:
    """The modes a peer declares (``MODES = ("decode",)``), or ``None`` for all."""
    m = re.search(r"^MODES\s*=\s*\(([^)]*)\)", (HERE / "peers" / f"{peer}.py").read_text(), re.M)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else None


def python_for(peer: str) -> str | None:
    env = peer_env(peer)
    if env == "main":
        return sys.executable
    import envs

    try:
        return str(envs.ensure_env(env))
    except Exception as exc:  # a peer that cannot be installed is reported and skipped
        print(f"# {peer}: environment {env!r} unavailable: {exc}", flush=True)
        return None


def prepare(python: str, peer: str, cfg: dict[str, Any]) -> str | None:
    """Run the peer's untimed ``prepare`` (format conversion); an error message or ``None``."""
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[1]); import importlib; "
        "p = importlib.import_module('peers.' + sys.argv[2]); "
        "getattr(p, 'prepare', lambda c: None)(json.loads(sys.argv[3]))"
    )
    env = {**os.environ, **ENV_VARS}
    proc = subprocess.run(
        [python, "-c", code, str(HERE), peer, json.dumps(cfg)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return None


# -- the report ----------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], total_bytes: int, expected: tuple[int, str]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "no runs"}
    med = statistics.median
    exact = all(r["samples"] == expected[0] == r["unique"] and r["keys_sha256"] == expected[1] for r in good)
    return {
        "samples_s": med(r["samples"] / r["seconds"] for r in good),
        "MB_s": med(total_bytes / r["seconds"] / 1e6 for r in good),
        "ttfb_s": med(r["ttfb"] for r in good),
        "cpu_s_per_GB": med(r["cpu"] / (total_bytes / 1e9) for r in good),
        "peak_rss_mb": med(r["peak_rss_mb"] for r in good),
        "exact": exact,
        "runs": len(good),
        "failed": len(runs) - len(good),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| latency | mode | workers | loader | samples/s | MB/s | first batch s | CPU-s/GB "
        "| peak RSS MB | exactly once |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        s = r["summary"]
        where = f"| {r['latency_ms']:g} ms | {r['mode']} | {r['num_workers']} | {r['loader']} |"
        if "error" in s:
            lines.append(f"{where} failed: {s['error'][:80]} | | | | | |")
            continue
        lines.append(
            f"{where} {s['samples_s']:,.0f} | {s['MB_s']:,.0f} | {s['ttfb_s']:.2f} | {s['cpu_s_per_GB']:.2f} "
            f"| {s['peak_rss_mb']:,.0f} | {'yes' if s['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def drop_page_cache(files: list[Path]) -> None:
    """Drop the machine's page cache, then read the shards back in for the server.

    The shared libraries of a virtual environment installed minutes ago sit in the page cache
    as pip wrote them, and on recent kernels a process mapping them then counts more of their
    pages as resident: importing torch and boto3 showed 137 MB of file-backed RSS in a fresh
    environment against 77 MB in one installed earlier, and 77 MB in both after the cache was
    dropped. Without this, whichever loaders' environments are newest look 60 MB heavier per
    process. Pages a process maps are not dropped, so this process must not have imported those
    libraries (it writes the dataset in a child process for that reason).
    """
    heavy = sorted(m for m in ("torch", "numpy", "PIL", "boto3", "streaming_wds") if m in sys.modules)
    if heavy:
        raise RuntimeError(f"cannot drop the page cache of libraries this process maps: {heavy}")
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    print("# page cache dropped; shards read back in", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=HERE / ".data", help="where the dataset is written")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--latency-ms", default="0,20", help="comma-separated settings")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="cap over all connections")
    p.add_argument("--connection-mbps", type=float, default=None, help="cap per response")
    p.add_argument("--modes", default="raw,decode")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--loaders", default=DEFAULT_LOADERS)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="root only: drop the page cache of the whole machine once the environments are built "
        "(see the benchmark README: RSS of freshly installed libraries)",
    )
    args = p.parse_args()

    spec = DataSpec(shards=args.shards, per_shard=args.per_shard)
    t0 = time.perf_counter()
    if not is_written(args.data, spec):
        # In a child process: this one must not map torch, NumPy or Pillow (see drop_page_cache).
        subprocess.run(
            [
                sys.executable,
                str(HERE / "bench_data.py"),
                str(args.data),
                "--shards",
                str(args.shards),
                "--per-shard",
                str(args.per_shard),
            ],
            check=True,
        )
    files = shard_files(args.data)
    total = sum(f.stat().st_size for f in files)
    keys = spec.keys()
    import hashlib

    expected = (len(keys), hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest())
    print(
        f"# dataset: {len(files)} shards, {spec.samples} samples, {total / 1e9:.2f} GB "
        f"({time.perf_counter() - t0:.0f} s to ensure)",
        flush=True,
    )
    print(f"# machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    loaders: list[tuple[str, str]] = []
    for name in args.loaders.split(","):
        python = python_for(name)
        if python is not None:
            loaders.append((name, python))
    if args.drop_caches:
        drop_page_cache(files)
    shard_keys = [str(f.relative_to(args.data / BUCKET)) for f in files]
    base_cfg = {
        "bucket": BUCKET,
        "prefix": f"{PREFIX}/{SPLIT}",
        "shards": shard_keys,
        "batch_size": args.batch_size,
        "seed": 0,
        "shuffle": not args.no_shuffle,
        "workdir": str(args.data / "work"),
        "root": str(args.data),
    }
    (args.data / "work").mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    ceilings: dict[str, Any] = {}
    for latency in (float(x) for x in args.latency_ms.split(",")):
        with server(args.data, latency, args.bandwidth_mbps, args.connection_mbps) as endpoint:
            if not args.no_ceilings:
                out = subprocess.run(
                    [sys.executable, str(HERE / "ceilings.py"), endpoint, str(args.data)],
                    env={**os.environ, **ENV_VARS},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                ceilings[f"{latency:g} ms"] = json.loads(out.stdout)
                print(f"# ceilings at {latency:g} ms: {out.stdout.strip()}", flush=True)
            ready = []
            for name, python in loaders:
                err = prepare(
                    python, name, {**base_cfg, "endpoint": endpoint, "mode": "raw", "num_workers": 0}
                )
                if err:
                    print(f"# {name}: prepare failed, skipped: {err}", flush=True)
                else:
                    ready.append((name, python))
            for mode in args.modes.split(","):
                for workers in (int(x) for x in args.workers.split(",")):
                    cfg = {**base_cfg, "endpoint": endpoint, "mode": mode, "num_workers": workers}
                    here = [(n, py) for n, py in ready if mode in (peer_modes(n) or [mode])]
                    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in here}
                    for _ in range(args.runs):
                        for name, python in here:
                            r = run_one(python, name, cfg, args.timeout)
                            runs[name].append(r)
                            print(f"# {latency:g} ms {mode} w={workers} {name}: {r}", flush=True)
                    for name, _ in here:
                        rows.append(
                            {
                                "latency_ms": latency,
                                "mode": mode,
                                "num_workers": workers,
                                "loader": name,
                                "summary": summarize(runs[name], total, expected),
                                "runs": runs[name],
                            }
                        )
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"ceilings": ceilings, "rows": rows}, indent=1))
    if any(not r["summary"].get("exact", True) for r in rows):
        sys.exit("some loader did not deliver every sample exactly once")


if __name__ == "__main__":
    main()
