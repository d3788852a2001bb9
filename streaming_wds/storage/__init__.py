"""Stores behind one small protocol: S3, local directories, memory."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from ..config import S3Options
from ..errors import ConfigError
from .base import ObjectInfo, Storage
from .local import LocalStorage
from .memory import MemoryStorage
from .s3 import S3Storage

__all__ = ["LocalStorage", "MemoryStorage", "ObjectInfo", "S3Storage", "Storage", "open_storage"]


def open_storage(
    remote: str | os.PathLike[str] | Storage,
    split: str | None = None,
    s3: S3Options | None = None,
) -> Storage:
    """The store for ``remote`` (``s3://``, ``file://``, a path, or a ``Storage``), under ``split``.

    Raises:
        ConfigError: For an unsupported URL scheme, or S3 options given for a non-S3 location.
    """
    if isinstance(remote, Storage) and not isinstance(remote, (str, os.PathLike)):
        if split:
            raise ConfigError("split= cannot be combined with a Storage object; root the store there")
        if s3 is not None:
            raise ConfigError("s3= options cannot be combined with a Storage object; configure the store")
        return remote
    text = os.fspath(remote)
    sub = split.strip("/") if split else ""
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"{text!r} has no bucket name")
        prefix = "/".join(p for p in (parsed.path.strip("/"), sub) if p)
        return S3Storage(parsed.netloc, prefix, s3)
    if s3 is not None:
        raise ConfigError(f"s3= options were given but {text!r} is not an s3:// URL")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{text!r} names host {parsed.netloc!r}; use file:///absolute/path or a plain path"
            )
        path = unquote(parsed.path)
    elif parsed.scheme in ("",) or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = text
    else:
        raise ConfigError(
            f"unsupported URL scheme {parsed.scheme!r} in {text!r} (use s3://, file:// or a path)"
        )
    return LocalStorage(os.path.join(path, sub) if sub else path)
