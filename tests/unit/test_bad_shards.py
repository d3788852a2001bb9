"""Bad shards and samples through the dataset.

Each gives a typed error naming the shard URL, the byte offset and, where they apply, the sample
key and field; under ``on_error="skip"`` the shard's rest or the sample is skipped and counted in
``error_counts`` and in the checkpoint's ``errors``.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageFile

from streaming_wds import (
    DataError,
    DecodeError,
    MemoryStorage,
    MissingFieldError,
    SampleError,
    ShardFormatError,
    ShardWriter,
    StreamingWebDataset,
    StreamOptions,
)
from tests.badtars import END, header, long_name_member, png_claiming, raw_member, tar_of

A = "memory://mem/a.tar"
B_TAR = tar_of([("b1.txt", b"1"), ("b2.txt", b"2")])  # a good shard after the bad one
NO_END_MARKER = "truncated: the data ends with no end-of-archive marker"
CHECKSUM = "tar header checksum mismatch (corrupt or not a tar file)"


def raised(store: MemoryStorage, **kw: Any) -> tuple[list[dict[str, Any]], DataError]:
    """The samples delivered under ``on_error="raise"``, and the error that ended them."""
    got: list[dict[str, Any]] = []
    it = iter(StreamingWebDataset(store, **kw))
    with pytest.raises(DataError) as info:
        for sample in it:
            got.append(sample)
    it.close()
    return got, info.value


def skipped(store: MemoryStorage, **kw: Any) -> tuple[list[str], dict[str, int]]:
    """The keys delivered under ``on_error="skip"``, and the errors counted."""
    ds = StreamingWebDataset(store, on_error="skip", **kw)
    delivered = [s["__key__"] for s in ds]
    assert ds.state_dict()["errors"] == ds.error_counts  # what a checkpoint records
    return delivered, ds.error_counts


def keys(samples: list[dict[str, Any]]) -> list[str]:
    return [s["__key__"] for s in samples]


def shard_error(exc: DataError, url: str, offset: int, reason: str) -> None:
    assert type(exc) is ShardFormatError
    assert (exc.url, exc.offset, exc.reason) == (url, offset, reason)
    assert str(exc) == f"{url} at byte {offset}: {reason}"


def sample_error(exc: DataError, cls: type, url: str, offset: int, key: str, reason: str) -> None:
    assert type(exc) is cls
    assert isinstance(exc, SampleError)
    assert (exc.url, exc.offset, exc.key) == (url, offset, key)
    assert str(exc) == f"{url} at byte {offset}, sample {key!r}: {reason}"


# -- objects that are not (whole) tar archives --------------------------------------------------


def sample_of(i: int) -> dict[str, Any]:
    return {"__key__": f"k{i}", "cls": i, "json": {"i": i}, "txt": "x" * (i * 300)}


def writer_shard(n: int = 5) -> bytes:
    store = MemoryStorage()
    with ShardWriter(store, maxcount=100) as w:
        for i in range(n):
            w.write(sample_of(i))
    return store.objects["shard-000000.tar"]


NOT_TARS = {
    "empty": (b"", "empty object, not a tar archive"),
    "random": (random.Random(5).randbytes(3000), CHECKSUM),
    "gzip": (gzip.compress(tar_of([("k.bin", random.Random(1).randbytes(2000))]), mtime=0), CHECKSUM),
    "text": (b"a line of text, not a tar archive\n" * 100, CHECKSUM),
    "short text": (b"key,label\n1,2\n", "truncated tar header (14 of 512 bytes)"),
}


@pytest.mark.parametrize("what", sorted(NOT_TARS))
def test_object_that_is_not_a_tar_archive(what: str) -> None:
    data, reason = NOT_TARS[what]
    store = MemoryStorage({"a.tar": data, "b.tar": B_TAR})
    got, exc = raised(store)
    assert got == []
    shard_error(exc, A, 0, reason)
    assert skipped(store) == (["b1", "b2"], {"shard_format": 1})


# -- truncation at every block boundary -----------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One header of a shard and the data after it."""

    offset: int
    size: int
    name: str
    pax: bool  # a PAX extended header (its data is read whole, padding included)
    first: bool  # the first header of its member


def layout(data: bytes) -> tuple[list[Record], list[int], int]:
    """The headers of ``data`` (from ``tarfile``), where each sample is confirmed complete (the
    end of the next sample's first member, or of the end-of-archive block), and the offset of the
    end-of-archive marker."""
    records: list[Record] = []
    firsts: list[tuple[str, int]] = []  # (key, end of the member's padded data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            inner = info.offset_data - 512
            if inner != info.offset:  # a PAX header first
                pax_size = int(data[info.offset + 124 : info.offset + 136].rstrip(b"\0"), 8)
                records.append(Record(info.offset, pax_size, info.name, True, True))
            records.append(Record(inner, info.size, info.name, False, inner == info.offset))
            key = info.name.split(".", 1)[0]
            if not firsts or firsts[-1][0] != key:
                firsts.append((key, info.offset_data + info.size + (-info.size) % 512))
    end = records[-1].offset + 512 + records[-1].size + (-records[-1].size) % 512
    confirms = [f[1] for f in firsts[1:]] + [end + 512]
    return records, confirms, end


def expected_error(records: list[Record], end: int, cut: int) -> tuple[int, str] | None:
    """Offset and reason of the error the reader must report for ``data[:cut]``."""
    if cut >= end + 512:
        return None  # the first end-of-archive block is there: nothing is missing
    if cut == 0:
        return 0, "empty object, not a tar archive"
    if cut >= end:
        return end, NO_END_MARKER if cut == end else f"truncated tar header ({cut - end} of 512 bytes)"
    r = next(r for r in reversed(records) if r.offset <= cut)
    data_at = r.offset + 512
    if cut == r.offset:
        return cut, NO_END_MARKER if r.first else "truncated tar header (0 of 512 bytes)"
    if cut < data_at:
        return r.offset, f"truncated tar header ({cut - r.offset} of 512 bytes)"
    if r.pax:
        full = r.size + (-r.size) % 512
        return r.offset, f"truncated PAX header: expected {full} bytes, got {cut - data_at}"
    if cut < data_at + r.size:
        return r.offset, f"truncated data of member {r.name!r}: expected {r.size} bytes, got {cut - data_at}"
    return r.offset, f"truncated padding of member {r.name!r}"


def cuts(data: bytes, records: list[Record], end: int) -> list[int]:
    """Every block boundary, and offsets inside headers, data and padding."""
    inside = {1, 100, 511, 513, 700, end + 1, end + 511, end + 513, len(data) - 1}
    for r in records[::3]:
        inside |= {r.offset + 156, r.offset + 512 + r.size // 2, r.offset + 512 + r.size + 1}
    return sorted({*range(0, len(data) + 1, 512), *(c for c in inside if 0 < c < len(data))})


def check_every_cut(data: bytes, name: str, **kw: Any) -> int:
    """Read every truncation of ``data`` as shard ``name``; returns how many were checked."""
    records, confirms, end = layout(data)
    url = f"memory://mem/{name}"
    full = list(StreamingWebDataset(MemoryStorage({name: data}), **kw))
    assert len(full) == len(confirms) >= 3
    checked = 0
    for cut in cuts(data, records, end):
        store = MemoryStorage({name: data[:cut]})
        prefix = full[: sum(c <= cut for c in confirms)]  # samples whose end was confirmed
        error = expected_error(records, end, cut)
        if error is None:
            assert list(StreamingWebDataset(store, **kw)) == full, cut
        else:
            got, exc = raised(store, **kw)
            assert got == prefix, cut
            shard_error(exc, url, *error)
            assert skipped(store, **kw) == (keys(prefix), {"shard_format": 1}), cut
        checked += 1
    return checked


def test_truncation_of_a_shard_writer_shard_at_every_block_boundary() -> None:
    data = writer_shard()
    assert data.endswith(END)
    checked = check_every_cut(data, "shard-000000.tar", schema={"cls": "int", "json": "json", "txt": "txt"})
    assert checked > len(data) // 512


def test_truncation_of_a_webdataset_shard_at_every_block_boundary() -> None:
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=1.5) as tw:  # a fractional mtime: every member gets a PAX header
        for i in range(4):
            tw.write(sample_of(i))
    data = buf.getvalue()
    assert data.count(b"././@PaxHeader") == 12
    checked = check_every_cut(data, "wds-000000.tar", schema={"cls": "int", "json": "json", "txt": "txt"})
    assert checked > len(data) // 512


# -- corrupt headers, refused member types and names ----------------------------------------------


def test_corrupt_header_checksum() -> None:
    data = bytearray(writer_shard())
    records, _, _ = layout(bytes(data))
    k2 = next(r.offset for r in records if r.name == "k2.cls")
    data[k2] ^= 0x01  # 'k2.cls' -> 'j2.cls': the stored checksum no longer matches
    store = MemoryStorage({"a.tar": bytes(data), "b.tar": B_TAR})
    got, exc = raised(store)
    assert keys(got) == ["k0"]  # k1 is not confirmed complete: the header after it is corrupt
    shard_error(exc, A, k2, CHECKSUM)
    assert skipped(store) == (["k0", "b1", "b2"], {"shard_format": 1})


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (b"1", "hard link"),
        (b"2", "symbolic link"),
        (b"3", "character device"),
        (b"4", "block device"),
        (b"6", "FIFO"),
    ],
)
def test_links_and_devices_are_refused(kind: bytes, what: str) -> None:
    data = raw_member("k0.txt", b"0") + raw_member("k1.txt", b"1") + header("k1.cls", 0, kind)
    store = MemoryStorage({"a.tar": data + raw_member("k3.txt", b"3") + END, "b.tar": B_TAR})
    got, exc = raised(store)
    assert keys(got) == ["k0"]
    shard_error(exc, A, 2048, f"unsupported tar member type: {what}")
    assert skipped(store) == (["k0", "b1", "b2"], {"shard_format": 1})


def test_non_utf8_name() -> None:
    data = raw_member("k0.txt", b"0") + raw_member("k1.txt", b"1") + raw_member(b"caf\xe9.txt", b"2") + END
    store = MemoryStorage({"a.tar": data, "b.tar": B_TAR})
    got, exc = raised(store)
    assert keys(got) == ["k0"]
    shard_error(exc, A, 2048, "member name is not UTF-8: b'caf\\xe9.txt'")
    assert skipped(store) == (["k0", "b1", "b2"], {"shard_format": 1})


def test_absolute_and_parent_paths_are_sample_errors() -> None:
    data = tar_of(
        [
            ("k0.txt", b"0"),
            ("/etc/x.txt", b"x"),
            ("/etc/x.cls", b"1"),
            ("../../y.txt", b"y"),
            ("k3.txt", b"3"),
        ]
    )
    store = MemoryStorage({"a.tar": data})
    got, exc = raised(store)
    assert keys(got) == ["k0"]
    sample_error(exc, SampleError, A, 1024, "/etc/x", "member '/etc/x.txt' has an absolute path")
    assert skipped(store) == (["k0", "k3"], {"sample": 2})
    got, exc = raised(MemoryStorage({"a.tar": data[3072:]}))  # from ../../y.txt on
    sample_error(exc, SampleError, A, 0, "../../y", "member '../../y.txt' has a '..' component in its path")


def test_nothing_is_written_under_member_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)  # "../../evil.txt" would land in tmp_path
    absolute = str(tmp_path / "abs-evil.txt")
    names = ["../../evil.txt", absolute, "/tmp/swds-evil.txt"]
    assert not any(os.path.lexists(os.path.join(cwd, n)) for n in names)

    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError(f"ran a command: {args}")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    data = b"".join(long_name_member(n, b"evil") for n in names) + raw_member("ok.txt", b"fine") + END
    store = MemoryStorage({"a.tar": data})
    assert skipped(store) == (["ok"], {"sample": 3})
    assert not any(os.path.lexists(os.path.join(cwd, n)) for n in names)
    assert [sorted(os.listdir(p)) for p in (tmp_path, tmp_path / "a", cwd)] == [["a"], ["b"], []]


# -- size limits ---------------------------------------------------------------------------------


def test_member_over_max_member_bytes() -> None:
    data = raw_member("k0.txt", b"0") + raw_member("k1.txt", b"1") + raw_member("k1.jpg", b"j" * 1001)
    store = MemoryStorage({"a.tar": data + raw_member("k2.txt", b"2") + END, "b.tar": B_TAR})
    opts = StreamOptions(max_member_bytes=1000)
    got, exc = raised(store, options=opts)
    assert keys(got) == ["k0"]
    shard_error(exc, A, 2048, "member 'k1.jpg' is 1001 bytes, over max_member_bytes=1000")
    assert skipped(store, options=opts) == (["k0", "b1", "b2"], {"shard_format": 1})


def test_default_member_cap_refuses_from_the_header() -> None:
    huge = header("k1.jpg", 300_000_000)  # only the header: its data is never read
    store = MemoryStorage({"a.tar": raw_member("k0.txt", b"0") + huge, "b.tar": B_TAR})
    got, exc = raised(store)
    assert got == []
    shard_error(exc, A, 512 + 512, "member 'k1.jpg' is 300000000 bytes, over max_member_bytes=268435456")


# -- grouping ------------------------------------------------------------------------------------


def test_duplicate_field() -> None:
    store = MemoryStorage({"a.tar": tar_of([("k1.txt", b"1"), ("k1.TXT", b"2"), ("k2.txt", b"3")])})
    got, exc = raised(store)
    assert got == []
    sample_error(exc, SampleError, A, 0, "k1", "field 'txt' appears twice (member 'k1.TXT')")
    assert skipped(store) == (["k2"], {"sample": 1})


def test_key_seen_again_after_another_key() -> None:
    store = MemoryStorage(
        {"a.tar": tar_of([("k1.jpg", b"1"), ("k2.jpg", b"2"), ("k1.cls", b"3"), ("k3.jpg", b"4")])}
    )
    got, exc = raised(store)
    assert keys(got) == ["k1", "k2"]
    reason = "key 'k1' already appeared at byte 0 in this shard; members of a sample must be adjacent"
    sample_error(exc, SampleError, A, 2048, "k1", reason)
    assert skipped(store) == (["k1", "k2", "k3"], {"sample": 1})


def test_member_without_extension() -> None:
    store = MemoryStorage({"a.tar": tar_of([("k1.txt", b"1"), ("README", b"r"), ("k2.txt", b"2")])})
    got, exc = raised(store)
    assert keys(got) == ["k1"]
    sample_error(
        exc, SampleError, A, 1024, "README", "member 'README' has no extension, so it belongs to no sample"
    )
    assert skipped(store) == (["k1", "k2"], {"sample": 1})


def test_key_split_across_shards() -> None:
    a = tar_of([("k0.jpg", b"j0"), ("k0.cls", b"0"), ("k1.jpg", b"j1")])  # k1's .cls is in b.tar
    b = tar_of([("k1.cls", b"1"), ("k2.jpg", b"j2"), ("k2.cls", b"2")])
    store = MemoryStorage({"a.tar": a, "b.tar": b})
    schema = {"jpg": "bytes", "cls": "int"}  # fields named in the schema are required
    got, exc = raised(store, schema=schema)
    assert keys(got) == ["k0"]
    sample_error(exc, MissingFieldError, A, 2048, "k1", "missing field 'cls' (sample has ['jpg'])")
    assert isinstance(exc, MissingFieldError) and exc.field == "cls"
    got, exc = raised(MemoryStorage({"b.tar": b}), schema=schema)
    assert got == []
    b_url = "memory://mem/b.tar"
    sample_error(exc, MissingFieldError, b_url, 0, "k1", "missing field 'jpg' (sample has ['cls'])")
    assert skipped(store, schema=schema) == (["k0", "k2"], {"missing_field": 2})
    # without a schema both halves are delivered, as they are
    assert [(s["__key__"], sorted(s)) for s in StreamingWebDataset(store)] == [
        ("k0", ["__key__", "__url__", "cls", "jpg"]),
        ("k1", ["__key__", "__url__", "jpg"]),
        ("k1", ["__key__", "__url__", "cls"]),
        ("k2", ["__key__", "__url__", "cls", "jpg"]),
    ]


# -- field content -------------------------------------------------------------------------------


def jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


BAD_IMAGES = {
    "truncated": (
        jpeg()[: len(jpeg()) // 2],
        r"OSError: image file is truncated \(\d+ bytes not processed\)",
    ),
    "garbage": (
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        r"UnidentifiedImageError: cannot identify image file \(not an image PIL can read\)",
    ),
    "bomb": (
        png_claiming(20000, 20000),
        r"DecompressionBombError: image is 20000 x 20000 = 400000000 pixels, over max_pixels=89478485",
    ),
}


@pytest.mark.parametrize("what", sorted(BAD_IMAGES))
def test_bad_image_is_a_decode_error(what: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # PIL's defaults, untouched
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    bad, cause = BAD_IMAGES[what]
    good = jpeg()
    data = tar_of([("k0.jpg", good), ("k1.jpg", bad), ("k2.jpg", good)])
    store = MemoryStorage({"a.tar": data})
    offset = 512 + len(good) + (-len(good)) % 512
    got, exc = raised(store, schema={"jpg": "rgb8"})
    assert keys(got) == ["k0"] and got[0]["jpg"].shape == (48, 64, 3)
    assert type(exc) is DecodeError and exc.field == "jpg"
    assert (exc.url, exc.offset, exc.key) == (A, offset, "k1")
    assert str(exc).startswith(f"{A} at byte {offset}, sample 'k1': field 'jpg' failed to decode: ")
    assert exc.reason.startswith("field 'jpg' failed to decode: ")
    assert re.fullmatch(cause, exc.reason.removeprefix("field 'jpg' failed to decode: ")), exc.reason
    assert skipped(store, schema={"jpg": "rgb8"}) == (["k0", "k2"], {"decode": 1})


def test_malformed_json_is_a_decode_error() -> None:
    store = MemoryStorage({"a.tar": tar_of([("k0.json", b'{"a": 1}'), ("k1.json", b'{"a": 1,}')])})
    got, exc = raised(store, schema={"json": "json"})
    assert [s["json"] for s in got] == [{"a": 1}]
    assert type(exc) is DecodeError and exc.field == "json"
    assert isinstance(exc.__cause__, msgspec.DecodeError)
    reason = (
        "field 'json' failed to decode: DecodeError: JSON is malformed: trailing comma in object (byte 8)"
    )
    sample_error(exc, DecodeError, A, 1024, "k1", reason)
    assert skipped(store, schema={"json": "json"}) == (["k0"], {"decode": 1})


class _Touch:
    """Unpickling this opens (creates) ``path``: shard content that would run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_pickle_content_stays_bytes(tmp_path: Path) -> None:
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_Touch(str(control)))).close()
    assert control.exists()  # the payload really runs code when unpickled
    target = tmp_path / "pwned.txt"
    payload = pickle.dumps(_Touch(str(target)))
    fields = [("k0.pyd", payload), ("k0.pickle", payload), ("k0.pth", payload), ("k0.cls", b"0")]
    store = MemoryStorage({"a.tar": tar_of(fields)})
    for schema in (None, {"cls": "int"}):
        (sample,) = list(StreamingWebDataset(store, schema=schema))
        assert {f: sample[f] for f in ("pyd", "pickle", "pth")} == dict.fromkeys(
            ("pyd", "pickle", "pth"), payload
        )
    assert not target.exists()
