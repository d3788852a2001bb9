"""``optimize``: turn any inputs into WebDataset shards with an index, in parallel, resumably."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from .config import S3Options
from .encoding import Encoder, encode_field, encode_sample
from .errors import ShardExistsError
from .index import DatasetIndex, ShardEntry, describe_shard, read_index, write_index
from .jobs import (
    describe_callable,
    digest_inputs,
    job_id,
    read_manifest,
    setup_job,
    skip_or_raise,
    write_manifest,
)
from .nodes import Node
from .pool import ordered_map
from .progress import progress_bar
from .storage import Storage
from .writer import ShardWriter

log = logging.getLogger(__name__)

KIND = "optimize"


@dataclass
class OptimizeResult:
    """What one node's ``optimize`` call did.

    Attributes:
        shards: This node's shards, in order.
        samples: Samples in them.
        failed: Inputs skipped under ``on_error="skip"`` (in this run).
        index_written: Whether this node wrote the dataset's ``index.json`` (the last node to
            finish does).
    """

    shards: list[ShardEntry] = field(default_factory=list)
    samples: int = 0
    failed: int = 0
    index_written: bool = False


class _Encode:
    """The task run in worker processes: call ``fn`` and encode what it returns."""

    def __init__(self, fn: Callable[[Any], Any], encoder: Encoder) -> None:
        self.fn = fn
        self.encoder = encoder

    def __call__(self, item: Any) -> list[bytes]:
        out = self.fn(item)
        samples = [out] if isinstance(out, Mapping) else list(out or ())
        return [encode_sample(s, self.encoder)[1] for s in samples]


def optimize(
    fn: Callable[[Any], Mapping[str, Any] | Iterable[Mapping[str, Any]] | None],
    inputs: Iterable[Any],
    output: str | os.PathLike[str] | Storage,
    *,
    num_workers: int | None = None,
    maxcount: int = 10_000,
    maxsize: int = 1 << 30,
    s3: S3Options | None = None,
    num_nodes: int | None = None,
    node_rank: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
    overwrite: bool = False,
    encoder: Encoder = encode_field,
    mp_context: str | None = None,
) -> OptimizeResult:
    """Apply ``fn`` to every input in parallel and write what it returns as shards.

    ``fn(input)`` returns a sample (a mapping with ``__key__``), an iterable of samples, or
    ``None``. Samples are encoded in the worker processes and written in input order, so a
    deterministic ``fn`` gives the same shard names and bytes whatever ``num_workers`` is. Shards
    are named ``shard-000000.tar``… (``shard-n0003-000000.tar``… on node 3 of a multi-node job),
    and ``index.json`` is written when the last node finishes.

    Re-running an interrupted call with the same arguments resumes: it keeps the shards that
    were completely written, recomputes from the first missing one, and gives the same result as
    an uninterrupted run.

    Args:
        fn: Called once per input; must pickle for spawn/forkserver workers.
        inputs: The inputs; a sequence, or an iterable that is read into a list.
        output: A local directory, ``file://`` URL, ``s3://bucket/prefix`` or ``Storage``.
        num_workers: Worker processes (default: CPU count; 0 runs in this process).
        maxcount: Samples per shard at most.
        maxsize: Bytes per shard at most.
        s3: How to reach S3, for ``s3://`` outputs.
        num_nodes: Machines running the same job (default: from the launcher's environment).
        node_rank: This machine's index (default: from the launcher's environment).
        on_error: ``"raise"``: an exception in ``fn`` raises :class:`JobError` naming the input;
            ``"skip"``: the input is skipped, logged and counted.
        progress: Show a progress bar of inputs, samples and bytes.
        overwrite: Allow replacing shards of the same names from another job.
        encoder: Field encoder (default :func:`encode_field`).
        mp_context: ``multiprocessing`` start method (default: the platform's).

    Raises:
        JobError: If ``fn`` fails on an input and ``on_error="raise"``.
        ShardExistsError: If the output already has shards of these names from elsewhere.
        ConfigError: For invalid arguments, or a manifest of a different job in the output.
    """
    job_setup = setup_job(inputs, output, s3, num_nodes, node_rank, on_error)
    items, node, share, storage = job_setup.items, job_setup.node, job_setup.share, job_setup.storage
    pattern = "shard-%06d.tar" if node.count == 1 else f"shard-n{node.rank:04d}-%06d.tar"
    job = job_id(  # the same on every node
        KIND,
        digest_inputs(items),
        node.count,
        maxcount,
        maxsize,
        on_error,
        describe_callable(fn),
        describe_callable(encoder),
    )

    state = read_manifest(storage, KIND, node.rank, job)
    result = OptimizeResult()
    if state is not None and state.get("done"):
        result.shards = msgspec.convert(state["entries"], list[ShardEntry])
    else:
        existing = {info.name: info.size for info in storage.list(".tar")}
        if state is None:
            ours = re.compile(re.escape(pattern).replace(re.escape("%06d"), r"\d{6,}") + r"\Z")
            clash = sorted(name for name in existing if ours.match(name))
            if clash and not overwrite:
                raise ShardExistsError(storage.url(clash[0]))
            state = {"shards": [], "starts": [[share.start, 0]], "done": False}
        _resume_point(state, existing, pattern)
        result = _run(
            fn,
            items,
            share,
            storage,
            node,
            job,
            state,
            pattern,
            maxcount,
            maxsize,
            num_workers,
            on_error,
            progress,
            encoder,
            mp_context,
        )
    result.samples = sum(e.samples for e in result.shards)
    result.index_written = _write_index_if_last(storage, node, job)
    return result


def _resume_point(state: dict[str, Any], existing: dict[str, int], pattern: str) -> None:
    """Keep the recorded shards that exist with their recorded size; restart after them."""
    keep = 0
    for k, shard in enumerate(state["shards"]):
        if existing.get(pattern % k) != shard["size"]:
            break
        keep += 1
    state["shards"] = state["shards"][:keep]
    state["starts"] = state["starts"][: keep + 1]


def _run(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    share: range,
    storage: Storage,
    node: Node,
    job: str,
    state: dict[str, Any],
    pattern: str,
    maxcount: int,
    maxsize: int,
    num_workers: int | None,
    on_error: str,
    progress: bool,
    encoder: Encoder,
    mp_context: str | None,
) -> OptimizeResult:
    kept = len(state["shards"])
    first, skip = state["starts"][-1]
    writer = ShardWriter(
        storage,
        maxcount=maxcount,
        maxsize=maxsize,
        pattern=pattern,
        start_shard=kept,
        overwrite=True,
        index=False,
    )
    result = OptimizeResult()
    bar = progress_bar(total=len(share), initial=first - share.start, desc="optimize", enabled=progress)
    total_bytes = 0
    try:
        for index, ok, out in ordered_map(
            _Encode(fn, encoder),
            items,
            range(first, share.stop),
            num_workers=num_workers,
            mp_context=mp_context,
        ):
            bar.update(1)
            if not ok:
                skip_or_raise(KIND, on_error, index, items[index], out)
                result.failed += 1
                continue
            for offset, data in enumerate(out):
                if index == first and offset < skip:
                    continue  # written by the interrupted run, in a shard that was kept
                closed = len(writer.written)
                writer.write_encoded(data)
                if len(writer.written) > closed:  # the previous shard was closed; this sample starts the next
                    samples, size = writer.written_sizes[-1]
                    state["shards"].append({"samples": samples, "size": size})
                    state["starts"].append([index, offset])
                    write_manifest(storage, KIND, node.rank, job, state)
                total_bytes += len(data)
            bar.set_postfix(samples=writer.total, MB=f"{total_bytes / 1e6:.0f}", refresh=False)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    earlier = [
        describe_shard(pattern % k, storage.get(pattern % k), storage.url(pattern % k)) for k in range(kept)
    ]
    result.shards = earlier + writer.entries
    state.update(done=True, entries=msgspec.to_builtins(result.shards))
    write_manifest(storage, KIND, node.rank, job, state)
    return result


def _write_index_if_last(storage: Storage, node: Node, job: str) -> bool:
    """Merge every node's shards into ``index.json`` once all nodes are done."""
    entries: list[ShardEntry] = []
    for rank in range(node.count):
        state = read_manifest(storage, KIND, rank, job)
        if state is None or not state.get("done"):
            return False
        entries += msgspec.convert(state["entries"], list[ShardEntry])
    write_index(storage, (read_index(storage) or DatasetIndex()).merged(entries))
    return True
