"""``ShardWriter``: samples into numbered WebDataset tar shards, locally or under ``s3://``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .config import S3Options
from .encoding import END_OF_ARCHIVE, Encoder, encode_field, encode_sample
from .errors import ConfigError, ShardExistsError
from .index import DatasetIndex, ShardEntry, read_index, write_index
from .storage import Storage, open_storage
from .uploads import Uploader

log = logging.getLogger(__name__)

__all__ = ["ShardWriter", "encode_field"]


class ShardWriter:
    """Writes samples into ``shard-000000.tar``, ``shard-000001.tar``, … under ``output``.

    A sample is a mapping with ``__key__`` and fields (bytes, str, int, float, dict, list, NumPy
    arrays or PIL images, encoded by the field's extension with :func:`encode_field`). A shard is
    closed when it holds ``maxcount`` samples or when the next sample would take it past
    ``maxsize`` bytes (real tar bytes: headers, PAX records, padding, end marker). Members are
    written in PAX format with fixed metadata (mtime 0, uid/gid 0) and sorted fields, so the same
    samples give the same bytes.

    Closed shards are uploaded in the background, at most ``max_uploads`` at a time (memory is
    about ``(max_uploads + 1) * maxsize``). A shard appears under its final name only once it is
    complete: local files are renamed into place, S3 objects are single PUTs or multipart uploads
    that are aborted on failure. Existing shards are never replaced unless ``overwrite=True``.

    On :meth:`close` the writer waits for every upload, raises the first failure, and then (with
    ``index=True``) writes ``index.json`` last, merged with an index already there. Leaving the
    ``with`` block by an exception waits for running uploads and writes neither the partial
    shard nor the index.

    Args:
        output: A local directory, ``file://`` URL, ``s3://bucket/prefix`` or ``Storage``.
        maxcount: Samples per shard at most.
        maxsize: Bytes per shard at most (a single larger sample gets a shard of its own).
        pattern: ``%``-format of shard names, given the shard number.
        start_shard: Number of the first shard.
        s3: How to reach S3, for ``s3://`` outputs.
        encoder: Replaces :func:`encode_field`.
        overwrite: Allow replacing existing shards of the same names.
        max_uploads: Shards uploading at once.
        index: Write (or update) ``index.json`` on close.
    """

    def __init__(
        self,
        output: str | os.PathLike[str] | Storage,
        *,
        maxcount: int = 10_000,
        maxsize: int = 1 << 30,
        pattern: str = "shard-%06d.tar",
        start_shard: int = 0,
        s3: S3Options | None = None,
        encoder: Encoder = encode_field,
        overwrite: bool = False,
        max_uploads: int = 2,
        index: bool = True,
    ) -> None:
        if maxcount < 1 or maxsize < 1 or max_uploads < 1:
            raise ConfigError("ShardWriter: maxcount, maxsize and max_uploads must be positive")
        try:
            pattern % 0
        except (TypeError, ValueError):
            raise ConfigError(f"ShardWriter: pattern {pattern!r} needs one %d-style field") from None
        if not pattern.endswith(".tar") or "/" in pattern:
            raise ConfigError(f"ShardWriter: pattern {pattern!r} must end with .tar and contain no '/'")
        self.storage = open_storage(output, None, s3)
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.pattern = pattern
        self.encoder = encoder
        self.overwrite = overwrite
        self.index = index
        self.shard = start_shard
        self.written: list[str] = []
        #: ``(samples, bytes)`` of each shard in :attr:`written`, known as soon as it is closed.
        self.written_sizes: list[tuple[int, int]] = []
        self.entries: list[ShardEntry] = []
        self.total = 0
        self._max_uploads = max_uploads
        self._uploader: Uploader | None = None
        self._existing: set[str] | None = None
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
            self.abort()

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample, rolling over to a new shard when a limit would be passed.

        Raises:
            ConfigError: If the sample cannot be encoded.
            ShardExistsError: If a shard name already exists and ``overwrite`` is off.
            StorageError: If an earlier upload failed.
        """
        _, data = encode_sample(sample, self.encoder)
        self.write_encoded(data)

    def write_encoded(self, data: bytes, samples: int = 1) -> None:
        """Add ``samples`` already encoded as tar members (see ``encoding.encode_sample``)."""
        if self._closed:
            raise ConfigError("ShardWriter is closed")
        if self._parts and (
            self._count + samples > self.maxcount
            or self._size + len(data) + len(END_OF_ARCHIVE) > self.maxsize
        ):
            self.flush()
        self._parts.append(data)
        self._size += len(data)
        self._count += samples
        self.total += samples

    def flush(self) -> None:
        """Close the current shard (if it has samples) and start uploading it."""
        if not self._parts:
            return
        name = self.pattern % self.shard
        self._check_overwrite(name)
        if self._uploader is None:
            self._uploader = Uploader(self.storage, self._max_uploads)
        failure = self._uploader.first_failure()
        if failure is not None:
            raise failure
        self._parts.append(END_OF_ARCHIVE)
        data = b"".join(self._parts)
        self._uploader.submit(name, data, self._count)
        self.written.append(name)
        self.written_sizes.append((self._count, len(data)))
        self.shard += 1
        self._parts, self._size, self._count = [], 0, 0

    def _check_overwrite(self, name: str) -> None:
        if self.overwrite:
            return
        if self._existing is None:
            self._existing = {info.name for info in self.storage.list(".tar")}
        if name in self._existing:
            raise ShardExistsError(self.storage.url(name))

    def close(self) -> None:
        """Write the last shard, wait for all uploads (raising the first failure), write the
        index. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
            if self._uploader is not None:
                self.entries = self._uploader.wait()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self._uploader is not None:
            self._uploader.close()
        if self.index and self.entries:
            old = read_index(self.storage)
            write_index(self.storage, (old or DatasetIndex()).merged(self.entries))

    def abort(self) -> None:
        """Drop the unfinished shard and wait for uploads already running. Writes no index."""
        self._parts, self._size, self._count = [], 0, 0
        self._closed = True
        if self._uploader is not None:
            self._uploader.close()
