"""Samples to tar bytes: field encoding by extension, and reproducible tar members."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

Encoder = Callable[[str, Any], bytes]

#: End-of-archive marker: two zero blocks (no padding to tarfile's 10 KiB record size).
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)


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


def member_bytes(name: str, data: bytes) -> bytes:
    """One regular-file member in PAX format with fixed metadata: header(s), data, padding."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def encode_sample(sample: Mapping[str, Any], encoder: Encoder = encode_field) -> tuple[str, bytes]:
    """``(key, tar bytes)`` of one sample: its fields as members ``key.field``, sorted by field.

    Raises:
        ConfigError: For a missing or dotted key, no fields, a field given twice or a field
            name with a ``/``, or a value the encoder refuses.
    """
    key = sample.get("__key__")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"sample needs a non-empty string '__key__', got {key!r}")
    if "." in key.rsplit("/", 1)[-1]:
        raise ConfigError(f"sample key {key!r} must not contain a dot in its last path part")
    parts: list[bytes] = []
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
        parts.append(member_bytes(f"{key}.{field}", encoder(field, sample[name])))
    if not parts:
        raise ConfigError(f"sample {key!r} has no fields")
    return key, b"".join(parts)
