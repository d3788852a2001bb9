"""Shared test helpers: synthetic datasets written by the library's own ShardWriter."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streaming_wds import MemoryStorage, ShardWriter


def sample(i: int, shard_hint: int = 0) -> dict[str, Any]:
    """A small deterministic sample with several fields."""
    return {
        "__key__": f"s{i:06d}",
        "cls": i % 10,
        "txt": f"sample {i}",
        "json": {"i": i, "shard": shard_hint},
    }


def write_dataset(
    output: str | Path | MemoryStorage, num_samples: int, per_shard: int, **kw: Any
) -> list[str]:
    """Write ``num_samples`` samples, ``per_shard`` per shard; returns the shard names."""
    with ShardWriter(output, maxcount=per_shard, **kw) as w:
        for i in range(num_samples):
            w.write(sample(i, i // per_shard))
    return w.written


def memory_dataset(num_samples: int, per_shard: int) -> MemoryStorage:
    store = MemoryStorage()
    write_dataset(store, num_samples, per_shard)
    return store


def all_keys(num_samples: int) -> list[str]:
    return [f"s{i:06d}" for i in range(num_samples)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg_bytes(color: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (16, 12)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def keys_of(batches: Iterator[dict[str, Any]]) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


class BytesSource:
    """A ``ByteSource`` (what ``TarReader`` reads from) over an in-memory buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        done = min(n, len(self.data) - self.pos)
        self.pos += done
        return done

    def tell(self) -> int:
        return self.pos
