"""ShardWriter: numbering, rollover, reproducible bytes, field encodings and errors."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from streaming_wds import ConfigError, MemoryStorage, ShardWriter, encode_field


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def contents(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            f = tf.extractfile(info)
            assert f is not None
            out[info.name] = f.read()
    return out


def keys_in(data: bytes) -> list[str]:
    out: list[str] = []
    for info in members(data):
        key = info.name.split(".", 1)[0]
        if not out or out[-1] != key:
            out.append(key)
    return out


def small(i: int) -> dict[str, Any]:
    return {"__key__": f"k{i}", "cls": i, "txt": f"t{i}"}


def write_all(output: Any, samples: list[dict[str, Any]], **kw: Any) -> ShardWriter:
    with ShardWriter(output, **kw) as w:
        for s in samples:
            w.write(s)
    return w


def shard_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


# -- numbering and rollover ----------------------------------------------------------------------


def test_rollover_at_maxcount_local(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"  # created on the first shard
    w = write_all(out, [small(i) for i in range(7)], maxcount=3)
    names = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert w.written == names
    assert w.total == 7
    files = shard_files(out)
    assert list(files) == ["index.json", *names]  # the index, and no temporary files left
    assert [keys_in(files[n]) for n in names] == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]


def test_rollover_at_maxcount_memory() -> None:
    store = MemoryStorage()
    w = write_all(store, [small(i) for i in range(6)], maxcount=3)
    assert w.written == ["shard-000000.tar", "shard-000001.tar"]  # no empty third
    assert sorted(store.objects) == ["index.json", *w.written]
    assert [keys_in(store.objects[n]) for n in w.written] == [["k0", "k1", "k2"], ["k3", "k4", "k5"]]
    assert [m.name for m in members(store.objects["shard-000001.tar"])] == [
        "k3.cls",
        "k3.txt",
        "k4.cls",
        "k4.txt",
        "k5.cls",
        "k5.txt",
    ]


def test_pattern_and_start_shard(tmp_path: Path) -> None:
    w = write_all(tmp_path, [small(i) for i in range(5)], maxcount=2, pattern="train-%03d.tar", start_shard=8)
    assert w.written == ["train-008.tar", "train-009.tar", "train-010.tar"]
    assert sorted(os.listdir(tmp_path)) == ["index.json", *w.written]
    assert w.shard == 11


def test_nothing_written_for_no_samples(tmp_path: Path) -> None:
    w = write_all(tmp_path / "out", [])
    assert w.written == []
    assert not (tmp_path / "out").exists()


def test_rollover_at_maxsize_exact_counts() -> None:
    # each sample is one 512-byte header and 3072 bytes of data; a shard ends with 1024 zero bytes
    store = MemoryStorage()
    samples = [{"__key__": f"k{i:02d}", "bin": bytes([i]) * 3000} for i in range(12)]
    w = write_all(store, samples, maxsize=20480)
    assert [len(keys_in(store.objects[n])) for n in w.written] == [5, 5, 2]
    assert [keys_in(store.objects[n]) for n in w.written][1] == [f"k{i:02d}" for i in range(5, 10)]
    assert all(len(store.objects[n]) <= 20480 for n in w.written)


def test_rollover_at_maxsize_with_a_sample_bigger_than_maxsize() -> None:
    store = MemoryStorage()
    sizes = [30000, 50000, 100, 100, 9000, 20000, 8000]
    samples = [{"__key__": f"k{i}", "bin": b"x" * n} for i, n in enumerate(sizes)]
    w = write_all(store, samples, maxsize=40960)
    assert [keys_in(store.objects[n]) for n in w.written] == [
        ["k0"],
        ["k1"],  # bigger than maxsize on its own: a shard of its own
        ["k2", "k3", "k4", "k5"],
        ["k6"],
    ]
    sizes_of = {n: len(store.objects[n]) for n in w.written}
    assert sizes_of["shard-000001.tar"] > 40960
    assert all(size <= 40960 for n, size in sizes_of.items() if n != "shard-000001.tar")


def test_maxsize_is_exact_tar_bytes() -> None:
    # one sample: a 512-byte header and 100 bytes padded to 512; a shard ends with 1024 zero bytes
    samples = [{"__key__": f"k{i}", "txt": "x" * 100} for i in range(5)]
    for maxsize, per_shard in (
        (5120, [4, 1]),
        (5119, [3, 2]),
        (4096, [3, 2]),
        (2048, [1] * 5),
        (10, [1] * 5),
    ):
        store = MemoryStorage()
        w = write_all(store, samples, maxsize=maxsize)
        assert [len(keys_in(store.objects[n])) for n in w.written] == per_shard, maxsize
        assert [len(store.objects[n]) for n in w.written] == [1024 * n + 1024 for n in per_shard]


def test_maxsize_counts_pax_headers_of_long_keys() -> None:
    store = MemoryStorage()
    samples = [
        {"__key__": "long-" + "k" * 150 + f"{i:03d}", **{f"f{j}": bytes(100) for j in range(4)}}
        for i in range(12)
    ]
    w = write_all(store, samples, maxsize=40960)
    # each member: PAX header block, its records padded to a block, the ustar header, data
    assert [len(members(store.objects[n])) for n in w.written] == [16, 16, 16]
    assert [len(store.objects[n]) for n in w.written] == [4 * 4 * 2048 + 1024] * 3
    assert all(len(store.objects[n]) <= 40960 for n in w.written)


# -- reproducible bytes and member metadata ------------------------------------------------------


def rich(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "__key__": f"dir/sub/k{i}",
        "jpg": Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8), "RGB"),
        "seg.png": Image.fromarray(rng.integers(0, 4, (6, 5), dtype=np.uint8), "L"),
        "npy": rng.standard_normal((2, 3)).astype(np.float32),
        "json": {"i": i, "tags": ["a", "b"]},
        "cls": i,
        "txt": f"sample {i}",
        "bin": rng.bytes(700),
    }


def test_same_samples_give_identical_bytes(tmp_path: Path) -> None:
    a, b = MemoryStorage(), MemoryStorage()
    write_all(a, [rich(i) for i in range(5)], maxcount=2)
    write_all(b, [rich(i) for i in range(5)], maxcount=2)
    write_all(tmp_path, [rich(i) for i in range(5)], maxcount=2)
    assert sorted(a.objects) == ["index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert a.objects == b.objects == shard_files(tmp_path)


def test_field_order_in_the_sample_does_not_matter() -> None:
    a, b = MemoryStorage(), MemoryStorage()
    write_all(a, [{"__key__": "k", "txt": "t", "cls": 1, "json": [1]}])
    write_all(b, [{"json": [1], "cls": 1, "__key__": "k", "txt": "t"}])
    assert a.objects == b.objects


def test_member_metadata_is_fixed_and_fields_sorted() -> None:
    store = MemoryStorage()
    write_all(store, [rich(0)])
    data = store.objects["shard-000000.tar"]
    infos = members(data)
    assert [m.name for m in infos] == [
        f"dir/sub/k0.{f}" for f in ("bin", "cls", "jpg", "json", "npy", "seg.png", "txt")
    ]
    assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.type) for m in infos} == {
        (0, 0o444, 0, 0, "", "", tarfile.REGTYPE)
    }
    assert data[257:263] == b"ustar\0"  # POSIX (PAX) headers


# -- field encodings -----------------------------------------------------------------------------


def test_scalar_and_container_encodings() -> None:
    assert encode_field("bin", b"\x00\x01") == b"\x00\x01"
    assert encode_field("bin", bytearray(b"ab")) == b"ab"
    assert encode_field("bin", memoryview(b"cd")) == b"cd"
    assert encode_field("txt", "héllo") == "héllo".encode()
    assert encode_field("cls", 42) == b"42"
    assert encode_field("cls", -7) == b"-7"
    assert encode_field("cls", 2**70) == str(2**70).encode()
    assert encode_field("json", {"a": [1, 2.5, None], "b": "é"}) == msgspec.json.encode(
        {"a": [1, 2.5, None], "b": "é"}
    )
    assert json.loads(encode_field("meta.json", [1, "x", {"y": True}])) == [1, "x", {"y": True}]
    assert msgspec.msgpack.decode(encode_field("meta.msgpack", {"a": [1, 2]})) == {"a": [1, 2]}
    assert msgspec.msgpack.decode(encode_field("m.MPK", [3])) == [3]


def test_numpy_encoding() -> None:
    for value in (np.arange(12, dtype=np.int16).reshape(3, 4), np.zeros((0, 2)), np.array([True, False])):
        data = encode_field("x.npy", value)
        out = np.load(io.BytesIO(data), allow_pickle=False)
        assert (out.dtype, out.shape) == (np.asarray(value).dtype, np.asarray(value).shape)
        assert np.array_equal(out, value)


def test_numpy_scalars_encode_like_python_scalars() -> None:
    assert encode_field("cls", np.int64(3)) == b"3"
    assert encode_field("cls", np.uint8(255)) == b"255"
    with pytest.raises(ConfigError, match=r"^field 'cls': refusing to guess an encoding for a bool$"):
        encode_field("cls", np.bool_(True))


def test_zero_dimensional_array_is_npy() -> None:
    data = encode_field("x.npy", np.array(7, dtype=np.int64))
    out = np.load(io.BytesIO(data), allow_pickle=False)
    assert (out.dtype, out.shape, int(out)) == (np.int64, (), 7)


def test_image_encodings() -> None:
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    rgb = Image.fromarray(pixels, "RGB")

    png = Image.open(io.BytesIO(encode_field("seg.png", rgb)))
    assert (png.format, png.mode, png.size) == ("PNG", "RGB", (5, 4))
    assert np.array_equal(np.asarray(png), pixels)

    grey = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5), "L")
    png = Image.open(io.BytesIO(encode_field("mask.PNG", grey)))
    assert (png.format, png.mode) == ("PNG", "L")
    assert np.array_equal(np.asarray(png), np.asarray(grey))

    flat = Image.new("RGB", (8, 8), (200, 40, 90))
    for field in ("jpg", "x.jpeg"):
        jpg = Image.open(io.BytesIO(encode_field(field, flat)))
        assert (jpg.format, jpg.mode, jpg.size) == ("JPEG", "RGB", (8, 8))
        assert np.abs(np.asarray(jpg).astype(int) - [200, 40, 90]).max() <= 3

    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 128))  # JPEG has no alpha: converted to RGB
    jpg = Image.open(io.BytesIO(encode_field("jpg", rgba)))
    assert (jpg.format, jpg.mode) == ("JPEG", "RGB")
    assert np.abs(np.asarray(jpg).astype(int) - [10, 200, 30]).max() <= 3

    webp = Image.open(io.BytesIO(encode_field("webp", rgb)))
    assert webp.format == "WEBP"


def test_sample_fields_through_the_writer() -> None:
    store = MemoryStorage()
    write_all(store, [{"__key__": "a.b/k", ".bin": b"raw", "__url__": "dropped", "n": 3, "t.txt": "x"}])
    assert contents(store.objects["shard-000000.tar"]) == {
        "a.b/k.bin": b"raw",
        "a.b/k.n": b"3",
        "a.b/k.t.txt": b"x",
    }


def test_custom_encoder() -> None:
    store = MemoryStorage()
    calls = []

    def enc(field: str, value: Any) -> bytes:
        calls.append((field, value))
        return repr(value).encode()

    write_all(store, [{"__key__": "k", "cls": 1, ".txt": "a"}], encoder=enc)
    assert calls == [("txt", "a"), ("cls", 1)]  # sorted by the sample's own names: ".txt" < "cls"
    assert contents(store.objects["shard-000000.tar"]) == {"k.txt": b"'a'", "k.cls": b"1"}


# -- errors --------------------------------------------------------------------------------------


def test_unencodable_values() -> None:
    with pytest.raises(ConfigError, match=r"^field 'cls': refusing to guess an encoding for a bool$"):
        encode_field("cls", True)
    assert encode_field("x", 1.5) == b"1.5"
    for value, type_name in (
        ((1, 2), "builtins.tuple"),
        (None, "builtins.NoneType"),
    ):
        with pytest.raises(ConfigError) as exc:
            encode_field("x", value)
        assert str(exc.value) == f"field 'x': cannot encode a {type_name}"
    with pytest.raises(ConfigError, match=r"^field 'img.gif': cannot encode an image as 'gif'$"):
        encode_field("img.gif", Image.new("RGB", (2, 2)))


def test_unencodable_json_content() -> None:
    with pytest.raises(ConfigError):
        encode_field("json", {"a": object()})


WRITE_ERRORS = [
    ({"txt": "x"}, "sample needs a non-empty string '__key__', got None"),
    ({"__key__": "", "txt": "x"}, "sample needs a non-empty string '__key__', got ''"),
    ({"__key__": 3, "txt": "x"}, "sample needs a non-empty string '__key__', got 3"),
    ({"__key__": "a.b", "txt": "x"}, "sample key 'a.b' must not contain a dot in its last path part"),
    ({"__key__": "d/a.b", "txt": "x"}, "sample key 'd/a.b' must not contain a dot in its last path part"),
    ({"__key__": "k"}, "sample 'k' has no fields"),
    ({"__key__": "k", "__url__": "u"}, "sample 'k' has no fields"),
    ({"__key__": "k", "cls": False}, "field 'cls': refusing to guess an encoding for a bool"),
    ({"__key__": "k", "txt": "ok", "x": object()}, "field 'x': cannot encode a builtins.object"),
]


def test_write_errors() -> None:
    for sample, message in WRITE_ERRORS:
        store = MemoryStorage()
        with ShardWriter(store) as w:
            w.write(small(0))
            with pytest.raises(ConfigError) as exc:
                w.write(sample)
            assert str(exc.value) == message
            w.write(small(1))  # the writer goes on; nothing of the bad sample was written
        shard = store.objects["shard-000000.tar"]
        assert [m.name for m in members(shard)] == ["k0.cls", "k0.txt", "k1.cls", "k1.txt"]


def test_same_field_with_and_without_dot() -> None:
    with pytest.raises(ConfigError):
        write_all(MemoryStorage(), [{"__key__": "k", "txt": "a", ".txt": "b"}])


def test_constructor_errors(tmp_path: Path) -> None:
    for kw, message in (
        ({"maxcount": 0}, "ShardWriter: maxcount, maxsize and max_uploads must be positive"),
        ({"maxsize": 0}, "ShardWriter: maxcount, maxsize and max_uploads must be positive"),
        ({"max_uploads": 0}, "ShardWriter: maxcount, maxsize and max_uploads must be positive"),
        ({"pattern": "shard-%d"}, "ShardWriter: pattern 'shard-%d' must end with .tar and contain no '/'"),
        ({"pattern": "shard.tar"}, "ShardWriter: pattern 'shard.tar' needs one %d-style field"),
        ({"pattern": "%d-%d.tar"}, "ShardWriter: pattern '%d-%d.tar' needs one %d-style field"),
    ):
        with pytest.raises(ConfigError) as exc:
            ShardWriter(tmp_path, **kw)
        assert str(exc.value) == message
    assert list(tmp_path.iterdir()) == []


def test_exit_with_an_exception_writes_nothing_more(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, maxcount=2) as w:
        for i in range(3):
            w.write(small(i))
        raise RuntimeError("boom")
    assert w.written == ["shard-000000.tar"]  # finished when k2 started a new shard
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar"]
    assert keys_in((tmp_path / "shard-000000.tar").read_bytes()) == ["k0", "k1"]
    w.close()
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar"]
    with pytest.raises(ConfigError, match=r"^ShardWriter is closed$"):
        w.write(small(9))


def test_close_is_idempotent_and_final() -> None:
    store = MemoryStorage()
    w = ShardWriter(store, maxcount=10)
    w.write(small(0))
    assert store.objects == {}  # a shard is put whole when closed
    w.close()
    first = dict(store.objects)
    w.close()
    assert store.objects == first and list(first) == ["shard-000000.tar", "index.json"]
    with pytest.raises(ConfigError, match=r"^ShardWriter is closed$"):
        w.write(small(1))
