"""streaming-wds: stream WebDataset tar shards from S3 or disk into PyTorch, with exact resume."""

from .config import S3Options, StreamOptions
from .dataset import StreamingWebDataset
from .decoders import ImageDecoder
from .encoding import encode_field
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DecodeError,
    JobError,
    MissingFieldError,
    NoShardsError,
    ObjectNotFoundError,
    PlanningError,
    SampleError,
    ShardChangedError,
    ShardExistsError,
    ShardFormatError,
    ShardNotFoundError,
    StorageAuthError,
    StorageError,
    StreamingWDSError,
)
from .index import DatasetIndex, ShardEntry, build_index, read_index
from .loader import StreamingDataLoader
from .mapping import MapResult, map
from .nodes import Node, resolve_node
from .optimize import OptimizeResult, optimize
from .planner import plan_epoch
from .storage import LocalStorage, MemoryStorage, ObjectInfo, S3Storage, Storage
from .world import World
from .writer import ShardWriter

__version__ = "0.2.0.dev0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetIndex",
    "DecodeError",
    "ImageDecoder",
    "JobError",
    "LocalStorage",
    "MapResult",
    "MemoryStorage",
    "MissingFieldError",
    "NoShardsError",
    "Node",
    "ObjectInfo",
    "ObjectNotFoundError",
    "OptimizeResult",
    "PlanningError",
    "S3Options",
    "S3Storage",
    "SampleError",
    "ShardChangedError",
    "ShardEntry",
    "ShardExistsError",
    "ShardFormatError",
    "ShardNotFoundError",
    "ShardWriter",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StreamOptions",
    "StreamingDataLoader",
    "StreamingWDSError",
    "StreamingWebDataset",
    "World",
    "build_index",
    "encode_field",
    "map",
    "optimize",
    "plan_epoch",
    "read_index",
    "resolve_node",
]
