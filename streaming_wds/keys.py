"""The keys a shard has shown so far, to find a key that appears again in it.

Members of a sample must be adjacent, so a key met again later in the same shard is an error
(see :mod:`~streaming_wds.samples`), and finding it needs every key read so far. A ``dict`` of
``str`` to offset costs about 130 bytes per sample; an open shard of a million small samples
would hold 130 MB. Most shards list their keys in ascending order (``ShardWriter`` with counter
keys, webdataset's writers, sorted inputs): such keys are appended to one ``bytearray`` with
their ends and offsets in arrays, about ``len(key) + 16`` bytes per sample, and looked up by
bisection. From the first key that is not greater than the one before, the keys go to a
``dict``, and past :data:`DICT_KEYS` of them all of those move to a hash table kept the same way
(one ``bytearray``, ends, offsets and the table's slots in arrays): about ``len(key) + 28`` bytes
per key instead of about 130, at about 2 µs more per key. The answers are exactly a ``dict``'s:
the ascending keys hold none greater than the last of them, and every other key is in the dict
or the table.
"""

from __future__ import annotations

from array import array

_EMPTY = -1

#: Out-of-order keys of a shard kept in a ``dict`` (about 8 MB of them) before they move to the
#: compact table.
DICT_KEYS = 1 << 16


class _Keys:
    """Keys in one ``bytearray``, their ends and their samples' offsets in arrays."""

    __slots__ = ("data", "ends", "offsets")

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("Q")
        self.offsets = array("Q")

    def __len__(self) -> int:
        return len(self.ends)

    def add(self, key: bytes, offset: int) -> None:
        self.data += key
        self.ends.append(len(self.data))
        self.offsets.append(offset)

    def key(self, i: int) -> bytearray:
        return self.data[self.ends[i - 1] if i else 0 : self.ends[i]]


class _Table:
    """An open-addressing hash set of keys (linear probing, at most half full)."""

    __slots__ = ("keys", "slots")

    def __init__(self) -> None:
        self.keys = _Keys()
        self.slots = array("i", [_EMPTY]) * 8  # index of a key in self.keys, or _EMPTY

    def first(self, key: bytes, offset: int) -> int:
        slots, data, ends = self.slots, self.keys.data, self.keys.ends
        mask = len(slots) - 1
        i = hash(key) & mask
        while (j := slots[i]) != _EMPTY:
            if data[ends[j - 1] if j else 0 : ends[j]] == key:
                return self.keys.offsets[j]
            i = (i + 1) & mask
        slots[i] = len(ends)
        self.keys.add(key, offset)
        if 2 * len(ends) > len(slots):
            self._grow()
        return offset

    def _grow(self) -> None:
        keys = self.keys
        slots = array("i", [_EMPTY]) * (2 * len(self.slots))
        mask = len(slots) - 1
        for j in range(len(keys)):
            i = hash(bytes(keys.key(j))) & mask
            while slots[i] != _EMPTY:
                i = (i + 1) & mask
            slots[i] = j
        self.slots = slots


class ShardKeys:
    """First offsets of the keys of one shard, in the order they are read."""

    __slots__ = ("_ascending", "_dict", "_last", "_table")

    def __init__(self) -> None:
        self._ascending = _Keys()  # the keys read while every key was greater than the last
        self._last = b""  # the greatest of them
        # The keys since the first out of order: none while the keys ascend, so both empty
        # means the shard is sorted so far.
        self._dict: dict[bytes, int] = {}  # until there are DICT_KEYS of them
        self._table: _Table | None = None  # then all of them

    def first(self, key: str, offset: int) -> int:
        """The offset of the first sample with ``key``: ``offset`` if the key is new, which is
        then recorded."""
        # UTF-8 orders as code points do; surrogatepass keeps keys from undecodable names apart
        data = key.encode("utf-8", "surrogatepass")
        if data > self._last:
            if not self._dict and self._table is None:  # sorted so far
                self._ascending.add(data, offset)
                self._last = data
                return offset
        else:
            at = self._find(data)
            if at >= 0:
                return self._ascending.offsets[at]
        if self._table is not None:
            return self._table.first(data, offset)
        first = self._dict.setdefault(data, offset)
        if len(self._dict) >= DICT_KEYS:
            self._table = _Table()
            for moved, at_offset in self._dict.items():
                self._table.first(moved, at_offset)
            self._dict = {}
        return first

    def _find(self, key: bytes) -> int:
        """Index of ``key`` among the ascending keys, or -1."""
        data, ends = self._ascending.data, self._ascending.ends
        lo, hi = 0, len(ends)
        while lo < hi:  # the first key >= key (the slice inlined: _Keys.key costs a call a step)
            mid = (lo + hi) // 2
            if data[ends[mid - 1] if mid else 0 : ends[mid]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(ends) and self._ascending.key(lo) == key else -1
