"""Frozen, self-checking option objects.

``S3Options`` says how to reach an S3-compatible store; ``StreamOptions`` says how hard a worker
reads ahead and how widely it mixes shards. Both are immutable ``msgspec.Struct`` values whose
``__post_init__`` checks cross-field rules and raises :class:`~streaming_wds.errors.ConfigError`.
"""

from __future__ import annotations

import msgspec

from .errors import ConfigError

MiB = 1024 * 1024


class S3Options(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach S3 or an S3-compatible store.

    Attributes:
        profile: A named profile from the AWS config files; ``None`` uses boto3's normal
            credential chain (environment, config files, instance roles).
        endpoint_url: Endpoint of an S3-compatible store (MinIO, R2, Ceph, a local server).
        region: Region name; ``None`` lets boto3 decide.
        anonymous: Send unsigned requests (public buckets). Never used as a silent fallback.
        max_pool_connections: Size of the HTTP connection pool; ``None`` is 10 (botocore's
            default). A pool smaller than a dataset's download threads
            (:attr:`StreamOptions.max_workers`) is raised to their number.
        retry_mode: botocore's retry mode for requests: ``"standard"`` (default), ``"adaptive"``
            (client-side rate limiting too) or ``"legacy"``. Throttling (503 SlowDown, 429),
            500/502/503/504 and connection errors before a response are retried with exponential
            backoff and jitter; authentication errors are not.
        max_attempts: Attempts per request, the first included (botocore's ``total_max_attempts``).
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds a read may wait for data; a stalled body is resumed (see
            :attr:`StreamOptions.max_resumes`).
    """

    profile: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    max_pool_connections: int | None = None
    retry_mode: str = "standard"
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.anonymous and self.profile is not None:
            raise ConfigError(
                "S3Options: anonymous=True sends unsigned requests, so a profile "
                f"({self.profile!r}) would be ignored; pass one or the other"
            )
        if self.max_pool_connections is not None and self.max_pool_connections < 1:
            raise ConfigError("S3Options: max_pool_connections must be at least 1")
        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise ConfigError(
                f"S3Options: retry_mode must be 'standard', 'adaptive' or 'legacy', got {self.retry_mode!r}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"S3Options: max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"S3Options: {name} must be positive, got {getattr(self, name)}")


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a DataLoader worker reads, buffers and mixes its shards.

    Downloaded-but-unparsed bytes per worker stay within ``max(buffer_bytes, (interleave +
    prefetch) * chunk_size)``: an open shard holding nothing may always fetch one chunk, so every
    open shard makes progress. Parsed samples add at most ``interleave * shuffle_block`` samples.

    Attributes:
        interleave: Shards a worker reads concurrently and mixes samples from when shuffling
            (``shuffle=False`` always reads one shard at a time, in order). 16 gives about 14
            distinct shards per batch of 32.
        shuffle_block: Samples read together from one shard and permuted when shuffling.
        prefetch: Upcoming shards opened (and downloaded into the buffer) ahead of use.
        max_workers: Download threads per worker.
        chunk_size: Bytes per piece read from a shard's stream (the unit of read-ahead).
        readahead: Chunks per open shard requested ahead of the reader (besides the one being
            parsed). One is enough while a stream's socket keeps receiving between reads; more
            only adds resident memory (about 9 MB per worker per extra chunk with the defaults).
        buffer_bytes: Budget of downloaded-but-unparsed bytes per worker.
        verify_checksums: Check each shard read from its start against the CRC-32 (or, in an
            index without one, the SHA-256) in the dataset index, where there is one (about 0.1
            CPU-seconds per GB with ``isal`` installed, 0.6 with zlib's CRC; 1 for SHA-256).
        max_resumes: Times the read of one shard may be resumed (a ranged request from the
            byte reached, conditioned on the ETag) after its body broke off, reset or stalled.
        max_member_bytes: Largest tar member accepted, checked from its header before reading;
            a larger one is a :class:`~streaming_wds.errors.ShardFormatError`.
    """

    interleave: int = 16
    shuffle_block: int = 8
    prefetch: int = 2
    max_workers: int = 8
    chunk_size: int = MiB // 2
    readahead: int = 1
    buffer_bytes: int = 128 * MiB
    verify_checksums: bool = True
    max_resumes: int = 5
    max_member_bytes: int = 256 * MiB

    def __post_init__(self) -> None:
        for name in ("interleave", "shuffle_block", "max_workers", "chunk_size", "readahead"):
            if getattr(self, name) < 1:
                raise ConfigError(f"StreamOptions: {name} must be at least 1, got {getattr(self, name)}")
        if self.max_resumes < 0:
            raise ConfigError(f"StreamOptions: max_resumes must be >= 0, got {self.max_resumes}")
        if self.max_member_bytes < 1:
            raise ConfigError(
                f"StreamOptions: max_member_bytes must be at least 1, got {self.max_member_bytes}"
            )
        if self.prefetch < 0:
            raise ConfigError(f"StreamOptions: prefetch must be >= 0, got {self.prefetch}")
        if self.buffer_bytes < self.chunk_size:
            raise ConfigError(
                f"StreamOptions: buffer_bytes ({self.buffer_bytes}) must be at least chunk_size "
                f"({self.chunk_size}); lower chunk_size or raise buffer_bytes"
            )
