"""The I/O seam: a store rooted at one location that lists, reads byte ranges and writes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec


class ObjectInfo(msgspec.Struct, frozen=True):
    """One object directly under a store's location.

    Attributes:
        name: Name relative to the location (no slashes for listed shards).
        size: Size in bytes, as listed.
        url: Full URL, used in error messages and as a sample's ``__url__``.
        etag: Entity tag where the store has one.
        samples: Number of samples, where a dataset index says.
        sha256: Hex SHA-256 of the content, where a dataset index says.
        crc32: ``zlib.crc32`` of the content, where a dataset index says.
    """

    name: str
    size: int
    url: str
    etag: str | None = None
    samples: int | None = None
    sha256: str | None = None
    crc32: int | None = None


class ByteStream(Protocol):
    """Sequential reads of one object from some offset; returned by ``Storage.open_read``.

    A stream may also have ``readinto(view: memoryview) -> int``, filling ``view`` (fewer bytes
    only at the end) and returning the count: the fetcher then reads into reused buffers instead
    of copying what ``read`` returns. The streams of the built-in stores have it.
    """

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the object's end."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Storage(Protocol):
    """What streaming-wds needs from a store. Implementations must pickle.

    A store may also have ``open_read(name, start, etag=None, max_resumes=0) -> ByteStream``: a
    stream of the object from byte ``start`` with one request for the rest of it (opening may be
    lazy, so a missing object may raise ``ShardNotFoundError`` on the first read). A remote store
    reads only version ``etag`` when given (raising ``ShardChangedError`` otherwise) and resumes
    a broken-off body up to ``max_resumes`` times. Shards are then read through it; a store
    without it is read with one ``read_range`` per piece.

    A store may also have ``warm_up()``: called once per epoch, in the consumer's process, before
    any download thread starts (the S3 store builds that process's client there).
    """

    @property
    def location(self) -> str:
        """URL of the root, for messages."""
        ...

    def list(self, suffix: str) -> list[ObjectInfo]:
        """Objects directly under the root whose names end with ``suffix``, sorted by name."""
        ...

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of object ``name`` (fewer only at the object's end)."""
        ...

    def get(self, name: str) -> bytes:
        """The whole object ``name``.

        Raises:
            ObjectNotFoundError: If it does not exist.
        """
        ...

    def put(self, name: str, data: bytes) -> None:
        """Write ``data`` as object ``name``, replacing it atomically."""
        ...

    def url(self, name: str) -> str:
        """Full URL of object ``name``."""
        ...
