"""JPEGs through simplejpeg: the same pixels as Pillow's decode, at every draft scale, and
everything simplejpeg would decode differently (or not at all) left to Pillow."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import simplejpeg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.bench_data import jpeg_pool, with_comment
from streaming_wds import ImageDecoder, jpeg
from streaming_wds.decoders import DECODERS, _open_rgb

SUBSAMPLINGS = ["444", "422", "420", "440", "411"]


def pillow_pixels(data: bytes, draft: tuple[int, int] | None = None) -> np.ndarray:
    return np.asarray(_open_rgb(data, draft, None))


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: the mix of flat and busy blocks a photo has."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(-40, 40, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, subsampling: str, quality: int) -> bytes:
    out = simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling=subsampling)
    return bytes(out)


def pillow_jpeg(img: Image.Image, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


@settings(max_examples=80, deadline=None)
@given(
    width=st.integers(1, 90),
    height=st.integers(1, 70),
    subsampling=st.sampled_from(SUBSAMPLINGS),
    quality=st.integers(30, 100),
    draft=st.one_of(st.none(), st.tuples(st.integers(1, 100), st.integers(1, 80))),
    seed=st.integers(0, 2**16),
)
def test_any_ycbcr_jpeg_decodes_to_pillows_pixels_at_pillows_scale(
    width: int,
    height: int,
    subsampling: str,
    quality: int,
    draft: tuple[int, int] | None,
    seed: int,
) -> None:
    data = encoded(photo(width, height, seed), subsampling, quality)
    got = jpeg.rgb(data, draft, None)
    assert got is not None
    want = pillow_pixels(data, draft)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(1, 80),
    height=st.integers(1, 60),
    draft=st.one_of(st.none(), st.tuples(st.integers(1, 90), st.integers(1, 70))),
    options=st.sampled_from(
        [
            {},
            {"subsampling": 0},
            {"subsampling": 1},
            {"progressive": True},
            {"progressive": True, "subsampling": 0},
            {"optimize": True},
            {"restart_marker_blocks": 2},
        ]
    ),
)
def test_pillows_own_jpegs_and_greyscale_ones_decode_to_its_pixels(
    width: int, height: int, draft: tuple[int, int] | None, options: dict[str, Any]
) -> None:
    rgb = Image.fromarray(photo(width, height, width * height))
    for img in (rgb, rgb.convert("L")):
        data = pillow_jpeg(img, quality=85, **options)
        got = jpeg.rgb(data, draft, None)
        assert got is not None
        assert np.array_equal(got, pillow_pixels(data, draft))


@pytest.mark.parametrize("draft", [None, (250, 187), (125, 94), (62, 47)])
def test_the_benchmarks_jpegs_decode_to_pillows_pixels(draft: tuple[int, int] | None) -> None:
    for i, data in enumerate(jpeg_pool(3, seed=5)):
        data = with_comment(data, f"{i:07d}")
        got = jpeg.rgb(data, draft, None)
        assert got is not None and np.array_equal(got, pillow_pixels(data, draft))


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 10_000),
    height=st.integers(1, 10_000),
    draft=st.tuples(st.integers(1, 3000), st.integers(1, 3000)),
)
def test_the_draft_scale_is_the_one_pillow_picks(width: int, height: int, draft: tuple[int, int]) -> None:
    img = Image.new("RGB", (1, 1))
    im = Image.open(io.BytesIO(pillow_jpeg(img)))
    im._size = (width, height)  # draft reads only the size and the tile
    im.tile = [im.tile[0]._replace(extents=(0, 0, width, height))]
    im.draft("RGB", draft)
    scale = im.decoderconfig[0]
    assert jpeg.draft_scale(width, height, draft) == scale
    assert im.size == (-(-width // scale), -(-height // scale))


def cmyk_jpeg() -> bytes:
    return pillow_jpeg(Image.fromarray(photo(20, 10, 1)).convert("CMYK"))


def truncated_jpeg() -> bytes:
    data = encoded(photo(64, 48, 2), "420", 90)
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    """A clean header, then scan data with a stray marker: libjpeg warns, Pillow decodes on."""
    data = bytearray(encoded(photo(64, 48, 3), "420", 90))
    sos = data.index(b"\xff\xda")
    data[sos + 40 : sos + 42] = b"\xff\xd0"
    return bytes(data)


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(5, 4, 4)).save(buf, "PNG")
    return buf.getvalue()


def not_a_jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0 then nothing a JPEG has"


@pytest.mark.parametrize("make", [cmyk_jpeg, truncated_jpeg, corrupt_jpeg, png, not_a_jpeg, lambda: b""])
def test_what_simplejpeg_would_decode_otherwise_is_left_to_pillow(make: Any) -> None:
    data = make()
    assert jpeg.rgb(data, None, None) is None
    try:
        want = ("pixels", pillow_pixels(data).tolist())
    except Exception as exc:
        want = ("error", (type(exc), str(exc)))
    try:
        got = ("pixels", DECODERS["rgb8"](data).tolist())
    except Exception as exc:
        got = ("error", (type(exc), str(exc)))
    assert got == want


def test_images_over_max_pixels_are_left_to_pillow_which_refuses_them() -> None:
    data = encoded(photo(40, 30, 5), "420", 90)
    assert jpeg.rgb(data, None, 1200) is not None
    assert jpeg.rgb(data, None, 1199) is None
    reason = "image is 40 x 30 = 1200 pixels, over max_pixels=1199"
    with pytest.raises(Image.DecompressionBombError, match=reason):
        ImageDecoder("rgb8", max_pixels=1199)(data)


def test_every_output_is_the_same_as_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(photo(33, 21, 6), "420", 80)
    fast = {out: ImageDecoder(out, draft=(16, 10))(data) for out in ("rgb8", "torchrgb8", "torchrgb")}
    slow = {out: ImageDecoder(out, draft=(16, 10), fast_jpeg=False)(data) for out in fast}
    assert fast["rgb8"].shape == (11, 17, 3) and np.array_equal(fast["rgb8"], slow["rgb8"])
    assert not fast["rgb8"].flags.writeable and fast["rgb8"].flags.c_contiguous  # as Pillow's
    for out in ("torchrgb8", "torchrgb"):
        assert fast[out].dtype == slow[out].dtype and fast[out].is_contiguous()
        assert torch.equal(fast[out], slow[out])


def test_jpegs_take_the_fast_path_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from streaming_wds import decoders

    data = encoded(photo(30, 20, 7), "422", 90)
    want = pillow_pixels(data)

    def no_pillow(*_: Any) -> Any:
        raise AssertionError("Pillow decoded a JPEG that simplejpeg decodes exactly")

    with monkeypatch.context() as m:
        m.setattr(decoders, "_open_rgb", no_pillow)
        assert np.array_equal(DECODERS["rgb8"](data), want)
        assert np.array_equal(ImageDecoder("rgb8")(data), want)
        with pytest.raises(AssertionError, match="Pillow decoded"):
            ImageDecoder("rgb8", fast_jpeg=False)(data)


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(photo(30, 20, 8), "420", 90)
    monkeypatch.setattr(jpeg, "_simplejpeg", lambda: None)
    assert not jpeg.available() and jpeg.rgb(data, None, None) is None
    assert np.array_equal(DECODERS["rgb8"](data), pillow_pixels(data))


def test_a_header_simplejpeg_cannot_name_is_left_to_pillow() -> None:
    """Luma sampled 1x4: simplejpeg's header reader fails with a KeyError, Pillow decodes it."""
    data = bytearray(encoded(photo(48, 32, 0), "420", 85))
    sof = data.index(b"\xff\xc0")
    data[sof + 11] = 0x14  # first component: H=1, V=4
    with pytest.raises(KeyError):
        simplejpeg.decode_jpeg_header(bytes(data))
    assert jpeg.rgb(bytes(data), None, None) is None
    assert np.array_equal(DECODERS["rgb8"](bytes(data)), pillow_pixels(bytes(data)))


_BASES = [encoded(photo(40, 24, s), sub, 85) for s, sub in enumerate(SUBSAMPLINGS)]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(range(len(_BASES))),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "cut", "insert"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=4,
    ),
    draft=st.sampled_from([None, (20, 12), (10, 6)]),
)
def test_a_damaged_jpeg_decodes_as_pillow_decodes_it_or_goes_to_pillow(
    base: int, edits: list[tuple[str, int, bytes]], draft: tuple[int, int] | None
) -> None:
    """Whatever the damage, the fast path gives Pillow's pixels or hands the file to Pillow; it
    never decodes a file Pillow rejects (an image read from damaged data is Pillow's call)."""
    data = bytearray(_BASES[base])
    for op, where, blob in edits:
        at = where % len(data)
        if op == "set":
            data[at : at + len(blob)] = blob[: len(data) - at]
        elif op == "cut":
            del data[at : at + len(blob)]
        else:
            data[at:at] = blob
    got = jpeg.rgb(bytes(data), draft, None)
    if got is not None:
        assert np.array_equal(got, pillow_pixels(bytes(data), draft))
