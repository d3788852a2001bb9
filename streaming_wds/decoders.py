"""Schema decoding: field name -> decoder, resolved once when the dataset is built.

Built-in decoder names (case-insensitive):

============  ==========================================================
``bytes``     the raw bytes (also what fields outside the schema stay)
``txt``/``str``  UTF-8 text
``int``/``cls``  an integer written as text
``json``      JSON via msgspec
``msgpack``   MessagePack via msgspec
``npy``       a NumPy ``.npy`` array, with pickle disabled
``pil``       a ``PIL.Image.Image`` converted to RGB
``rgb8``      a NumPy ``uint8`` array, H x W x 3
``torchrgb8`` a ``uint8`` tensor, 3 x H x W
``torchrgb``  a ``float32`` tensor, 3 x H x W, in [0, 1]
``pickle``    ``pickle.loads``: only with ``allow_pickle=True``
``torch``     ``torch.load``: only with ``allow_pickle=True``
============  ==========================================================
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

Decoder = Callable[[bytes], Any]
SchemaValue = str | Decoder


def decode_bytes(data: bytes) -> bytes:
    return data


def decode_text(data: bytes) -> str:
    return data.decode("utf-8")


def decode_int(data: bytes) -> int:
    return int(data.decode("ascii").strip())


def decode_json(data: bytes) -> Any:
    import msgspec

    return msgspec.json.decode(data)


def decode_msgpack(data: bytes) -> Any:
    import msgspec

    return msgspec.msgpack.decode(data)


def decode_npy(data: bytes) -> Any:
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_pil(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def decode_rgb8(data: bytes) -> Any:
    import numpy as np

    return np.asarray(decode_pil(data), dtype=np.uint8)


def decode_torchrgb8(data: bytes) -> Any:
    import torch

    return torch.from_numpy(decode_rgb8(data).copy()).permute(2, 0, 1).contiguous()


def decode_torchrgb(data: bytes) -> Any:
    return decode_torchrgb8(data).float().div_(255.0)


def decode_pickle(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def decode_torch(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), weights_only=False)  # only with allow_pickle=True


DECODERS: dict[str, Decoder] = {
    "bytes": decode_bytes,
    "txt": decode_text,
    "str": decode_text,
    "int": decode_int,
    "cls": decode_int,
    "json": decode_json,
    "msgpack": decode_msgpack,
    "npy": decode_npy,
    "pil": decode_pil,
    "rgb8": decode_rgb8,
    "torchrgb8": decode_torchrgb8,
    "torchrgb": decode_torchrgb,
}
UNSAFE_DECODERS: dict[str, Decoder] = {"pickle": decode_pickle, "torch": decode_torch}


def normalize_field(name: str) -> str:
    """A schema key as the field name it matches: no leading dot, lowercase."""
    field = name[1:] if name.startswith(".") else name
    if not field:
        raise ConfigError(f"schema key {name!r} names no field")
    return field.lower()


def resolve_schema(
    schema: Mapping[str, SchemaValue] | None, *, allow_pickle: bool = False
) -> dict[str, Decoder]:
    """Map each schema field to its decoder.

    Raises:
        ConfigError: For an unknown decoder name, a duplicate field, or an unsafe decoder
            without ``allow_pickle=True``.
    """
    resolved: dict[str, Decoder] = {}
    for key, value in (schema or {}).items():
        field = normalize_field(key)
        if field in resolved:
            raise ConfigError(f"schema names field {field!r} twice")
        if callable(value):
            resolved[field] = value
            continue
        if not isinstance(value, str):
            raise ConfigError(f"schema field {field!r}: expected a decoder name or a callable, got {value!r}")
        name = value.lower()
        if name in DECODERS:
            resolved[field] = DECODERS[name]
        elif name in UNSAFE_DECODERS:
            if not allow_pickle:
                raise ConfigError(
                    f"schema field {field!r}: decoder {value!r} runs pickle on shard content, which "
                    "can execute arbitrary code; pass allow_pickle=True only if you trust the data"
                )
            resolved[field] = UNSAFE_DECODERS[name]
        else:
            known = ", ".join(sorted(DECODERS))
            raise ConfigError(f"schema field {field!r}: unknown decoder {value!r} (known: {known})")
    return resolved
