"""An in-memory store: the small fake used by tests and examples."""

from __future__ import annotations

from ..errors import ObjectNotFoundError, ShardNotFoundError
from .base import ObjectInfo


class MemoryStorage:
    """Objects held in a dict. Pickles with its content (so workers see the same data)."""

    def __init__(self, objects: dict[str, bytes] | None = None, *, name: str = "mem") -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.name = name
        self.reads = 0

    @property
    def location(self) -> str:
        return f"memory://{self.name}"

    def url(self, name: str) -> str:
        return f"memory://{self.name}/{name}"

    def list(self, suffix: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(name=n, size=len(d), url=self.url(n))
            for n, d in sorted(self.objects.items())
            if n.endswith(suffix) and "/" not in n
        ]

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        try:
            data = self.objects[name]
        except KeyError:
            raise ShardNotFoundError(self.url(name)) from None
        self.reads += 1
        return data[start:stop]

    def open_read(
        self, name: str, start: int, etag: str | None = None, max_resumes: int = 0
    ) -> _MemoryStream:
        try:
            data = self.objects[name]
        except KeyError:
            raise ShardNotFoundError(self.url(name)) from None
        return _MemoryStream(self, data, start)

    def get(self, name: str) -> bytes:
        try:
            return self.objects[name]
        except KeyError:
            raise ObjectNotFoundError(self.url(name)) from None

    def put(self, name: str, data: bytes) -> None:
        self.objects[name] = bytes(data)


class _MemoryStream:
    def __init__(self, store: MemoryStorage, data: bytes, pos: int) -> None:
        self._store = store
        self._data = data
        self._pos = pos

    def read(self, n: int) -> bytes:
        self._store.reads += 1
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def readinto(self, view: memoryview) -> int:
        self._store.reads += 1
        n = min(len(view), len(self._data) - self._pos)
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        pass
