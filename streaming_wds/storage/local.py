"""Local directories and ``file://`` URLs."""

from __future__ import annotations

import os
import tempfile
from io import BufferedReader
from pathlib import Path

from ..errors import ObjectNotFoundError, ShardNotFoundError, StorageError
from .base import ObjectInfo


class LocalStorage:
    """A directory on the local file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return self.root.as_uri() if self.root.is_absolute() else str(self.root)

    def url(self, name: str) -> str:
        return str(self.root / name)

    def list(self, suffix: str) -> list[ObjectInfo]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {self.root}: {exc}") from exc
        infos = [
            ObjectInfo(name=e.name, size=e.stat().st_size, url=str(self.root / e.name))
            for e in entries
            if e.name.endswith(suffix) and e.is_file()
        ]
        return sorted(infos, key=lambda i: i.name)

    def read_range(self, name: str, start: int, stop: int) -> bytes:
        path = self.root / name
        if stop <= start:
            return b""
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(stop - start)
        except FileNotFoundError:
            raise ShardNotFoundError(str(path)) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path} bytes {start}-{stop}: {exc}") from exc

    def open_read(self, name: str, start: int, etag: str | None = None, max_resumes: int = 0) -> _FileStream:
        path = self.root / name
        try:
            f = open(path, "rb")  # noqa: SIM115  # closed by the stream
        except FileNotFoundError:
            raise ShardNotFoundError(str(path)) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        f.seek(start)
        return _FileStream(f, path)

    def get(self, name: str) -> bytes:
        path = self.root / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(str(path)) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _FileStream:
    def __init__(self, f: BufferedReader, path: Path) -> None:
        self._f = f
        self._path = path

    def read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as exc:
            raise StorageError(f"cannot read {self._path}: {exc}") from exc

    def readinto(self, view: memoryview) -> int:
        got = 0
        try:
            while got < len(view):
                n = self._f.readinto(view[got:])
                if not n:
                    break
                got += n
        except OSError as exc:
            raise StorageError(f"cannot read {self._path}: {exc}") from exc
        return got

    def close(self) -> None:
        self._f.close()
