"""A DataLoader worker killed mid-epoch: resuming from the last checkpoint loses and repeats nothing.

A training loop checkpoints ``loader.state_dict()`` after every step; a worker process dies
(SIGKILL, as the OOM killer would); the loader raises; a fresh process (here: a fresh loader over
a fresh dataset) loads the last checkpoint, through JSON as from a file, and finishes the epoch.
The keys delivered up to the checkpoint plus the keys after the resume must be exactly those of
an uninterrupted run, in the same order. Batches fetched after the checkpoint but before the
crash are lost with the process that consumed them: they come again after the resume.

Samples carry a 2 KiB ``bin`` field, so batches cross from the workers through the shared-memory
rings (:mod:`streaming_wds.transfer`), the path a real image dataset takes.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset, StreamOptions
from tests.helpers import Server, moto_s3_server, ring_files, settle
from tests.resume_harness import epoch_keys

NUM, PER_SHARD, BATCH, WORKERS = 120, 10, 4, 2  # 12 shards; 15 batches per worker and epoch
OPTS = StreamOptions(interleave=3, shuffle_block=4, max_workers=2)
BUCKET = "swds-crash"
DEATH = r"DataLoader worker \(pid(\(s\))? [\d, ]+\) (is killed by signal|exited unexpectedly)"

MakeLoader = Callable[[], StreamingDataLoader]


def _sample(i: int) -> dict[str, Any]:
    return {"__key__": f"s{i:06d}", "cls": i % 10, "bin": i.to_bytes(4, "little") * 512}


def _write(output: str | Path, **kw: Any) -> None:
    with ShardWriter(output, maxcount=PER_SHARD, **kw) as w:
        for i in range(NUM):
            w.write(_sample(i))


def _children() -> set[int]:
    """Live (not yet reaped) child processes of this process, from ``/proc``."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry))
    return found


def _wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    assert settle(cond, timeout), f"timed out waiting for {what}"


def _kill(it: Iterator[Any], pid: int) -> None:
    """SIGKILL worker ``pid`` and expect the loader to report its death."""
    with pytest.raises(RuntimeError, match=DEATH):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # torch's SIGCHLD handler raises in here
            time.sleep(0.01)
        for _ in it:  # else waiting for the dead worker's next batch does
            pass


def _crash_run(make: MakeLoader, checkpoint_at: int, lost: int, victim: int) -> tuple[list[str], Any]:
    """Take ``checkpoint_at`` batches, checkpointing after each, then ``lost`` more, then SIGKILL
    worker ``victim`` (by start order). Returns the keys up to the last checkpoint and that
    checkpoint (through JSON)."""
    before = _children()
    loader = make()
    it = iter(loader)
    workers = sorted(_children() - before)
    assert len(workers) == WORKERS, f"expected {WORKERS} worker processes, found {workers}"

    kept: list[str] = []
    checkpoint: Any = json.loads(json.dumps(loader.state_dict()))  # before the first step
    for _ in range(checkpoint_at):
        kept.extend(next(it)["__key__"])
        state = loader.state_dict()
        checkpoint = json.loads(json.dumps(state))
        assert checkpoint == state, "the checkpoint survives a JSON round trip unchanged"
    for _ in range(lost):  # fetched after the last checkpoint: gone with the crashed run
        next(it)

    _kill(it, workers[victim])
    del it, loader
    _wait_until(lambda: not (_children() & set(workers)), "the crashed loader's workers to be reaped")
    return kept, checkpoint


def _checked_keys(loader: StreamingDataLoader) -> list[str]:
    """One epoch's keys, each sample's payload checked against its key."""
    keys: list[str] = []
    for batch in loader:
        for key, blob in zip(batch["__key__"], batch["bin"], strict=True):
            assert blob == _sample(int(key[1:]))["bin"], f"{key}: wrong payload"
            keys.append(key)
    return keys


def _check_crash_resume(make: MakeLoader, ref: list[list[str]], checkpoint_at: int, lost: int) -> None:
    rings = ring_files()
    # The victim is the worker that owes the next batch: it cannot have finished yet. A worker
    # that has delivered its last batch may already have exited normally, and killing it then
    # is no crash at all (near the end of the epoch that raced).
    victim = (checkpoint_at + lost) % WORKERS
    kept, checkpoint = _crash_run(make, checkpoint_at, lost, victim=victim)
    resumed = make()
    resumed.load_state_dict(checkpoint)
    after = _checked_keys(resumed)
    assert len(kept) == checkpoint_at * BATCH
    assert kept + after == ref[0], (
        f"checkpoint after batch {checkpoint_at}, {lost} batches lost: the resumed epoch differs "
        f"from the uninterrupted run ({len(kept)} + {len(after)} keys, {len(ref[0])} expected)"
    )
    assert epoch_keys(resumed) == ref[1], "the epoch after the resumed one differs"
    del resumed
    gc.collect()
    assert ring_files() == rings, "shared-memory rings left in /dev/shm"


def _factory(remote: str | Path, **kw: Any) -> MakeLoader:
    def make() -> StreamingDataLoader:
        ds = StreamingWebDataset(remote, schema={"cls": "int"}, shuffle=True, seed=5, options=OPTS, **kw)
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=WORKERS, multiprocessing_context="fork")

    return make


# -- local disk ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> tuple[MakeLoader, list[list[str]]]:
    root = tmp_path_factory.mktemp("crash")
    _write(root)
    make = _factory(root)
    loader = make()
    ref = [epoch_keys(loader) for _ in range(2)]
    assert sorted(ref[0]) == sorted(ref[1]) == [f"s{i:06d}" for i in range(NUM)]
    assert ref[0] != ref[1]
    return make, ref


@pytest.mark.parametrize(
    ("checkpoint_at", "lost"),
    [
        (5, 0),  # crash right after a checkpoint
        (5, 3),  # three batches consumed after the last checkpoint are redone
        (0, 2),  # crash before the first checkpoint of a step: the whole epoch again
        (28, 1),  # near the end of the epoch (30 batches)
    ],
)
def test_resume_after_worker_killed(
    local: tuple[MakeLoader, list[list[str]]], checkpoint_at: int, lost: int
) -> None:
    make, ref = local
    _check_crash_resume(make, ref, checkpoint_at, lost)


def test_resume_after_repeated_crashes(local: tuple[MakeLoader, list[list[str]]]) -> None:
    """Crash, resume, crash again, resume again: the pieces still add up to one epoch."""
    make, ref = local
    kept1, state1 = _crash_run(make, 4, 2, victim=0)

    loader = make()
    loader.load_state_dict(state1)
    before = set(_children())
    it = iter(loader)
    workers = sorted(_children() - before)
    kept2: list[str] = []
    for _ in range(6):
        kept2.extend(next(it)["__key__"])
    state2 = json.loads(json.dumps(loader.state_dict()))
    next(it)  # lost
    _kill(it, workers[1])
    del it, loader
    _wait_until(lambda: not (_children() & set(workers)), "the crashed loader's workers to be reaped")

    resumed = make()
    resumed.load_state_dict(state2)
    assert kept1 + kept2 + epoch_keys(resumed) == ref[0]


def test_worker_killed_before_its_first_batch_is_read_leaves_no_ring(tmp_path: Path) -> None:
    """A worker writes its batches into its ring and arena before the main process reads any;
    killed then, nobody but the main process can remove their files from /dev/shm."""
    _write(tmp_path)
    make = _factory(tmp_path)
    stale = set(ring_files())
    before = _children()
    loader = make()
    it = iter(loader)  # the workers start and prefetch batches at once
    workers = sorted(_children() - before)
    try:
        # each worker: a ring for the bytes and an arena for the labels' tensors
        _wait_until(lambda: len(set(ring_files()) - stale) == 2 * WORKERS, "both workers' rings and arenas")
        _kill(it, workers[1])
        del it, loader
        _wait_until(lambda: not (_children() & set(workers)), "the crashed loader's workers to be reaped")
        left = set(ring_files()) - stale
        assert not left, f"a killed worker's shared-memory ring stays in /dev/shm: {sorted(left)}"
    finally:
        for name in set(ring_files()) - stale:  # do not leave the machine's /dev/shm fuller
            os.unlink(f"/dev/shm/{name}")


# -- S3 (moto's server on 127.0.0.1; worker processes cannot see an in-process mock) -----------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MakeLoader, list[list[str]]]]:
    with moto_s3_server(BUCKET) as srv:
        _write(f"s3://{BUCKET}/ds", s3=srv.s3)
        gc.collect()  # close the writer's connections before a test looks at threads
        make = _s3_factory(srv)
        loader = make()
        ref = [epoch_keys(loader) for _ in range(2)]
        del loader
        gc.collect()
        yield make, ref


def _s3_factory(srv: Server) -> MakeLoader:
    opts = StreamOptions(
        interleave=3, shuffle_block=4, max_workers=2, chunk_size=4096, buffer_bytes=64 * 1024
    )

    def make() -> StreamingDataLoader:
        ds = StreamingWebDataset(
            f"s3://{BUCKET}/ds", schema={"cls": "int"}, shuffle=True, seed=5, options=opts, s3=srv.s3
        )
        return StreamingDataLoader(ds, batch_size=BATCH, num_workers=WORKERS, multiprocessing_context="fork")

    return make


@pytest.mark.s3server
def test_resume_after_worker_killed_s3(s3: tuple[MakeLoader, list[list[str]]]) -> None:
    make, ref = s3
    assert sorted(ref[0]) == [f"s{i:06d}" for i in range(NUM)]
    _check_crash_resume(make, ref, checkpoint_at=7, lost=2)
