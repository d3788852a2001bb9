"""Fuzzing the tar and sample parser with mutated shards.

Small valid shards (written by the library's ShardWriter, and by ``tarfile`` with GNU long names,
PAX records, a directory and a global header) get hypothesis-drawn mutations: byte flips,
truncation, inserted and deleted runs, and header fields overwritten (sizes set to huge octal or
base-256 values, other types and names), with the checksum fixed up or not. Whatever comes of
it, only streaming-wds errors come out, the dataset path under ``on_error="skip"`` counts
exactly what the parser reported, and memory stays bounded by the size limits.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from streaming_wds import ImageDecoder, MemoryStorage, ShardWriter, StreamingWebDataset
from streaming_wds.errors import ShardFormatError
from streaming_wds.samples import RawSample, SampleReader
from streaming_wds.tar import MAX_EXTENDED_HEADER_BYTES, BytesSource, TarReader
from tests.badtars import set_checksum

# a failing example is a shard of some kB: print it whole rather than fail on the warning about it
pytestmark = pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)

URL = "memory://mem/shard.tar"
CAP = 64 * 1024  # max_member_bytes of the parser under test
MiB = 1024 * 1024


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def _writer_shard() -> bytes:
    store = MemoryStorage()
    with ShardWriter(store, maxcount=10) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "jpg": JPEG, "json": {"i": i}, "cls": i})
    return store.objects["shard-000000.tar"]


def _tarfile_shard(fmt: int, key: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers={"comment": "g"}) as tf:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for i in range(2):
            for field, data in (("jpg", JPEG), ("json", b'{"i": %d}' % i), ("cls", b"%d" % i)):
                info = tarfile.TarInfo(f"{key}{i}.{field}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SEEDS = [
    _writer_shard(),
    _tarfile_shard(tarfile.GNU_FORMAT, "dir/" + "long" * 30 + "/k"),  # 'L' headers
    _tarfile_shard(tarfile.PAX_FORMAT, "dir/ключ-" + "p" * 120 + "/k"),  # 'g' and 'x' headers
]
FIELDS = {"name": (0, 100), "size": (124, 12), "chksum": (148, 8), "type": (156, 1), "magic": (257, 8)}
_FIELD_CHOICES = ["name", "size", "size", "size", "chksum", "type", "type", "magic"]
_SPECIAL_SIZES = st.sampled_from(
    [
        b"77777777777\0",  # 8 GiB - 1
        b"\x80" + (1 << 80).to_bytes(11, "big"),  # base-256, far beyond any cap
        b"\xff" * 12,  # base-256, negative
        b"%011o\0" % (MAX_EXTENDED_HEADER_BYTES + 1),
        b"%011o\0" % (CAP + 1),
        b"99999999999\0",
        b" " * 11 + b"\0",
        b"0000000zz00\0",  # not octal
    ]
)
_sizes = st.one_of(
    _SPECIAL_SIZES,
    _SPECIAL_SIZES,
    st.integers(0, 8**11 - 1).map(lambda n: b"%011o\0" % n),
    st.binary(min_size=12, max_size=12),
)
_values = {
    "name": st.sampled_from(
        [b"/etc/x.jpg", b"../../x.jpg", b"k0.jpg", b"noext", b"\xff\xfe.jpg", b"__meta__", b""]
    ),
    "size": _sizes,
    "chksum": st.binary(min_size=8, max_size=8),
    "type": st.sampled_from([b"0", b"\0", b"1", b"2", b"3", b"5", b"7", b"L", b"x", b"g", b"K", b"S"]),
    "magic": st.sampled_from([b"ustar\x0000", b"ustar  \0", bytes(8)]) | st.binary(min_size=8, max_size=8),
}


def _at(draw: st.DrawFn, n: int) -> int:
    """An offset in ``range(n + 1)``, as often deep in the data as near its start."""
    block = draw(st.integers(0, n // 512))
    return min(n, block * 512 + draw(st.sampled_from([0, 1, 100, 156, 257, 511]) | st.integers(0, 511)))


def _rechecksum(data: bytearray) -> None:
    """Fix the checksum of every block that looks like a ustar header, so that mutated fields
    reach the parser instead of failing its checksum test."""
    for block in range(0, len(data) - 511, 512):
        if data[block + 257 : block + 262] == b"ustar":
            header = bytearray(data[block : block + 512])
            set_checksum(header)
            data[block : block + 512] = header


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "field", "field", "field"]))
        n = len(data)
        if op == "flip" and n:
            data[min(n - 1, _at(draw, n))] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[_at(draw, n) :]
        elif op == "insert":
            at = _at(draw, n)
            data[at:at] = draw(
                st.sampled_from([bytes(512), bytes(1024)]) | st.binary(min_size=1, max_size=600)
            )
        elif op == "delete" and n:
            at = _at(draw, n)
            del data[at : at + draw(st.sampled_from([512, 1024]) | st.integers(1, 1100))]
        elif op == "field" and n >= 512:
            headers = [b for b in range(0, n - 511, 512) if data[b + 257 : b + 262] == b"ustar"]
            block = draw(st.sampled_from(headers) if headers else st.just(0))
            name = draw(st.sampled_from(_FIELD_CHOICES))
            start, length = FIELDS[name]
            data[block + start : block + start + length] = draw(_values[name]).ljust(length, b"\0")[:length]
    if draw(st.sampled_from([True, True, True, False])):
        _rechecksum(data)
    return bytes(data)


def _with(seed: int, block: int, field: str, value: bytes) -> bytes:
    """``SEEDS[seed]`` with one header field of the header at ``block`` set, checksum fixed."""
    data = bytearray(SEEDS[seed])
    start, length = FIELDS[field]
    data[block + start : block + start + length] = value
    _rechecksum(data)
    return bytes(data)


# Mutations that every run tries, whatever hypothesis draws: sizes over every limit, at a regular
# member (seed 0), a GNU long name (seed 1, at 512) and a PAX header (seed 2, at 1536).
REGRESSIONS = [
    _with(0, 1024, "size", b"77777777777\0"),
    _with(0, 0, "size", b"\x80" + (1 << 80).to_bytes(11, "big")),
    _with(0, 0, "size", b"\xff" * 12),
    _with(0, 1024, "size", b"0000000zz00\0"),
    _with(0, 1024, "size", b"%011o\0" % (CAP + 1)),
    _with(1, 512, "size", b"%011o\0" % (MAX_EXTENDED_HEADER_BYTES + 1)),
    _with(1, 512, "size", b"%011o\0" % MAX_EXTENDED_HEADER_BYTES),  # reads into the tail
    _with(2, 1536, "size", b"77777777777\0"),
    _with(0, 1024, "type", b"2"),
    _with(0, 1024, "name", b"../../k.jpg".ljust(100, b"\0")),
    SEEDS[0][: len(SEEDS[0]) - 1024],  # no end-of-archive marker
    b"",
]


def regressions(test: Callable[..., Any]) -> Callable[..., Any]:
    for data in REGRESSIONS:
        test = example(data=data)(test)
    return test


class TailSource(BytesSource):
    """``data``, then 64 MiB of 0x01 bytes made up as they are read: a member that claims more
    than it holds would be read far past the shard if its size were not checked first."""

    def __init__(self, data: bytes, tail: int = 64 * MiB) -> None:
        super().__init__(data)
        self.end = len(data) + tail

    def read(self, n: int) -> bytes:
        head = super().read(n)
        more = min(n - len(head), self.end - self.pos)
        self.pos += more
        return head + b"\x01" * more

    def skip(self, n: int) -> int:
        done = min(n, self.end - self.pos)
        self.pos += done
        return done


class UnwindowedSource:
    """``data`` read through ``read``/``skip``/``tell`` only: every member takes the general path."""

    def __init__(self, data: bytes) -> None:
        self._inner = BytesSource(data)
        self.read, self.skip, self.tell = self._inner.read, self._inner.skip, self._inner.tell


class PiecesSource(BytesSource):
    """``data`` shown in windows of ``piece`` bytes at a time, like a shard arriving in pieces."""

    def __init__(self, data: bytes, piece: int) -> None:
        super().__init__(data)
        self.piece = piece

    def window(self) -> tuple[memoryview, int]:
        start = self.pos - self.pos % self.piece
        return memoryview(self.data)[start : start + self.piece], self.pos - start


def parse(source: Any) -> tuple[list[RawSample], ShardFormatError | None]:
    reader = SampleReader(TarReader(source, URL, max_member_bytes=CAP))
    samples: list[RawSample] = []
    try:
        while (sample := reader.next_sample()) is not None:
            samples.append(sample)
    except ShardFormatError as exc:  # anything else fails the test
        assert exc.url == URL and 0 <= exc.offset <= source.tell()
        return samples, exc
    return samples, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@regressions
@given(data=mutated())
def test_parser_raises_only_shard_format_errors_in_bounded_memory(data: bytes) -> None:
    samples, _ = parse(BytesSource(data))
    for s in samples:
        assert s.offset % 512 == 0 and s.offset < len(data)
        assert all(type(v) is bytes and len(v) <= CAP for v in s.fields.values())
        assert s.error is None or type(s.error) is str
    tracemalloc.start()
    try:
        parse(TailSource(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # one member under the cap, one extended header (read, sliced, decoded), the samples so far:
    # far below the 64 MiB a member claiming more than the cap would read from the tail
    assert peak < 4 * MAX_EXTENDED_HEADER_BYTES + 4 * CAP + 8 * len(data)


def _outcome(source: Any) -> tuple[list[tuple[str, int, dict[str, bytes], str | None]], Any]:
    samples, broken = parse(source)
    shown = [(s.key, s.offset, s.fields, s.error) for s in samples]
    return shown, None if broken is None else (broken.offset, broken.reason)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@regressions
@given(data=mutated())
def test_members_read_from_the_window_are_exactly_those_of_the_general_path(data: bytes) -> None:
    """The shortcut for plain members in the source's window changes nothing: the same samples,
    offsets, fields and errors as reading every header through ``read``, wherever the windows
    (pieces) end."""
    expected = _outcome(UnwindowedSource(data))
    assert _outcome(BytesSource(data)) == expected
    for piece in (512, 700, 1536, 4096):
        assert _outcome(PiecesSource(data, piece)) == expected, piece


SCHEMA = {"jpg": ImageDecoder("rgb8", max_pixels=64 * 64), "json": "json", "cls": "int"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@regressions
@given(data=mutated())
def test_dataset_counts_exactly_what_the_parser_reports(data: bytes) -> None:
    # the dataset reads with its own, larger cap: a member over CAP cannot fit in data this small,
    # so where the parser refuses it from its header, the dataset finds its data truncated
    assert len(data) < CAP
    samples, broken = parse(BytesSource(data))
    ds = StreamingWebDataset(MemoryStorage({"shard.tar": data}), schema=SCHEMA, on_error="skip")
    delivered = [s["__key__"] for s in ds]  # under "skip" only DataErrors are caught: others fail
    counts = ds.error_counts
    assert set(counts) <= {"shard_format", "sample", "missing_field", "decode"}
    assert counts.get("shard_format", 0) == (broken is not None)
    assert counts.get("sample", 0) == sum(s.error is not None for s in samples)
    good = [s.key for s in samples if s.error is None]
    assert len(delivered) + counts.get("missing_field", 0) + counts.get("decode", 0) == len(good)
    it = iter(good)
    assert all(k in it for k in delivered)  # delivered in the parser's order
