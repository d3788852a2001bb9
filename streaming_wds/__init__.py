"""streaming-wds: stream WebDataset tar shards from S3 or disk into PyTorch, with exact resume."""

from .config import S3Options, StreamOptions
from .dataset import StreamingWebDataset
from .encoding import encode_field
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DecodeError,
    MissingFieldError,
    NoShardsError,
    PlanningError,
    SampleError,
    ShardFormatError,
    ShardNotFoundError,
    StorageError,
    StreamingWDSError,
)
from .loader import StreamingDataLoader
from .planner import plan_epoch
from .storage import LocalStorage, MemoryStorage, ObjectInfo, S3Storage, Storage
from .world import World
from .writer import ShardWriter

__version__ = "0.2.0.dev0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DecodeError",
    "LocalStorage",
    "MemoryStorage",
    "MissingFieldError",
    "NoShardsError",
    "ObjectInfo",
    "PlanningError",
    "S3Options",
    "S3Storage",
    "SampleError",
    "ShardFormatError",
    "ShardNotFoundError",
    "ShardWriter",
    "Storage",
    "StorageError",
    "StreamOptions",
    "StreamingDataLoader",
    "StreamingWDSError",
    "StreamingWebDataset",
    "World",
    "encode_field",
    "plan_epoch",
]
