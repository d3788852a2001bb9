"""Schema resolution, every built-in decoder, and decode failures through the dataset."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from streaming_wds import (
    ConfigError,
    DecodeError,
    ImageDecoder,
    MemoryStorage,
    MissingFieldError,
    SampleError,
    ShardWriter,
    StreamingWebDataset,
)
from streaming_wds.decoders import DECODERS, DEFAULT_MAX_PIXELS, decode_pil, decode_text, resolve_schema
from tests.badtars import png_claiming

KNOWN = "bytes, cls, int, json, msgpack, npy, pil, rgb8, str, torchrgb, torchrgb8, txt"

# A 3 x 2 (W x H) image with distinct pixels; PNG is lossless, so values come back exactly.
PIXELS = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [128, 128, 128], [0, 0, 0]]], dtype=np.uint8
)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode(name: str, data: bytes, **kw: Any) -> Any:
    return resolve_schema({"f": name}, **kw)["f"](data)


RGB_PNG = png(Image.fromarray(PIXELS, "RGB"))


# -- resolution ----------------------------------------------------------------------------------


def test_keys_are_normalised() -> None:
    resolved = resolve_schema({".JPG": "PIL", "Seg.PNG": "rgb8", "cls": "Int", ".json": "JSON"})
    assert resolved == {
        "jpg": DECODERS["pil"],
        "seg.png": DECODERS["rgb8"],
        "cls": DECODERS["int"],
        "json": DECODERS["json"],
    }
    assert resolve_schema(None) == {}
    assert resolve_schema({}) == {}


def test_every_builtin_name_resolves_to_its_decoder() -> None:
    names = [
        "bytes",
        "txt",
        "str",
        "int",
        "cls",
        "json",
        "msgpack",
        "npy",
        "pil",
        "rgb8",
        "torchrgb8",
        "torchrgb",
    ]
    assert sorted(names) == sorted(DECODERS)
    for name in names:
        assert resolve_schema({"f": name.upper()}) == {"f": DECODERS[name]}


def test_unknown_decoder_name() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_schema({"txt": "txt", ".JPG": "jpeg"})
    assert str(exc.value) == f"schema field 'jpg': unknown decoder 'jpeg' (known: {KNOWN})"


def test_same_field_twice_after_normalisation() -> None:
    with pytest.raises(ConfigError, match=r"^schema names field 'jpg' twice$"):
        resolve_schema({".jpg": "pil", "JPG": "bytes"})


def test_empty_field_name() -> None:
    for key in ("", "."):
        with pytest.raises(ConfigError) as exc:
            resolve_schema({key: "bytes"})
        assert str(exc.value) == f"schema key {key!r} names no field"


def test_value_neither_name_nor_callable() -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_schema({"cls": 3})  # type: ignore[dict-item]
    assert str(exc.value) == "schema field 'cls': expected a decoder name or a callable, got 3"


def test_callables_are_accepted() -> None:
    def upper(data: bytes) -> str:
        return data.decode().upper()

    resolved = resolve_schema({".TXT": upper, "n": len})
    assert resolved == {"txt": upper, "n": len}
    assert resolved["txt"](b"abc") == "ABC"


def test_unsafe_decoders_need_allow_pickle() -> None:
    for name in ("pickle", "torch", "Pickle"):
        with pytest.raises(ConfigError) as exc:
            resolve_schema({"obj": name})
        assert str(exc.value) == (
            f"schema field 'obj': decoder {name!r} runs pickle on shard content, which can execute "
            "arbitrary code; pass allow_pickle=True only if you trust the data"
        )
        with pytest.raises(ConfigError):
            StreamingWebDataset(MemoryStorage(), schema={"obj": name})


def test_pickle_and_torch_with_allow_pickle() -> None:
    value = {"a": (1, 2), "b": {3}}
    assert decode("pickle", pickle.dumps(value), allow_pickle=True) == value
    buf = io.BytesIO()
    torch.save({"t": torch.arange(6, dtype=torch.int16).reshape(2, 3)}, buf)
    out = decode("torch", buf.getvalue(), allow_pickle=True)
    assert list(out) == ["t"]
    assert out["t"].dtype == torch.int16
    assert torch.equal(out["t"], torch.arange(6, dtype=torch.int16).reshape(2, 3))


# -- decoding ------------------------------------------------------------------------------------


def test_bytes_text_and_int() -> None:
    raw = b"\x00\xffraw"
    assert decode("bytes", raw) is raw
    for name in ("txt", "str"):
        out = decode(name, "héllo wörld\n".encode())
        assert type(out) is str and out == "héllo wörld\n"
    for name in ("int", "cls"):
        assert [decode(name, b) for b in (b"42", b" 7\n", b"-3", b"0")] == [42, 7, -3, 0]
        assert type(decode(name, b"42")) is int
    with pytest.raises(UnicodeDecodeError):
        decode_text(b"\xff")
    with pytest.raises(ValueError):
        decode("int", b"4.5")


def test_json_and_msgpack() -> None:
    value = {"a": [1, 2.5, None, "x"], "b": {"c": True}}
    assert decode("json", b'{"a": [1, 2.5, null, "x"], "b": {"c": true}}') == value
    assert decode("msgpack", msgspec.msgpack.encode(value)) == value
    with pytest.raises(msgspec.DecodeError):
        decode("json", b"{not json")


def test_npy() -> None:
    arrays = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array(7, dtype=np.int64),
        np.array([True, False]),
        np.zeros((0, 4), dtype=np.uint16),
        np.arange(24, dtype=">i4").reshape(2, 3, 4),
    ]
    for array in arrays:
        buf = io.BytesIO()
        np.save(buf, array)
        out = decode("npy", buf.getvalue())
        assert type(out) is np.ndarray
        assert (out.dtype, out.shape) == (array.dtype, array.shape)
        assert np.array_equal(out, array)


def test_npy_object_array_is_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode("npy", buf.getvalue())


def test_pil_rgb() -> None:
    for name in ("pil", "PIL"):
        img = decode(name, RGB_PNG)
        assert isinstance(img, Image.Image)
        assert (img.mode, img.size) == ("RGB", (3, 2))
        assert np.array_equal(np.asarray(img), PIXELS)


def test_pil_converts_grey_and_rgba_to_rgb() -> None:
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    img = decode_pil(png(Image.fromarray(grey, "L")))
    assert (img.mode, img.size) == ("RGB", (3, 1))
    assert np.array_equal(np.asarray(img), np.stack([grey] * 3, axis=-1))

    rgba = np.concatenate([PIXELS, np.full((2, 3, 1), 77, dtype=np.uint8)], axis=-1)
    img = decode_pil(png(Image.fromarray(rgba, "RGBA")))
    assert (img.mode, img.size) == ("RGB", (3, 2))
    assert np.array_equal(np.asarray(img), PIXELS)  # alpha dropped, colours kept


def test_rgb8() -> None:
    out = decode("rgb8", RGB_PNG)
    assert type(out) is np.ndarray
    assert (out.dtype, out.shape) == (np.uint8, (2, 3, 3))
    assert np.array_equal(out, PIXELS)
    grey = decode("rgb8", png(Image.fromarray(np.full((4, 5), 9, dtype=np.uint8), "L")))
    assert (grey.shape, int(grey.min()), int(grey.max())) == ((4, 5, 3), 9, 9)


def test_torchrgb8() -> None:
    out = decode("torchrgb8", RGB_PNG)
    assert isinstance(out, torch.Tensor)
    assert (out.dtype, tuple(out.shape)) == (torch.uint8, (3, 2, 3))
    assert out.is_contiguous()
    assert torch.equal(out, torch.from_numpy(PIXELS).permute(2, 0, 1))


def test_torchrgb() -> None:
    out = decode("torchrgb", RGB_PNG)
    assert isinstance(out, torch.Tensor)
    assert (out.dtype, tuple(out.shape)) == (torch.float32, (3, 2, 3))
    expected = torch.from_numpy(PIXELS).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(out, expected, atol=0, rtol=1e-6)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


IMAGE_DECODERS = ("pil", "rgb8", "torchrgb8", "torchrgb")


def test_images_fail_on_non_image_bytes() -> None:
    garbage_jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4  # a JPEG's magic, then nonsense
    for name in IMAGE_DECODERS:
        for data in (b"not an image", garbage_jpeg, b""):
            with pytest.raises(UnidentifiedImageError) as exc:
                decode(name, data)
            assert isinstance(exc.value, OSError)
            assert str(exc.value) == "cannot identify image file (not an image PIL can read)"


def test_truncated_jpeg_fails_to_decode() -> None:
    data = jpeg(64, 48)
    for name in IMAGE_DECODERS:
        with pytest.raises(OSError, match=r"^image file is truncated"):
            decode(name, data[: len(data) // 2])  # header intact, half the scan data missing


# -- pixel limit ---------------------------------------------------------------------------------


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header says ``width`` x ``height``."""
    data = bytearray(jpeg(16, 8))
    sof = data.index(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5 : sof + 9]) == (8, 16)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_default_pixel_limit_is_pils_default() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485 == 1024 * 1024 * 1024 // 4 // 3  # as defined in PIL.Image


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (png_claiming(20000, 20000), "20000 x 20000 = 400000000"),  # over twice PIL's own limit
        (jpeg_claiming(9460, 9459), "9460 x 9459 = 89482140"),  # just over: PIL would only warn
    ],
)
def test_images_over_the_pixel_limit_are_refused_from_the_header(data: bytes, size: str) -> None:
    assert len(data) < 1000
    reason = f"image is {size} pixels, over max_pixels=89478485"
    for decoder in [
        *(DECODERS[n] for n in IMAGE_DECODERS),
        ImageDecoder(),
        ImageDecoder("pil", draft=(8, 8)),
    ]:
        with pytest.raises(Image.DecompressionBombError) as exc:
            decoder(data)
        assert str(exc.value) == reason


def test_max_pixels_is_inclusive() -> None:
    assert ImageDecoder("rgb8", max_pixels=6)(RGB_PNG).shape == (2, 3, 3)
    with pytest.raises(Image.DecompressionBombError, match=r"^image is 3 x 2 = 6 pixels, over max_pixels=5$"):
        ImageDecoder("rgb8", max_pixels=5)(RGB_PNG)


def test_max_pixels_counts_the_full_size_not_the_draft() -> None:
    data = jpeg(64, 48)
    assert ImageDecoder("rgb8", draft=(8, 6), max_pixels=64 * 48)(data).shape == (6, 8, 3)
    with pytest.raises(Image.DecompressionBombError, match=r"^image is 64 x 48 = 3072 pixels"):
        ImageDecoder("rgb8", draft=(8, 6), max_pixels=64 * 48 - 1)(data)


def test_pils_global_limit_is_neither_used_nor_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Image.open would refuse 64 x 48
    data = jpeg(64, 48)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert decode("pil", data).size == (64, 48)
    assert decode("rgb8", data).shape == (48, 64, 3)
    assert tuple(decode("torchrgb8", data).shape) == tuple(decode("torchrgb", data).shape) == (3, 48, 64)
    assert ImageDecoder("rgb8", max_pixels=None)(data).shape == (48, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_image_decoder_rejects_bad_max_pixels() -> None:
    for bad in (0, -1, 2.5, True, "1000"):
        with pytest.raises(ConfigError) as exc:
            ImageDecoder(max_pixels=bad)  # type: ignore[arg-type]
        assert str(exc.value) == f"ImageDecoder: max_pixels must be a positive int or None, got {bad!r}"


# -- through the dataset -------------------------------------------------------------------------


def make_store(bad: dict[int, dict[str, Any]] | None = None) -> MemoryStorage:
    """Six samples k0..k5, three per shard; ``bad`` replaces fields of some samples."""
    store = MemoryStorage()
    with ShardWriter(store, maxcount=3) as w:
        for i in range(6):
            sample: dict[str, Any] = {"__key__": f"k{i}", "cls": i, "txt": f"t{i}"}
            sample.update((bad or {}).get(i, {}))
            w.write(sample)
    assert sorted(store.objects) == ["index.json", "shard-000000.tar", "shard-000001.tar"]
    return store


def member_offset(store: MemoryStorage, shard: str, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(store.objects[shard]), mode="r:") as tf:
        return tf.getmember(name).offset


def keys_until_error(ds: StreamingWebDataset) -> tuple[list[str], BaseException | None]:
    keys = []
    it = iter(ds)
    try:
        for s in it:
            keys.append(s["__key__"])
    except Exception as exc:
        return keys, exc
    finally:
        it.close()
    return keys, None


def test_decoded_samples() -> None:
    ds = StreamingWebDataset(make_store(), schema={"CLS": "int", ".txt": "str"})
    assert list(ds) == [
        {"__key__": f"k{i}", "__url__": f"memory://mem/shard-00000{i // 3}.tar", "cls": i, "txt": f"t{i}"}
        for i in range(6)
    ]


def test_decode_failure_raises_decode_error() -> None:
    store = make_store({4: {"cls": "four"}})
    ds = StreamingWebDataset(store, schema={"cls": "int"})
    keys, exc = keys_until_error(ds)
    assert keys == ["k0", "k1", "k2", "k3"]
    assert isinstance(exc, DecodeError) and isinstance(exc, SampleError)
    offset = member_offset(store, "shard-000001.tar", "k4.cls")
    assert offset == 2048  # k3 (two members of one block each) precedes it
    url = "memory://mem/shard-000001.tar"
    assert (exc.url, exc.offset, exc.key, exc.field) == (url, offset, "k4", "cls")
    assert str(exc) == (
        f"{url} at byte {offset}, sample 'k4': field 'cls' failed to decode: "
        "ValueError: invalid literal for int() with base 10: 'four'"
    )
    assert isinstance(exc.__cause__, ValueError)


def test_decode_failure_of_a_callable_names_the_field() -> None:
    def strict(data: bytes) -> str:
        if data == b"t1":
            raise RuntimeError("no t1 here")
        return data.decode()

    store = make_store()
    keys, exc = keys_until_error(StreamingWebDataset(store, schema={".TXT": strict}))
    assert keys == ["k0"]
    assert isinstance(exc, DecodeError)
    assert str(exc) == (
        "memory://mem/shard-000000.tar at byte 2048, sample 'k1': field 'txt' failed to decode: "
        "RuntimeError: no t1 here"
    )


def test_decode_failures_are_skipped_and_counted() -> None:
    store = make_store({1: {"cls": "one"}, 4: {"txt": b"\xff\xfe"}})
    ds = StreamingWebDataset(store, schema={"cls": "int", "txt": "txt"}, on_error="skip")
    assert [(s["__key__"], s["cls"], s["txt"]) for s in ds] == [
        ("k0", 0, "t0"),
        ("k2", 2, "t2"),
        ("k3", 3, "t3"),
        ("k5", 5, "t5"),
    ]
    assert ds.error_counts == {"decode": 2}


def test_one_decode_failure_skipped() -> None:
    store = make_store({2: {"cls": "x"}})
    ds = StreamingWebDataset(store, schema={"cls": "int"}, on_error="skip")
    assert [s["__key__"] for s in ds] == ["k0", "k1", "k3", "k4", "k5"]
    assert ds.error_counts == {"decode": 1}


def test_missing_schema_field() -> None:
    store = make_store()
    ds = StreamingWebDataset(store, schema={"cls": "int", ".Seg.PNG": "pil"})
    keys, exc = keys_until_error(ds)
    assert keys == []
    assert isinstance(exc, MissingFieldError) and isinstance(exc, KeyError)
    url = "memory://mem/shard-000000.tar"
    assert (exc.url, exc.offset, exc.key, exc.field) == (url, 0, "k0", "seg.png")
    assert str(exc) == f"{url} at byte 0, sample 'k0': missing field 'seg.png' (sample has ['cls', 'txt'])"


def test_missing_field_skipped_and_counted() -> None:
    store = make_store({3: {"json": {"x": 1}}})
    ds = StreamingWebDataset(store, schema={"json": "json"}, on_error="skip")
    assert [(s["__key__"], s["json"]) for s in ds] == [("k3", {"x": 1})]
    assert ds.error_counts == {"missing_field": 5}


# -- ImageDecoder -------------------------------------------------------------------------------


def test_image_decoder_without_draft_equals_a_full_pil_decode() -> None:
    data = jpeg(64, 48)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for output, want in (("rgb8", full), ("torchrgb8", np.transpose(full, (2, 0, 1)))):
        got = ImageDecoder(output)(data)
        assert np.array_equal(np.asarray(got), want)
    assert np.array_equal(ImageDecoder("rgb8")(data), DECODERS["rgb8"](data))
    assert ImageDecoder("pil")(data).size == (64, 48)
    assert float(ImageDecoder("torchrgb")(data).max()) <= 1.0


@pytest.mark.parametrize(
    ("draft", "shape"),
    [
        ((64, 48), (48, 64)),
        ((32, 24), (24, 32)),
        ((31, 20), (24, 32)),
        ((16, 12), (12, 16)),
        ((8, 6), (6, 8)),
    ],
)
def test_draft_decodes_jpeg_at_the_smallest_scale_at_least_that_large(
    draft: tuple[int, int], shape: tuple[int, int]
) -> None:
    data = jpeg(64, 48)
    out = ImageDecoder("rgb8", draft=draft)(data)
    assert (out.dtype, out.shape) == (np.uint8, (*shape, 3))


def test_draft_leaves_other_formats_at_full_size() -> None:
    assert ImageDecoder("rgb8", draft=(1, 1))(RGB_PNG).shape == (2, 3, 3)


def test_image_decoder_in_a_schema_and_pickled() -> None:
    dec = ImageDecoder("rgb8", draft=(32, 24))
    assert resolve_schema({"jpg": dec}) == {"jpg": dec}
    clone = pickle.loads(pickle.dumps(dec))
    assert repr(clone) == "ImageDecoder('rgb8', draft=(32, 24), max_pixels=89478485, fast_jpeg=True)"
    assert repr(ImageDecoder("pil", max_pixels=None, fast_jpeg=False)) == (
        "ImageDecoder('pil', draft=None, max_pixels=None, fast_jpeg=False)"
    )


def test_image_decoder_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="output must be one of pil, rgb8, torchrgb8, torchrgb, got 'bgr'"):
        ImageDecoder("bgr")
    with pytest.raises(
        ConfigError, match=r"draft must be a \(width, height\) of positive sizes, got \(0, 5\)"
    ):
        ImageDecoder(draft=(0, 5))


def test_rgb8_arrays_are_read_only_and_a_copy_is_writable() -> None:
    """As documented: ``rgb8`` wraps PIL's pixel bytes without a second copy, so it cannot be
    written in place; ``.copy()`` gives a writable array with the same pixels."""
    img = Image.new("RGB", (4, 3), (10, 20, 30))
    arr = DECODERS["rgb8"](png(img))
    assert arr.shape == (3, 4, 3) and not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0, 0, 0] = 1
    mine = arr.copy()
    mine[0, 0, 0] = 1
    assert mine.flags.writeable and mine[0, 0].tolist() == [1, 20, 30]
