"""Decoded images placed where their batch will be: consecutive slots of an arena tensor.

In a DataLoader worker whose batches are collated into its arena (:mod:`streaming_wds.arena`),
the dataset decodes a batch's images one by one and ``default_collate`` then stacks them: the
images wait in the heap until the batch is complete (18 MB per batch of 32 500x375 images), and
stacking copies every pixel once more. Here the JPEG decoder (:func:`streaming_wds.jpeg.rgb`)
asks the worker's :class:`Stager` for the next slot of an arena tensor shaped like the whole
batch and decodes into it. When the collate function receives exactly the arrays decoded into
that tensor's slots, all of them and in order, the batch *is* that tensor: no copy.

Anything else is collated by copying, as without staging: a partial last batch, a sample
skipped after its image was decoded, an image a transform replaced, two image fields decoded by
one decoder. Every collation ends the tensors being filled (:meth:`Stager.reset`), so the next
batch starts at slot 0 whatever happened. After a few batches in which nothing could be claimed,
a decoder's images are no longer staged.

The slots are numpy views of the tensor (made read-only once decoded), so its arena region stays
allocated while any of them is alive, whether or not the batch was sent: the arena's own rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arena import WorkerArena

#: Batches in a row whose staged images could not be claimed before a decoder stops staging.
MISSES = 3


class _Block:
    __slots__ = ("arrays", "pending", "shape", "tensor")

    def __init__(self, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
        self.tensor = tensor
        self.shape = shape
        self.arrays: list[Any] = []  # what the decoder returned for each slot taken, in order
        self.pending: Any = None  # the slot handed out and not taken yet


class Stager:
    """Slots of arena tensors of ``batch_size`` images, per decoder (``owner``)."""

    def __init__(self, arena: WorkerArena, batch_size: int) -> None:
        self.arena = arena
        self.batch_size = batch_size
        self._blocks: dict[int, _Block] = {}  # id(owner) -> the tensor being filled
        self._misses: dict[int, int] = {}  # id(owner) -> batches in a row not claimed

    def slot(self, owner: object, shape: tuple[int, ...]) -> Any:
        """A writable, C-contiguous ``uint8`` array of ``shape`` for ``owner``'s next image, or
        ``None`` (no room in the arena, or this owner no longer stages). Not taken until
        :meth:`taken`; the next call hands out the same slot otherwise."""
        key = id(owner)
        if self._misses.get(key, 0) >= MISSES:
            return None
        block = self._blocks.get(key)
        if block is None or block.shape != shape or len(block.arrays) == self.batch_size:
            tensor = self.arena.tensor(torch.uint8, (self.batch_size, *shape))
            if tensor is None:
                return None
            block = self._blocks[key] = _Block(tensor, shape)
        block.pending = block.tensor[len(block.arrays)].numpy()
        return block.pending

    def taken(self, owner: object, pixels: Any) -> None:
        """``owner`` decoded an image to ``pixels``: into the slot it was handed, if it views it
        (else the image went elsewhere and the slot stays free)."""
        block = self._blocks.get(id(owner))
        if block is None or block.pending is None:
            return
        if np.may_share_memory(pixels, block.pending):
            block.arrays.append(pixels)
        block.pending = None

    def claim(self, arrays: list[Any]) -> torch.Tensor | None:
        """The tensor whose slots hold exactly ``arrays`` (all of them, in order), or ``None``."""
        if len(arrays) != self.batch_size:
            return None
        for key, block in self._blocks.items():
            if block.arrays and block.arrays[0] is arrays[0]:
                if len(block.arrays) == len(arrays) and all(
                    a is b for a, b in zip(block.arrays, arrays, strict=True)
                ):
                    del self._blocks[key]
                    self._misses[key] = 0
                    return block.tensor
                return None
        return None

    def reset(self) -> None:
        """End every tensor being filled: the next image of each owner starts a new one."""
        for key, block in self._blocks.items():
            if block.arrays:  # staged images the collate function did not claim
                self._misses[key] = self._misses.get(key, 0) + 1
        self._blocks.clear()


_active: Stager | None = None


def activate(arena: WorkerArena, batch_size: int) -> Stager:
    """This process's stager (a DataLoader worker's, for its arena), made on first use."""
    global _active
    if _active is None or _active.arena is not arena or _active.batch_size != batch_size:
        _active = Stager(arena, batch_size)
    return _active


def active() -> Stager | None:
    """The stager of this process, if a collate function in it activated one."""
    return _active
