"""``default_collate``, with the tensors it stacks placed in the worker's shared-memory arena.

The result equals ``torch.utils.data.default_collate``'s (same structure, types, dtypes, shapes
and values): torch's own ``collate`` runs with its default handlers, except that a list of
same-shaped CPU tensors, or of same-shaped numeric arrays, is stacked straight into an arena
region (see :mod:`streaming_wds.arena`), or into ordinary memory when it is small enough to
travel by value. Whatever does not qualify or does not fit goes to torch's handler, which raises
the same errors as always.

:func:`stacked_collate` is the same without an arena (the loader's collate in the main process,
``num_workers=0``): numeric arrays are stacked by numpy into ordinary memory. torch's handler
wraps each array with ``torch.as_tensor`` first, which warns about read-only arrays, and the
arrays of a decoded image are read-only (``numpy.asarray`` of a PIL image views its bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data._utils.collate import (
    collate,
    collate_numpy_array_fn,
    collate_tensor_fn,
    default_collate_fn_map,
)

from .arena import INLINE_BYTES, WorkerArena, plain_tensor
from .staging import Stager

# numpy dtypes torch.as_tensor maps one to one (native byte order only)
_TORCH_DTYPES = {
    np.dtype(n): t
    for n, t in (
        ("bool", torch.bool),
        ("uint8", torch.uint8),
        ("int8", torch.int8),
        ("int16", torch.int16),
        ("int32", torch.int32),
        ("int64", torch.int64),
        ("float16", torch.float16),
        ("float32", torch.float32),
        ("float64", torch.float64),
        ("complex64", torch.complex64),
        ("complex128", torch.complex128),
    )
}


class _ArenaHandlers:
    """Handlers for torch's ``collate``; with ``arena`` None, arrays stack into ordinary memory
    and tensors go to torch's handler."""

    __slots__ = ("arena", "stager")

    def __init__(self, arena: WorkerArena | None, stager: Stager | None = None) -> None:
        self.arena = arena
        self.stager = stager

    def tensors(self, batch: list[Any], *, collate_fn_map: dict[Any, Any] | None = None) -> Any:
        elem = batch[0]
        if self.arena is not None and plain_tensor(elem) and not elem.is_nested:
            dtype, shape = elem.dtype, elem.shape
            if all(plain_tensor(t) and t.dtype == dtype and t.shape == shape for t in batch):
                if len(batch) * elem.nbytes <= INLINE_BYTES:
                    return torch.stack(batch, 0)
                out = self.arena.tensor(dtype, (len(batch), *shape))
                if out is not None:
                    return torch.stack(batch, 0, out=out)
        return collate_tensor_fn(batch, collate_fn_map=collate_fn_map)

    def arrays(self, batch: list[Any], *, collate_fn_map: dict[Any, Any] | None = None) -> Any:
        if self.stager is not None:  # images decoded into the slots of one arena tensor
            staged = self.stager.claim(batch)
            if staged is not None:
                return staged
        elem = batch[0]
        dtype = _TORCH_DTYPES.get(elem.dtype) if type(elem) is np.ndarray else None
        if dtype is not None:
            npdtype, shape = elem.dtype, elem.shape
            if all(type(a) is np.ndarray and a.dtype == npdtype and a.shape == shape for a in batch):
                if self.arena is None or len(batch) * elem.nbytes <= INLINE_BYTES:
                    return torch.from_numpy(np.stack(batch))
                out = self.arena.tensor(dtype, (len(batch), *shape))
                if out is None:  # the arena is full: torch's shared memory, as default_collate's
                    out = torch.empty((len(batch), *shape), dtype=dtype).share_memory_()  # type: ignore[no-untyped-call]
                np.stack(batch, out=out.numpy())  # (torch's handler warns about read-only arrays)
                return out
        return collate_numpy_array_fn(batch, collate_fn_map=collate_fn_map)


def arena_collate(samples: Any, arena: WorkerArena, stager: Stager | None = None) -> Any:
    """``default_collate(samples)``, stacking tensors and arrays into ``arena`` where they fit;
    a list of images that ``stager`` placed in one tensor's slots is that tensor."""
    handlers = _ArenaHandlers(arena, stager)
    fn_map = {**default_collate_fn_map, torch.Tensor: handlers.tensors, np.ndarray: handlers.arrays}
    return collate(samples, collate_fn_map=fn_map)


def stacked_collate(samples: Any) -> Any:
    """``default_collate(samples)``, numeric arrays stacked by numpy into ordinary memory (no
    warning for read-only arrays); for collation in the process that uses the batch."""
    fn_map = {**default_collate_fn_map, np.ndarray: _ArenaHandlers(None).arrays}
    return collate(samples, collate_fn_map=fn_map)
