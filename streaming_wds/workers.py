"""Set-up of the DataLoader worker processes that :class:`StreamingDataLoader` starts.

glibc's ``malloc`` serves a large request (a decoded image: PIL's 750 KB for a 500 x 375 RGB
image, and as much again for the array made from it) from a fresh ``mmap`` or from the top of its
heap, and gives the memory back to the kernel as soon as it is freed; the next image faults every
page in again. On the benchmark VM that is 1.4 million page faults (3 µs each) per epoch of
ImageNet-size JPEGs. :func:`keep_freed_memory` asks it, with ``mallopt``, to serve requests up
to 16 MiB from its heap and to keep up to 32 MiB of free memory at the heap's top: a worker then
reuses the same pages image after image. It is a setting of the worker process only, made where
the worker starts, and does nothing off glibc.

A forked worker starts with every page the main process has resident, and each counts in the
worker's RSS as well. Building the S3 client that lists the shards frees about 3 MiB of
``malloc``'s memory that glibc keeps; :func:`release_free_memory` (``malloc_trim``, 0.1 ms)
gives it back to the kernel just before the workers are forked, so they do not start with it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def _glibc_function(name: str, argtypes: list[Any], restype: Any) -> Any:
    """glibc's function ``name`` with its C signature set, or ``None`` off glibc (musl has a
    ``mallopt`` that does nothing) or where it lacks one."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, name):
        return None
    function = getattr(libc, name)
    function.argtypes, function.restype = argtypes, restype
    return function


def release_free_memory() -> bool:
    """Return the free memory glibc's ``malloc`` holds to the kernel; whether it was done."""
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    if trim is None:
        return False
    trim(0)  # returns whether memory was released, which is not a failure either way
    return True


def keep_freed_memory() -> bool:
    """Tune this process's glibc ``malloc`` as the module docstring says; whether it was done."""
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    if mallopt is None:
        return False
    done: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = done and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.debug("mallopt refused the worker's malloc settings")
    return done


class WorkerInit:
    """A ``worker_init_fn``: tunes ``malloc`` in the worker (``tune_malloc``), runs ``start`` (the
    loader's own set-up of the worker), then calls the user's function."""

    def __init__(
        self,
        user: Callable[[int], object] | None,
        *,
        tune_malloc: bool = True,
        start: Callable[[], object] | None = None,
    ) -> None:
        self.user = user
        self.tune_malloc = tune_malloc
        self.start = start

    def __call__(self, worker_id: int) -> None:
        if self.tune_malloc:
            keep_freed_memory()
        if self.start is not None:
            self.start()
        if self.user is not None:
            self.user(worker_id)
