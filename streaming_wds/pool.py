"""Ordered, bounded parallel application of a function: the engine of ``optimize`` and ``map``."""

from __future__ import annotations

import collections
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

# Set in each worker process by the pool initializer (never in the calling process).
_TASK: Callable[[Any], Any] | None = None


def _init(task: Callable[[Any], Any]) -> None:
    global _TASK
    _TASK = task


def _run(index: int, item: Any, task: Callable[[Any], Any] | None = None) -> tuple[int, bool, Any]:
    task = task or _TASK
    assert task is not None
    try:
        return index, True, task(item)
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return index, False, f"{detail}\n{traceback.format_exc()}"


def ordered_map(
    task: Callable[[Any], Any],
    items: Sequence[Any],
    indices: Iterable[int],
    *,
    num_workers: int | None,
    mp_context: str | None = None,
    window: int | None = None,
) -> Iterator[tuple[int, bool, Any]]:
    """Yield ``(index, ok, result or error text)`` for each index, in order.

    With ``num_workers`` > 0 (``None``: the CPU count) the task runs in that many processes (the
    task must pickle for spawn and forkserver), with at most ``window`` results in flight, so
    memory stays bounded; with 0 it runs in this process.
    All processes are stopped and joined when the generator ends or is closed.
    """
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if num_workers <= 0:
        for i in indices:
            yield _run(i, items[i], task)
        return
    ctx = multiprocessing.get_context(mp_context)
    pool = ctx.Pool(num_workers, initializer=_init, initargs=(task,))
    try:
        pending: collections.deque[Any] = collections.deque()
        todo = iter(indices)
        limit = window or 4 * num_workers
        for i in todo:
            pending.append(pool.apply_async(_run, (i, items[i])))
            if len(pending) >= limit:
                break
        while pending:
            result = pending.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(_run, (nxt, items[nxt])))
            yield result
        pool.close()
    finally:
        pool.terminate()
        pool.join()
