"""Resident memory of a process and its descendants, from ``/proc`` (Linux), for the benchmarks.

Shared pages count once per process that maps them, as ``ps`` counts them.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants still running (children of every thread)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def resident(pid: int) -> int:
    """Resident bytes of one process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def tree_resident(pid: int) -> int:
    """Resident bytes summed over ``pid`` and its descendants."""
    return sum(resident(p) for p in tree(pid))
