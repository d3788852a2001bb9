"""``ShardWriter``: samples into numbered WebDataset tar shards, locally or under ``s3://``."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from .config import S3Options
from .errors import ConfigError
from .storage import Storage, open_storage


def encode_field(field: str, value: Any) -> bytes:
    """Bytes of ``value`` for a field whose last extension decides the format.

    ``bytes`` pass through; ``str`` is UTF-8; ``int`` and ``float`` are decimal text (NumPy
    scalars too, except for ``npy`` fields); ``dict``/``list`` are JSON
    (or MessagePack for ``msgpack``); NumPy arrays are ``.npy`` (no pickle); PIL images are
    encoded by the extension (``jpg``, ``png``, ``webp``, …).

    Raises:
        ConfigError: If the value cannot be encoded for that field.
    """
    ext = field.rsplit(".", 1)[-1].lower()
    if type(value).__module__ == "numpy" and ext != "npy":
        import numpy as np

        if isinstance(value, np.generic):
            value = value.item()  # NumPy scalars (np.int64(3), ...) encode like Python scalars
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bool):
        raise ConfigError(f"field {field!r}: refusing to guess an encoding for a bool")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, float)):
        return repr(value).encode("ascii")
    if isinstance(value, (dict, list)):
        import msgspec

        try:
            return msgspec.msgpack.encode(value) if ext in ("msgpack", "mpk") else msgspec.json.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ConfigError(f"field {field!r}: cannot encode content: {exc}") from exc
    type_name = f"{type(value).__module__}.{type(value).__name__}"
    if type_name.startswith("numpy."):
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    if type_name.startswith("PIL."):
        fmt = {
            "jpg": "JPEG",
            "jpeg": "JPEG",
            "png": "PNG",
            "webp": "WEBP",
            "bmp": "BMP",
            "tif": "TIFF",
            "tiff": "TIFF",
        }
        if ext not in fmt:
            raise ConfigError(f"field {field!r}: cannot encode an image as {ext!r}")
        img = value.convert("RGB") if fmt[ext] == "JPEG" and value.mode not in ("RGB", "L") else value
        buf = io.BytesIO()
        img.save(buf, format=fmt[ext], **({"quality": 95} if fmt[ext] == "JPEG" else {}))
        return buf.getvalue()
    raise ConfigError(f"field {field!r}: cannot encode a {type_name}")


_END_SIZE = 2 * tarfile.BLOCKSIZE  # end-of-archive marker; no padding to tarfile's record size


def _member_bytes(name: str, data: bytes) -> bytes:
    """One regular-file member in PAX format with fixed metadata: header(s), data, padding."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


class ShardWriter:
    """Writes samples into ``shard-000000.tar``, ``shard-000001.tar``, … under ``output``.

    A sample is a mapping with ``__key__`` and fields (bytes, str, int, dict, list, NumPy arrays
    or PIL images, encoded by :func:`encode_field`). A shard is closed when it holds ``maxcount``
    samples or when the next sample would take it past ``maxsize`` bytes (real tar bytes: headers,
    PAX records, padding, end marker). Members are written in
    PAX format with fixed metadata (mtime 0, uid/gid 0) and sorted fields, so the same samples
    give the same bytes. Shards are written whole when closed, so a reader never sees a partial
    shard under its final name.

    Args:
        output: A local directory, ``file://`` URL, ``s3://bucket/prefix`` or ``Storage``.
        maxcount: Samples per shard at most.
        maxsize: Bytes per shard at most (a single larger sample gets a shard of its own).
        pattern: ``%``-format of shard names, given the shard number.
        start_shard: Number of the first shard.
        s3: How to reach S3, for ``s3://`` outputs.
        encoder: Replaces :func:`encode_field`.
    """

    def __init__(
        self,
        output: str | os.PathLike[str] | Storage,
        *,
        maxcount: int = 10_000,
        maxsize: int = 3 << 30,
        pattern: str = "shard-%06d.tar",
        start_shard: int = 0,
        s3: S3Options | None = None,
        encoder: Callable[[str, Any], bytes] = encode_field,
    ) -> None:
        if maxcount < 1 or maxsize < 1:
            raise ConfigError("ShardWriter: maxcount and maxsize must be positive")
        try:
            pattern % 0
        except (TypeError, ValueError):
            raise ConfigError(f"ShardWriter: pattern {pattern!r} needs one %d-style field") from None
        self.storage = open_storage(output, None, s3)
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.pattern = pattern
        self.encoder = encoder
        self.shard = start_shard
        self.written: list[str] = []
        self.total = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._count = 0
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.close()
        else:
            self._discard()

    def _encode(self, sample: Mapping[str, Any]) -> tuple[str, list[tuple[str, bytes]]]:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sample needs a non-empty string '__key__', got {key!r}")
        if "." in key.rsplit("/", 1)[-1]:
            raise ConfigError(f"sample key {key!r} must not contain a dot in its last path part")
        fields = []
        seen: set[str] = set()
        for name in sorted(sample):
            if name.startswith("__"):
                continue
            field = name[1:] if name.startswith(".") else name
            if not field or "/" in field:
                raise ConfigError(f"sample {key!r}: field name {name!r} must be non-empty and contain no '/'")
            if field.lower() in seen:
                raise ConfigError(f"sample {key!r}: field {field.lower()!r} is given twice ({name!r})")
            seen.add(field.lower())
            fields.append((f"{key}.{field}", self.encoder(field, sample[name])))
        if not fields:
            raise ConfigError(f"sample {key!r} has no fields")
        return key, fields

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample, rolling over to a new shard when a limit would be passed."""
        if self._closed:
            raise ConfigError("ShardWriter is closed")
        _, members = self._encode(sample)
        data = b"".join(_member_bytes(name, payload) for name, payload in members)
        if self._parts and (
            self._count >= self.maxcount or self._size + len(data) + _END_SIZE > self.maxsize
        ):
            self._finish()
        self._parts.append(data)
        self._size += len(data)
        self._count += 1
        self.total += 1

    def _finish(self) -> None:
        name = self.pattern % self.shard
        self._parts.append(b"\0" * _END_SIZE)
        self.storage.put(name, b"".join(self._parts))
        self.written.append(name)
        self.shard += 1
        self._parts, self._size, self._count = [], 0, 0

    def _discard(self) -> None:
        self._parts, self._size, self._count = [], 0, 0
        self._closed = True

    def close(self) -> None:
        """Write the last shard. Idempotent."""
        if self._closed:
            return
        if self._parts:
            self._finish()
        self._closed = True
