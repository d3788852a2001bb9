"""The files in ``/dev/shm`` that a worker process shares with the main process.

Each worker makes its own (``swds-{kind}-{token}-{pid}``: a ring for bytes, an arena for
tensors); the main process unlinks one as soon as it has opened it, and once the workers started
with ``token`` are gone, removes any file of theirs it never opened.
"""

from __future__ import annotations

import contextlib
import os

SHM_DIR = "/dev/shm"


def available() -> bool:
    return os.path.isdir(SHM_DIR)


def path(kind: str, token: str) -> str:
    """This process's file of ``kind`` for the workers started with ``token``."""
    return os.path.join(SHM_DIR, f"swds-{kind}-{token}-{os.getpid()}")


def prefix(kind: str, token: str) -> str:
    """What the paths of ``kind`` for ``token`` start with, whichever process made them."""
    return os.path.join(SHM_DIR, f"swds-{kind}-{token}-")


def unlink(file: str) -> None:
    """Remove ``file`` if it is still there (the other process may have removed it already)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(file)


def remove_left(kind: str, token: str) -> None:
    """Remove the files of ``kind`` for ``token`` still in ``/dev/shm``."""
    if available():
        name = os.path.basename(prefix(kind, token))
        for left in os.listdir(SHM_DIR):
            if left.startswith(name):
                unlink(os.path.join(SHM_DIR, left))
