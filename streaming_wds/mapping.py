"""``map``: apply ``fn(input, output_dir)`` in parallel; files it writes land in the output."""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import S3Options
from .jobs import (
    describe_callable,
    digest_inputs,
    job_id,
    read_manifest,
    setup_job,
    skip_or_raise,
    write_manifest,
)
from .pool import ordered_map
from .progress import progress_bar
from .storage import LocalStorage, Storage

log = logging.getLogger(__name__)

KIND = "map"
_SAVE_EVERY_S = 2.0


@dataclass
class MapResult:
    """What one node's ``map`` call did (in this run).

    Attributes:
        done: Inputs completed (including those done by an earlier, interrupted run).
        skipped_done: Inputs skipped because an earlier run had completed them.
        files: Files uploaded (for a remote output) in this run.
        bytes: Bytes uploaded in this run.
        failed: Inputs skipped under ``on_error="skip"``.
    """

    done: int = 0
    skipped_done: int = 0
    files: int = 0
    bytes: int = 0
    failed: int = 0


class _Apply:
    """The task run in worker processes."""

    def __init__(self, fn: Callable[[Any, str], Any], storage: Storage) -> None:
        self.fn = fn
        self.storage = storage

    def __call__(self, item: Any) -> tuple[int, int]:
        if isinstance(self.storage, LocalStorage):
            self.fn(item, str(self.storage.root))
            return 0, 0
        tmp = tempfile.mkdtemp(prefix="swds-map-")
        try:
            self.fn(item, tmp)
            files = nbytes = 0
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    data = path.read_bytes()
                    self.storage.put(path.relative_to(tmp).as_posix(), data)
                    files += 1
                    nbytes += len(data)
            return files, nbytes
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _to_ranges(indices: builtins.set[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for i in sorted(indices):
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return ranges


def map(
    fn: Callable[[Any, str], Any],
    inputs: Iterable[Any],
    output_dir: str | os.PathLike[str] | Storage,
    *,
    num_workers: int | None = None,
    s3: S3Options | None = None,
    num_nodes: int | None = None,
    node_rank: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
    mp_context: str | None = None,
) -> MapResult:
    """Call ``fn(input, local_dir)`` for every input in parallel worker processes.

    For a local ``output_dir``, ``local_dir`` is that directory. For an ``s3://`` output, each
    call gets a fresh temporary directory; the files ``fn`` writes there (sub-directories
    included) are uploaded under ``output_dir`` with the same relative paths, then deleted.

    Completed inputs are recorded in a manifest beside the output (every few seconds and at the
    end); re-running an interrupted call with the same arguments skips them. ``fn`` must be safe
    to repeat for an input whose completion was not yet recorded.

    Args:
        fn: Called as ``fn(input, local_dir)``; must pickle for spawn/forkserver workers.
        inputs: The inputs; a sequence, or an iterable that is read into a list.
        output_dir: A local directory, ``file://`` URL, ``s3://bucket/prefix`` or ``Storage``.
        num_workers: Worker processes (default: CPU count; 0 runs in this process).
        s3: How to reach S3.
        num_nodes: Machines running the same job (default: from the launcher's environment).
        node_rank: This machine's index (default: from the launcher's environment).
        on_error: ``"raise"`` (:class:`JobError` naming the input) or ``"skip"`` (logged, counted).
        progress: Show a progress bar.
        mp_context: ``multiprocessing`` start method.

    Raises:
        JobError: If ``fn`` fails on an input and ``on_error="raise"``.
        ConfigError: For invalid arguments, or a manifest of a different job in the output.
    """
    job_setup = setup_job(inputs, output_dir, s3, num_nodes, node_rank, on_error)
    items, node, share, storage = job_setup.items, job_setup.node, job_setup.share, job_setup.storage
    if isinstance(storage, LocalStorage):
        storage.root.mkdir(parents=True, exist_ok=True)
    job = job_id(KIND, digest_inputs(items), node.count, describe_callable(fn))
    state = read_manifest(storage, KIND, node.rank, job) or {"done": []}
    done = {i for start, stop in state["done"] for i in range(start, stop)}
    todo = [i for i in share if i not in done]
    result = MapResult(skipped_done=len(share) - len(todo))

    def save() -> None:
        write_manifest(storage, KIND, node.rank, job, {"done": _to_ranges(done)})

    bar = progress_bar(total=len(share), initial=result.skipped_done, desc="map", enabled=progress)
    last_save = time.monotonic()
    try:
        for index, ok, out in ordered_map(
            _Apply(fn, storage), items, todo, num_workers=num_workers, mp_context=mp_context
        ):
            bar.update(1)
            if not ok:
                skip_or_raise(KIND, on_error, index, items[index], out)
                result.failed += 1
                continue
            done.add(index)
            result.files += out[0]
            result.bytes += out[1]
            if time.monotonic() - last_save > _SAVE_EVERY_S:
                save()
                last_save = time.monotonic()
    finally:
        bar.close()
        save()
    result.done = len(done)
    return result
