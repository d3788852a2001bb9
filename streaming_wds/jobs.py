"""Progress records of ``optimize`` and ``map`` jobs, kept beside their output.

Each node of a job keeps one small JSON manifest under the output location (names start with
``.swds-`` and never end with ``.tar``, so readers ignore them). Re-running a job with the same
arguments reads its manifest and skips the work recorded there.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .config import S3Options
from .errors import ConfigError, JobError, ObjectNotFoundError
from .nodes import Node, resolve_node
from .storage import Storage, open_storage

log = logging.getLogger(__name__)

VERSION = 1


def job_id(*parts: Any) -> str:
    """A short id of a job's arguments: a rerun must match it to resume."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _digest(obj: Any) -> str:
    try:
        data = pickle.dumps(obj, protocol=4)
    except Exception:  # not picklable (e.g. a lambda run in-process): fall back to its text
        data = repr(obj).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def describe_callable(fn: Callable[..., Any]) -> str:
    """A stable identity of a function: its qualified name, plus bound arguments or state."""
    if isinstance(fn, functools.partial):
        return f"partial({describe_callable(fn.func)}, {_digest((fn.args, sorted(fn.keywords.items())))})"
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    if hasattr(fn, "__code__") or isinstance(fn, type):  # a plain function or a class
        return name
    return f"{name}#{_digest(fn)}"  # a callable instance: its state matters


def digest_inputs(items: Sequence[Any]) -> str:
    """A digest of a job's inputs, in order (pickled; text for what does not pickle)."""
    h = hashlib.sha256()
    for item in items:
        h.update(_digest(item).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class JobSetup:
    """What every ``optimize``/``map`` call resolves first."""

    items: Sequence[Any]
    node: Node
    share: range
    storage: Storage


def setup_job(
    inputs: Iterable[Any],
    output: str | os.PathLike[str] | Storage,
    s3: S3Options | None,
    num_nodes: int | None,
    node_rank: int | None,
    on_error: str,
) -> JobSetup:
    """Check the shared arguments, read the inputs and find this node's share and the output.

    Raises:
        ConfigError: For an invalid ``on_error`` or node arguments.
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    items: Sequence[Any] = inputs if isinstance(inputs, Sequence) else list(inputs)
    node = resolve_node(num_nodes, node_rank)
    return JobSetup(items, node, node.share(len(items)), open_storage(output, None, s3))


def skip_or_raise(kind: str, on_error: str, index: int, item: Any, error: str) -> None:
    """Handle ``fn`` failing on input ``index``: raise :class:`JobError`, or log it for a skip.

    Raises:
        JobError: Under ``on_error="raise"``.
    """
    if on_error == "raise":
        raise JobError(index, item, error)
    log.warning("%s: on_error='skip': skipped input #%d: %s", kind, index, error.splitlines()[0])


def manifest_name(kind: str, node: int) -> str:
    return f".swds-{kind}-node{node:04d}.json"


def read_manifest(storage: Storage, kind: str, node: int, job: str) -> dict[str, Any] | None:
    """This node's manifest of job ``job``, or ``None`` where there is none.

    Raises:
        ConfigError: If a manifest of another job is there (other arguments, same output).
    """
    name = manifest_name(kind, node)
    try:
        raw = storage.get(name)
    except ObjectNotFoundError:
        return None
    state: dict[str, Any] = msgspec.json.decode(raw)
    if state.get("version") != VERSION or state.get("job") != job:
        raise ConfigError(
            f"{storage.url(name)} records a different {kind} job (other inputs or arguments) in "
            "this output; write to a fresh location, or delete the manifest to start over"
        )
    return state


def write_manifest(storage: Storage, kind: str, node: int, job: str, state: dict[str, Any]) -> None:
    storage.put(manifest_name(kind, node), msgspec.json.encode({**state, "version": VERSION, "job": job}))
