"""The keys a shard has shown so far, to find a key that appears again in it.

Members of a sample must be adjacent, so a key met again later in the same shard is an error
(see :mod:`~streaming_wds.samples`), and finding it needs every key read so far. A ``dict`` of
``str`` to offset costs about 130 bytes per sample; an open shard of a million small samples
would hold 130 MB. Most shards list their keys in ascending order (``ShardWriter`` with counter
keys, webdataset's writers, sorted inputs): such keys are appended to one ``bytearray`` with
their ends and offsets in arrays, about ``len(key) + 16`` bytes per sample, and looked up by
bisection. A key that is not greater than every key before it goes to a ``dict``. The answers are
exactly a ``dict``'s: a key greater than the greatest so far is new, and any other is looked
up in both.
"""

from __future__ import annotations

from array import array


class ShardKeys:
    """First offsets of the keys of one shard, in the order they are read."""

    __slots__ = ("_ends", "_keys", "_last", "_offsets", "_others")

    def __init__(self) -> None:
        self._keys = bytearray()  # the ascending keys, UTF-8, one after another
        self._ends = array("Q")  # where each of them ends in _keys
        self._offsets = array("Q")  # and the offset of its sample
        self._last = b""  # the greatest key so far
        self._others: dict[str, int] = {}  # keys read out of ascending order

    def first(self, key: str, offset: int) -> int:
        """The offset of the first sample with ``key``: ``offset`` if the key is new, which is
        then recorded."""
        # UTF-8 orders as code points do; surrogatepass keeps keys from undecodable names apart
        data = key.encode("utf-8", "surrogatepass")
        if data > self._last:
            self._keys += data
            self._ends.append(len(self._keys))
            self._offsets.append(offset)
            self._last = data
            return offset
        at = self._find(data)
        if at >= 0:
            return self._offsets[at]
        return self._others.setdefault(key, offset)

    def _find(self, data: bytes) -> int:
        """Index of ``data`` among the ascending keys, or -1."""
        keys, ends = self._keys, self._ends
        lo, hi = 0, len(ends)
        while lo < hi:  # the first key >= data
            mid = (lo + hi) // 2
            if keys[ends[mid - 1] if mid else 0 : ends[mid]] < data:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ends) and keys[ends[lo - 1] if lo else 0 : ends[lo]] == data:
            return lo
        return -1
