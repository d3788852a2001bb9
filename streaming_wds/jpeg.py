"""JPEGs decoded by libjpeg-turbo through ``simplejpeg``, pixel for pixel as Pillow decodes them.

Pillow decodes a JPEG with libjpeg-turbo as well (accurate integer IDCT, smooth chroma
upsampling), but around the library it parses the headers in Python, stores RGB as 4 bytes per
pixel and packs it into 3 for NumPy: on the benchmark's 500x375 JPEGs, 10-20% of a full-size
decode and 9% of a 1/2-scale one. ``simplejpeg`` (a dependency on the platforms it ships wheels
for) calls the same library with the same settings and writes 3-byte RGB rows directly.

:func:`rgb` decodes only what it decodes exactly as Pillow does: YCbCr and grayscale JPEGs
(baseline or progressive, any chroma subsampling) that libjpeg-turbo reads without so much as a
warning. For anything else it returns ``None`` and the caller decodes with Pillow, so other
formats, CMYK and other colour spaces, truncated or corrupt files and the errors they raise are
Pillow's, as without ``simplejpeg``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: The first bytes of every JPEG: start of image, then the next marker's 0xFF.
SOI = b"\xff\xd8\xff"
# Colour spaces libjpeg-turbo converts to RGB exactly as Pillow does (CMYK: Pillow inverts and
# converts itself; RGB-coded JPEGs: rare, left to Pillow).
_SPACES = frozenset({"YCbCr", "Gray"})


@functools.cache
def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def available() -> bool:
    """Whether ``simplejpeg`` is installed (else every image is Pillow's to decode)."""
    return _simplejpeg() is not None


def draft_scale(width: int, height: int, draft: tuple[int, int] | None) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) that Pillow's ``JpegImageFile.draft`` picks for
    a ``(width, height)`` request: the largest that keeps the image at least that large."""
    if draft is None:
        return 1
    fits = min(width // draft[0], height // draft[1])
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def rgb(
    data: bytes,
    draft: tuple[int, int] | None,
    max_pixels: int | None,
    into: Callable[[tuple[int, int, int]], Any] | None = None,
) -> Any:
    """``data``'s pixels as an H x W x 3 ``uint8`` array, equal to ``numpy.asarray`` of
    Pillow's RGB decode of it (at the scale ``draft`` gives Pillow), or ``None`` where Pillow
    must decode it: ``simplejpeg`` missing, not a JPEG, another colour space, more than
    ``max_pixels`` pixels (Pillow's path raises that error), or anything libjpeg-turbo flags.

    ``into(shape)``, if given, returns a writable C-contiguous ``uint8`` array of that shape to
    decode into (the result then views it), or ``None`` for new memory.
    """
    simplejpeg = _simplejpeg()
    if simplejpeg is None or data[:3] != SOI:
        return None
    # Any failure is handed to Pillow, which decodes the file or raises its own error for it:
    # simplejpeg raises ValueError for what libjpeg-turbo reports, but a damaged header can also
    # surface as another exception type (KeyError for an unknown subsampling code).
    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:
        return None
    if space not in _SPACES or (max_pixels is not None and width * height > max_pixels):
        return None
    scale = draft_scale(width, height, draft)
    shape = (-(-height // scale), -(-width // scale), 3)
    out = into(shape) if into is not None else None
    try:  # exactly libjpeg's 1/scale: nothing smaller fits, no factor above 1/scale is allowed
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="rgb",
            fastdct=False,
            fastupsample=False,
            min_height=shape[0],
            min_width=shape[1],
            min_factor=scale,
            strict=True,
            buffer=out,
        )
    except Exception:  # strict: a libjpeg warning (Pillow may still decode it) or an error
        return None
    return pixels if pixels.shape == shape else None
