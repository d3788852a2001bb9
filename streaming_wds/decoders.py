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
``rgb8``      a read-only NumPy ``uint8`` array, H x W x 3 (``.copy()`` it to write)
``torchrgb8`` a ``uint8`` tensor, 3 x H x W
``torchrgb``  a ``float32`` tensor, 3 x H x W, in [0, 1]
``pickle``    ``pickle.loads``: only with ``allow_pickle=True``
``torch``     ``torch.load``: only with ``allow_pickle=True``
============  ==========================================================

:class:`ImageDecoder` gives the image outputs with options, such as a reduced-size JPEG decode
for pipelines that shrink images anyway: ``schema={"jpg": ImageDecoder("rgb8", draft=(250, 187))}``.

JPEGs in YCbCr or greyscale are decoded by libjpeg-turbo through ``simplejpeg`` where it is
installed (a dependency on the platforms it has wheels for): the same pixels as PIL's decode, with
less work around it (:mod:`streaming_wds.jpeg`). Everything else, and every error, is PIL's.

Images are decoded in full when the sample is read (a truncated or corrupt image fails there, as a
:class:`~streaming_wds.errors.DecodeError`), and only if their header claims at most
``max_pixels`` pixels (:data:`DEFAULT_MAX_PIXELS` for the named image decoders): a small file can
claim a huge image (a decompression bomb). This limit replaces PIL's process-wide
``Image.MAX_IMAGE_PIXELS``, which these decoders neither read nor change.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import jpeg, staging
from .errors import ConfigError

if TYPE_CHECKING:
    from PIL.ImageFile import ImageFile

Decoder = Callable[[bytes], Any]
SchemaValue = str | Decoder

#: Largest image (width x height) the image decoders decode by default: PIL's own default limit.
DEFAULT_MAX_PIXELS = 89_478_485


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


def _open_image(data: bytes) -> ImageFile:
    """``Image.open`` of ``data``, reading only the header, without PIL's global pixel limit.

    ``Image.open`` warns above ``Image.MAX_IMAGE_PIXELS`` and raises above twice that, a
    process-wide setting; :func:`_open_rgb` applies its own limit instead. This tries the
    registered formats as ``Image.open`` does: the common ones first, then all.
    """
    from PIL import Image, UnidentifiedImageError

    Image.preinit()
    prefix = data[:16]
    tried: set[str] = set()
    for load_all in (False, True):
        if load_all:
            Image.init()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            try:
                looks_right = accept is None or accept(prefix)
                if looks_right and not isinstance(looks_right, str):  # a str: known, unsupported
                    return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):  # not this format
                continue
    raise UnidentifiedImageError("cannot identify image file (not an image PIL can read)")


def _open_rgb(data: bytes, draft: tuple[int, int] | None, max_pixels: int | None) -> Any:
    """The image in ``data`` as an RGB ``PIL.Image``, JPEGs reduced by ``draft`` if given.

    Raises:
        PIL.Image.DecompressionBombError: If the header claims more than ``max_pixels`` pixels
            (checked before any pixel is decoded).
        OSError: If the image is not one PIL can read, or is truncated or corrupt.
    """
    from PIL import Image

    with _open_image(data) as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise Image.DecompressionBombError(
                f"image is {width} x {height} = {width * height} pixels, over max_pixels={max_pixels}"
            )
        if draft is not None:
            img.draft("RGB", draft)
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")  # convert would copy an RGB image


def _rgb8_of(img: Any) -> Any:
    import numpy as np

    return np.asarray(img, dtype=np.uint8)


def _read_only(pixels: Any) -> Any:
    pixels.flags.writeable = False  # as an array over Pillow's bytes is: the same either way
    return pixels


def _torchrgb8_from(pixels: Any) -> Any:
    import torch

    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _torchrgb_from(pixels: Any) -> Any:
    return _torchrgb8_from(pixels).float().div_(255.0)


# The outputs from a writable H x W x 3 uint8 array of the decoder's own (jpeg.rgb's)
_FROM_PIXELS: dict[str, Callable[[Any], Any]] = {
    "rgb8": _read_only,
    "torchrgb8": _torchrgb8_from,
    "torchrgb": _torchrgb_from,
}

# The outputs from an RGB PIL image (its array views Pillow's bytes: torch gets a copy)
_FROM_RGB: dict[str, Callable[[Any], Any]] = {
    "pil": lambda img: img,
    "rgb8": _rgb8_of,
    "torchrgb8": lambda img: _torchrgb8_from(_rgb8_of(img).copy()),
    "torchrgb": lambda img: _torchrgb_from(_rgb8_of(img).copy()),
}


def _decode_image(
    owner: object,
    data: bytes,
    output: str,
    draft: tuple[int, int] | None,
    max_pixels: int | None,
    fast_jpeg: bool,
) -> Any:
    if fast_jpeg and output != "pil":
        # in a worker that collates into its arena, rgb8 images go straight into the batch
        stager = staging.active() if output == "rgb8" else None
        into = functools.partial(stager.slot, owner) if stager is not None else None
        pixels = jpeg.rgb(data, draft, max_pixels, into)
        if pixels is not None:
            if stager is not None:
                stager.taken(owner, pixels)
            return _FROM_PIXELS[output](pixels)
    return _FROM_RGB[output](_open_rgb(data, draft, max_pixels))


def decode_pil(data: bytes) -> Any:
    return _open_rgb(data, None, DEFAULT_MAX_PIXELS)


def decode_rgb8(data: bytes) -> Any:
    return _decode_image(decode_rgb8, data, "rgb8", None, DEFAULT_MAX_PIXELS, True)


def decode_torchrgb8(data: bytes) -> Any:
    return _decode_image(decode_torchrgb8, data, "torchrgb8", None, DEFAULT_MAX_PIXELS, True)


def decode_torchrgb(data: bytes) -> Any:
    return _decode_image(decode_torchrgb, data, "torchrgb", None, DEFAULT_MAX_PIXELS, True)


class ImageDecoder:
    """Decodes an image field to ``output`` (``pil``, ``rgb8``, ``torchrgb8`` or ``torchrgb``).

    Args:
        output: What a sample gets, as the decoder of the same name.
        draft: ``(width, height)``: decode a JPEG at the smallest DCT scale (1/2, 1/4 or 1/8)
            that keeps it at least this large (PIL's ``Image.draft``): several times less work
            than a full decode, for pipelines that resize to that size or smaller anyway. The
            result differs from a full decode followed by a resize. Other formats are decoded
            at full size.
        max_pixels: Largest image (width x height, from its header, before ``draft``) decoded;
            a larger one fails to decode (a :class:`~streaming_wds.errors.DecodeError` naming
            its size) before any pixel is read. ``None``: no limit. PIL's global
            ``Image.MAX_IMAGE_PIXELS`` is not used.
        fast_jpeg: Decode YCbCr and grayscale JPEGs with ``simplejpeg`` where it is installed
            (see :mod:`streaming_wds.jpeg`): the same pixels as PIL's decode, at less cost;
            everything else is PIL's. False: PIL decodes everything. ``pil`` output is always
            PIL's.

    Raises:
        ConfigError: For an unknown output, or a draft or max_pixels that is not positive.
    """

    def __init__(
        self,
        output: str = "rgb8",
        *,
        draft: tuple[int, int] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        fast_jpeg: bool = True,
    ) -> None:
        if output not in _FROM_RGB:
            raise ConfigError(f"ImageDecoder: output must be one of {', '.join(_FROM_RGB)}, got {output!r}")
        if draft is not None and (len(draft) != 2 or min(draft) < 1):
            raise ConfigError(
                f"ImageDecoder: draft must be a (width, height) of positive sizes, got {draft!r}"
            )
        if max_pixels is not None and (type(max_pixels) is not int or max_pixels < 1):
            raise ConfigError(f"ImageDecoder: max_pixels must be a positive int or None, got {max_pixels!r}")
        self.output = output
        self.draft = (draft[0], draft[1]) if draft is not None else None
        self.max_pixels = max_pixels
        self.fast_jpeg = bool(fast_jpeg)

    def __repr__(self) -> str:
        return (
            f"ImageDecoder({self.output!r}, draft={self.draft!r}, max_pixels={self.max_pixels!r}, "
            f"fast_jpeg={self.fast_jpeg!r})"
        )

    def __call__(self, data: bytes) -> Any:
        return _decode_image(self, data, self.output, self.draft, self.max_pixels, self.fast_jpeg)


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
