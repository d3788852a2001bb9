"""The exceptions streaming-wds raises, in one place.

Hierarchy::

    StreamingWDSError                      base of everything raised on purpose
    ├── ConfigError (ValueError)           bad arguments, caught at construction
    ├── PlanningError (ValueError)         shards cannot be split over the consumers
    ├── StorageError                       a store could not be listed, read or written
    │   ├── StorageAuthError (PermissionError)   credentials missing, refused or expired
    │   ├── NoShardsError (FileNotFoundError)    no ``*.tar`` under the location
    │   ├── ObjectNotFoundError (FileNotFoundError)  an object is missing
    │   │   └── ShardNotFoundError (also DataError)  a listed shard vanished
    │   └── ShardExistsError (FileExistsError)  a writer would overwrite a shard
    ├── DataError                          bad content; ``on_error="skip"`` counts these
    │   ├── ShardFormatError               corrupt or truncated tar (shard, byte offset)
    │   ├── ShardChangedError              a shard was replaced while being read
    │   └── SampleError                    a sample is unusable (shard, offset, key)
    │       ├── MissingFieldError (KeyError)   a schema field is absent (… and field)
    │       └── DecodeError                    a field failed to decode (… and field)
    ├── CheckpointError (ValueError)       a state dict does not fit this dataset/loader
    └── JobError                           ``optimize``/``map``: the user function failed (input)

Every message names the shard URL, and where it applies the byte offset of the tar header, the
sample key and the field.
"""

from __future__ import annotations


class StreamingWDSError(Exception):
    """Base class of every error streaming-wds raises on purpose."""


class ConfigError(StreamingWDSError, ValueError):
    """An argument or option is invalid; raised when the object is built."""


class PlanningError(StreamingWDSError, ValueError):
    """The shards cannot be assigned to the (rank, worker) consumers."""


class StorageError(StreamingWDSError):
    """A store could not be listed, read or written."""


class StorageAuthError(StorageError, PermissionError):
    """The store refused the credentials, or there are none (never retried).

    The message names the bucket, profile and endpoint, never a credential.
    """


class NoShardsError(StorageError, FileNotFoundError):
    """No ``*.tar`` object was found directly under the location."""

    def __init__(self, location: str) -> None:
        super().__init__(f"no *.tar shards found directly under {location!r}")
        self.location = location


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """An object (a shard, an index) does not exist."""

    def __init__(self, url: str, what: str = "object") -> None:
        super().__init__(f"{what} not found: {url}")
        self.url = url


class DataError(StreamingWDSError):
    """Bad shard content. Under ``on_error="skip"`` these are skipped and counted."""

    #: Key of the counter in :attr:`StreamingWebDataset.error_counts`.
    kind = "data"


class ShardNotFoundError(ObjectNotFoundError, DataError):
    """A shard that was listed (or indexed) could not be found when read.

    Also a :class:`DataError`: under ``on_error="skip"`` the shard is skipped and counted.
    """

    kind = "shard_missing"

    def __init__(self, url: str) -> None:
        super().__init__(url, "shard")


class ShardExistsError(StorageError, FileExistsError):
    """A writer would replace an existing shard (pass ``overwrite=True`` to allow it)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"refusing to overwrite existing shard {url} (pass overwrite=True to replace it)")
        self.url = url


class _ShardRegionError(DataError):
    """A problem with a shard from a byte offset on: names the shard, the offset and why."""

    def __init__(self, url: str, offset: int, reason: str) -> None:
        super().__init__(f"{url} at byte {offset}: {reason}")
        self.url = url
        self.offset = offset
        self.reason = reason


class ShardFormatError(_ShardRegionError):
    """A shard is not a valid tar archive (corrupt header, truncation, unsupported member)."""

    kind = "shard_format"


class ShardChangedError(_ShardRegionError):
    """A shard's content changed while it was being read (its ETag no longer matches).

    Raised instead of splicing bytes of two versions of the object into one stream.
    """

    kind = "shard_changed"


class SampleError(DataError):
    """A sample is unusable (for example two members with the same field)."""

    kind = "sample"

    def __init__(self, url: str, offset: int, key: str, reason: str) -> None:
        super().__init__(f"{url} at byte {offset}, sample {key!r}: {reason}")
        self.url = url
        self.offset = offset
        self.key = key
        self.reason = reason


class MissingFieldError(SampleError, KeyError):
    """A field named in the schema is absent from a sample."""

    kind = "missing_field"

    def __init__(self, url: str, offset: int, key: str, field: str, present: list[str]) -> None:
        super().__init__(url, offset, key, f"missing field {field!r} (sample has {present})")
        self.field = field

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class DecodeError(SampleError):
    """A field could not be decoded by its schema decoder."""

    kind = "decode"

    def __init__(self, url: str, offset: int, key: str, field: str, cause: BaseException) -> None:
        super().__init__(
            url, offset, key, f"field {field!r} failed to decode: {type(cause).__name__}: {cause}"
        )
        self.field = field


class CheckpointError(StreamingWDSError, ValueError):
    """A state dict cannot be applied: wrong version, or made for other data or topology."""


class JobError(StreamingWDSError):
    """The function given to ``optimize`` or ``map`` failed on an input."""

    def __init__(self, index: int, item: object, cause: str) -> None:
        shown = repr(item)
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        super().__init__(f"fn failed on input #{index} ({shown}): {cause}")
        self.index = index
        self.item = item
        self.cause = cause
