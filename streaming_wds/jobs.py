"""Progress records of ``optimize`` and ``map`` jobs, kept beside their output.

Each node of a job keeps one small JSON manifest under the output location (names start with
``.swds-`` and never end with ``.tar``, so readers ignore them). Re-running a job with the same
arguments reads its manifest and skips the work recorded there.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec

from .errors import ConfigError, ObjectNotFoundError
from .storage import Storage

log = logging.getLogger(__name__)

VERSION = 1


def job_id(*parts: Any) -> str:
    """A short id of a job's arguments: a rerun must match it to resume."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


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
