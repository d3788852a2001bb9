"""The streaming tar reader, checked against archives written by Python's ``tarfile``."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streaming_wds.errors import ShardFormatError
from streaming_wds.tar import MAX_EXTENDED_HEADER_BYTES, Member, TarReader, _unsigned_checksum
from tests.badtars import END, header, long_name_member, pax_member, raw_member
from tests.helpers import BytesSource

URL = "mem://bucket/shard-000007.tar"
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    return info, data


def make_tar(
    entries: list[tuple[str, bytes] | tuple[tarfile.TarInfo, bytes | None]],
    fmt: int = tarfile.PAX_FORMAT,
    **kw: object,
) -> bytes:
    """A tar of ``(name, data)`` regular files and ``(TarInfo, data-or-None)`` entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for name, data in entries:
            if isinstance(name, tarfile.TarInfo):
                tf.addfile(name, io.BytesIO(data) if data is not None else None)
            else:
                info, payload = regular(name, data)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def tarfile_view(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, header offset, bytes) of every regular member, as ``tarfile`` reads them."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            if info.isreg():
                f = tf.extractfile(info)
                assert f is not None
                out.append((info.name, info.offset, f.read()))
    return out


def read_all(data: bytes, url: str = URL, max_member_bytes: int | None = None) -> list[Member]:
    reader = TarReader(BytesSource(data), url, max_member_bytes=max_member_bytes)
    out = []
    while (member := reader.next_member()) is not None:
        out.append(member)
    assert reader.ended
    assert reader.next_member() is None  # stays at the end
    return out


def read_until_error(data: bytes, **kw: int) -> tuple[list[Member], ShardFormatError]:
    """The members read before the error, and the error."""
    reader = TarReader(BytesSource(data), URL, **kw)
    out = []
    with pytest.raises(ShardFormatError) as info:
        while (member := reader.next_member()) is not None:
            out.append(member)
    return out, info.value


def triples(members: list[Member]) -> list[tuple[str, int, bytes]]:
    return [(m.name, m.offset, m.data) for m in members]


def expect_error(data: bytes, **kw: int) -> ShardFormatError:
    with pytest.raises(ShardFormatError) as info:
        read_all(data, **kw)
    assert info.value.url == URL
    assert str(info.value) == f"{URL} at byte {info.value.offset}: {info.value.reason}"
    return info.value


def set_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


# -- well-formed archives ------------------------------------------------------------------------

SIMPLE = [
    ("a/k1.txt", b"hello"),
    ("a/k1.json", b'{"x": 1}'),
    ("block.bin", bytes(range(256)) * 2),  # exactly one block: no padding
    ("empty.txt", b""),
    ("big.bin", b"\xff" * 1500),
]


def test_members_of_each_format() -> None:
    for fmt in FORMATS:
        data = make_tar(list(SIMPLE), FORMATS[fmt])
        members = read_all(data)
        assert [(m.name, m.data) for m in members] == SIMPLE, fmt
        # 512-byte headers, data padded to blocks
        assert [m.offset for m in members] == [0, 1024, 2048, 3072, 3584], fmt
        assert triples(members) == tarfile_view(data), fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_name(fmt: str) -> None:
    long_name = "dir-" + "d" * 60 + "/sub-" + "s" * 60 + "/key.seg.png"
    assert len(long_name) > 100
    data = make_tar([("short.txt", b"1"), (long_name, b"payload"), ("after.txt", b"2")], FORMATS[fmt])
    second_header = data[1024:1536]
    if fmt == "gnu":
        assert second_header[156:157] == b"L"
        assert second_header[:13] == b"././@LongLink"
    elif fmt == "pax":
        assert second_header[156:157] == b"x"
    else:  # ustar: split into the prefix and name fields
        assert second_header[156:157] == b"0"
        assert second_header[345:500].rstrip(b"\0") == b"dir-" + b"d" * 60
    members = read_all(data)
    assert [(m.name, m.data) for m in members] == [
        ("short.txt", b"1"),
        (long_name, b"payload"),
        ("after.txt", b"2"),
    ]
    # the long-named member starts at its first (extended) header; the next one is not confused
    assert members[1].offset == 1024
    assert triples(members) == tarfile_view(data)


def test_very_long_name() -> None:
    name = "/".join(["x" * 200] * 3) + ".txt"  # more than 255 bytes, no ustar split possible
    for fmt in ("gnu", "pax"):
        data = make_tar([(name, b"v"), ("b.txt", b"w")], FORMATS[fmt])
        assert triples(read_all(data)) == tarfile_view(data), fmt
        assert [m.name for m in read_all(data)] == [name, "b.txt"], fmt


def test_name_of_exactly_100_bytes_without_terminator() -> None:
    name = "n" * 96 + ".txt"
    data = make_tar([(name, b"v")], tarfile.USTAR_FORMAT)
    assert data[99:100] == b"t"  # the name field is full
    assert [(m.name, m.offset, m.data) for m in read_all(data)] == [(name, 0, b"v")]


def test_non_ascii_name_via_pax() -> None:
    name = "données/ключ-鍵.txt"
    data = make_tar([("a.txt", b"0"), (name, "значение".encode())], tarfile.PAX_FORMAT)
    assert b"path=" + name.encode() in data
    members = read_all(data)
    assert [(m.name, m.offset, m.data) for m in members] == [
        ("a.txt", 0, b"0"),
        (name, 1024, "значение".encode()),
    ]


def test_pax_global_header_is_ignored() -> None:
    data = make_tar([("a.txt", b"0"), ("b.txt", b"1")], tarfile.PAX_FORMAT, pax_headers={"comment": "hi"})
    assert data[156:157] == b"g"
    assert [(m.name, m.data) for m in read_all(data)] == [("a.txt", b"0"), ("b.txt", b"1")]
    assert read_all(data)[1].offset == tarfile_view(data)[1][1]


def test_pax_global_header_not_counted_as_first_members_header() -> None:
    data = make_tar([("a.txt", b"0")], tarfile.PAX_FORMAT, pax_headers={"comment": "hi"})
    assert [m.offset for m in read_all(data)] == [m[1] for m in tarfile_view(data)]


def test_pax_size_record_overrides_header_size() -> None:
    info, payload = regular("a.txt", b"0123456789")
    info.pax_headers = {"size": "10"}
    data = bytearray(make_tar([(info, payload), ("b.txt", b"x")], tarfile.PAX_FORMAT))
    assert data[156:157] == b"x"
    pax_len = 512 + 512
    header = bytearray(data[pax_len : pax_len + 512])
    header[124:136] = b"00000000000\0"  # the ustar size field says 0: the PAX record wins
    set_checksum(header)
    data[pax_len : pax_len + 512] = header
    assert [(m.name, m.data) for m in read_all(bytes(data))] == [("a.txt", b"0123456789"), ("b.txt", b"x")]


def test_invalid_pax_size_record() -> None:
    info, payload = regular("a.txt", b"0123")
    info.pax_headers = {"size": "4x"}
    err = expect_error(make_tar([(info, payload)], tarfile.PAX_FORMAT))
    assert (err.offset, err.reason) == (1024, "invalid size in tar or PAX header")


def test_v7_directory_is_skipped() -> None:
    info = tarfile.TarInfo("olddir/")
    info.type = tarfile.AREGTYPE  # how V7 tar marks a directory; tarfile reads it as one
    data = make_tar([(info, None), ("olddir/k.txt", b"1")], tarfile.USTAR_FORMAT)
    assert [(m.name, m.offset) for m in read_all(data)] == [("olddir/k.txt", 512)]


def directory(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def test_directories_are_skipped() -> None:
    long_dir = "long-" + "d" * 120  # an extended header in gnu and pax, a prefix split impossible
    for fmt in FORMATS:
        entries: list = [directory("top"), ("top/a.txt", b"A"), directory("top/sub"), ("top/sub/b.txt", b"B")]
        expected = [("top/a.txt", b"A"), ("top/sub/b.txt", b"B")]
        if fmt != "ustar":
            entries += [directory(long_dir), ("c.txt", b"C")]
            expected += [("c.txt", b"C")]
        data = make_tar(entries, FORMATS[fmt])
        members = read_all(data)
        assert [(m.name, m.data) for m in members] == expected, fmt
        assert triples(members) == tarfile_view(data), fmt


NO_END_MARKER = "truncated: the data ends with no end-of-archive marker"


def test_end_of_data_at_member_boundary_without_end_blocks_is_truncation() -> None:
    data = make_tar([("a.txt", b"x" * 10), ("b.txt", b"y" * 600)])
    end = 512 + 512 + 512 + 1024  # two members, no end-of-archive blocks
    assert data[end : end + 1024] == bytes(1024)
    members, err = read_until_error(data[:end])
    assert [(m.name, m.offset, m.data) for m in members] == [
        ("a.txt", 0, b"x" * 10),
        ("b.txt", 1024, b"y" * 600),
    ]
    assert (err.url, err.offset, err.reason) == (URL, end, NO_END_MARKER)
    assert str(err) == f"{URL} at byte {end}: {NO_END_MARKER}"
    # one zero block is enough, as for tarfile: nothing is lost when only the second is cut off
    assert [m.name for m in read_all(data[: end + 512])] == ["a.txt", "b.txt"]


def test_empty_object_is_not_an_archive() -> None:
    err = expect_error(b"")
    assert (err.offset, err.reason) == (0, "empty object, not a tar archive")


def test_resumed_read_at_the_end_of_the_data_is_truncation() -> None:
    data = make_tar([("a.txt", b"1")])[:1024]  # one member, no end-of-archive blocks
    reader = TarReader(BytesSource(data, 1024), URL)  # resumed after the member
    with pytest.raises(ShardFormatError) as info:
        reader.next_member()
    assert (info.value.offset, info.value.reason) == (1024, NO_END_MARKER)


def test_lone_end_block() -> None:
    assert read_all(bytes(512)) == []
    reader = TarReader(BytesSource(bytes(10240)), URL)
    assert reader.next_member() is None
    assert reader.source.tell() == 512  # stops at the first zero block


def test_reader_stops_between_members() -> None:
    data = make_tar([("a.txt", b"1"), ("b.txt", b"22")])
    source = BytesSource(data)
    reader = TarReader(source, URL)
    first = reader.next_member()
    assert first is not None and (first.name, first.offset, first.data) == ("a.txt", 0, b"1")
    assert source.tell() == 1024  # data and padding consumed, next header not touched
    second = reader.next_member()
    assert second is not None and (second.name, second.offset) == ("b.txt", 1024)
    assert source.tell() == 2048


# -- refused and corrupt archives ----------------------------------------------------------------


REFUSED = [
    ("ustar", tarfile.SYMTYPE, "symbolic link"),
    ("gnu", tarfile.SYMTYPE, "symbolic link"),
    ("pax", tarfile.SYMTYPE, "symbolic link"),
    ("ustar", tarfile.LNKTYPE, "hard link"),
    ("pax", tarfile.LNKTYPE, "hard link"),
    ("ustar", tarfile.CHRTYPE, "character device"),
    ("ustar", tarfile.BLKTYPE, "block device"),
    ("ustar", tarfile.FIFOTYPE, "FIFO"),
]


def test_links_and_devices_are_refused() -> None:
    for fmt, kind, what in REFUSED:
        info = tarfile.TarInfo("k1.link")
        info.type = kind
        info.linkname = "a.txt" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        data = make_tar([("a.txt", b"x" * 700), (info, None), ("b.txt", b"y")], FORMATS[fmt])
        reader = TarReader(BytesSource(data), URL)
        first = reader.next_member()
        assert first is not None and first.name == "a.txt"
        with pytest.raises(ShardFormatError) as exc:
            reader.next_member()
        assert (exc.value.url, exc.value.offset) == (URL, 1536)
        assert str(exc.value) == f"{URL} at byte 1536: unsupported tar member type: {what}", fmt


def test_unknown_member_type_is_refused() -> None:
    data = bytearray(make_tar([("a.txt", b"1"), ("odd.bin", b"2")], tarfile.USTAR_FORMAT))
    header = bytearray(data[1024:1536])
    header[156:157] = b"S"  # GNU sparse file
    set_checksum(header)
    data[1024:1536] = header
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (1024, "unsupported tar member type b'S' for 'odd.bin'")


ENTRIES = [("a.txt", b"x" * 10), ("b.txt", b"y" * 1000), ("c.txt", b"z")]  # headers at 0, 1024, 2560


def test_truncated_inside_a_header() -> None:
    data = make_tar(ENTRIES, tarfile.USTAR_FORMAT)
    err = expect_error(data[: 1024 + 100])
    assert (err.offset, err.reason) == (1024, "truncated tar header (100 of 512 bytes)")


def test_truncated_inside_data() -> None:
    data = make_tar(ENTRIES, tarfile.USTAR_FORMAT)
    err = expect_error(data[: 1024 + 512 + 300])
    assert (err.offset, err.reason) == (
        1024,
        "truncated data of member 'b.txt': expected 1000 bytes, got 300",
    )


def test_truncated_inside_padding() -> None:
    data = make_tar(ENTRIES, tarfile.USTAR_FORMAT)
    err = expect_error(data[: 1024 + 512 + 1000 + 10])
    assert (err.offset, err.reason) == (1024, "truncated padding of member 'b.txt'")


def test_truncated_right_after_data_before_padding() -> None:
    data = make_tar(ENTRIES, tarfile.USTAR_FORMAT)
    err = expect_error(data[: 1024 + 512 + 1000])
    assert (err.offset, err.reason) == (1024, "truncated padding of member 'b.txt'")


def test_truncated_in_third_header_keeps_earlier_members() -> None:
    data = make_tar(ENTRIES, tarfile.USTAR_FORMAT)
    reader = TarReader(BytesSource(data[: 2560 + 1]), URL)
    assert [reader.next_member().name, reader.next_member().name] == ["a.txt", "b.txt"]  # type: ignore[union-attr]
    with pytest.raises(ShardFormatError) as exc:
        reader.next_member()
    assert (exc.value.offset, exc.value.reason) == (2560, "truncated tar header (1 of 512 bytes)")


def test_truncated_inside_gnu_long_name() -> None:
    data = make_tar([("a.txt", b"1"), ("n" * 300 + ".txt", b"2")], tarfile.GNU_FORMAT)
    assert data[1024 + 156 : 1024 + 157] == b"L"
    err = expect_error(data[: 1024 + 512 + 100])
    assert (err.offset, err.reason) == (1024, "truncated GNU long name: expected 512 bytes, got 100")


def test_truncated_inside_pax_header() -> None:
    data = make_tar([("a.txt", b"1"), ("n" * 300 + ".txt", b"2")], tarfile.PAX_FORMAT)
    assert data[1024 + 156 : 1024 + 157] == b"x"
    err = expect_error(data[: 1024 + 512 + 100])
    assert (err.offset, err.reason) == (1024, "truncated PAX header: expected 512 bytes, got 100")


def test_end_of_data_after_an_extended_header() -> None:
    data = make_tar([("a.txt", b"1"), ("n" * 300 + ".txt", b"2")], tarfile.PAX_FORMAT)
    err = expect_error(data[: 1024 + 1024])  # PAX header complete, its member's header missing
    assert (err.offset, err.reason) == (2048, "truncated tar header (0 of 512 bytes)")


def test_end_marker_after_an_extended_header() -> None:
    data = make_tar([("a.txt", b"1"), ("n" * 300 + ".txt", b"2")], tarfile.GNU_FORMAT)
    cut = data[: 1024 + 1024] + bytes(1024)
    err = expect_error(cut)
    assert (err.offset, err.reason) == (2048, "end-of-archive marker after an extended header")


def test_corrupt_header_checksum() -> None:
    data = bytearray(make_tar(ENTRIES, tarfile.PAX_FORMAT))
    data[1024] ^= 0x01  # 'b.txt' -> 'c.txt': the stored checksum no longer matches
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (1024, "tar header checksum mismatch (corrupt or not a tar file)")


def test_wrong_checksum_value() -> None:
    data = bytearray(make_tar(ENTRIES, tarfile.USTAR_FORMAT))
    stored = int(data[148:154], 8)
    data[148:156] = b"%06o\0 " % (stored + 1)
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (0, "tar header checksum mismatch (corrupt or not a tar file)")


def test_checksum_of_high_bytes_unsigned_and_signed() -> None:
    """A name of bytes over 127: the unsigned sum (POSIX) and the signed one (old Sun tar) are
    both accepted; anything else is not."""
    name = "\u00e9" * 40 + ".txt"  # 80 bytes of UTF-8, all over 127
    data = bytearray(make_tar([(name, b"x")], tarfile.USTAR_FORMAT))
    header = data[:512]
    unsigned = sum(header[:148]) + sum(header[156:]) + 8 * 32
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    assert int(header[148:154], 8) == unsigned
    assert [(m.name, m.data) for m in read_all(bytes(data))] == [(name, b"x")]
    data[148:156] = b"%06o\0 " % signed
    assert [(m.name, m.data) for m in read_all(bytes(data))] == [(name, b"x")]
    data[148:156] = b"%06o\0 " % (signed - 1)
    assert expect_error(bytes(data)).reason == "tar header checksum mismatch (corrupt or not a tar file)"


@pytest.mark.parametrize(
    "field",
    [
        b"00000000005\0",
        b"0000000005 \0",
        b"000000005\0 \0",
        b"5\0" + b"\0" * 10,
        b"   5        ",
        b"5\0junk\0\0\0\0\0\0",
    ],
)
def test_size_field_spellings(field: bytes) -> None:
    """Octal digits ended by NULs or spaces, or padded with spaces; text after the first NUL is
    ignored (as ``tarfile`` does)."""
    data = bytearray(make_tar([("k.txt", b"12345")], tarfile.USTAR_FORMAT))
    header = bytearray(data[:512])
    assert len(field) == 12
    header[124:136] = field
    set_checksum(header)
    data[:512] = header
    assert [(m.name, m.data) for m in read_all(bytes(data))] == [("k.txt", b"12345")]


@given(st.binary(min_size=512, max_size=512))
def test_unsigned_checksum_sums_the_header_with_spaces_for_its_checksum_field(header: bytes) -> None:
    assert _unsigned_checksum(header) == sum(header[:148]) + 8 * 32 + sum(header[156:])


def test_plain_members_in_the_window_are_taken_without_a_read_call() -> None:
    """The common member (a plain ustar file) is read from the source's window in one go; only
    the end-of-archive marker, and members that are not plain, go through ``read``."""
    data = make_tar([("a.txt", b"x" * 700), ("a.json", b"{}")], tarfile.USTAR_FORMAT)
    source = RecordingSource(data)  # defined below, with the size-limit tests
    reader = TarReader(source, URL)
    assert [(m.name, m.offset, m.data) for m in iter(reader.next_member, None)] == [
        ("a.txt", 0, b"x" * 700),
        ("a.json", 512 + 1024, b"{}"),
    ]
    assert source.asked == [512]  # the end marker
    pax = make_tar([("b.txt", b"y")], tarfile.PAX_FORMAT, pax_headers={"comment": "c"})
    source = RecordingSource(pax)
    assert [(m.name, m.data) for m in iter(TarReader(source, URL).next_member, None)] == [("b.txt", b"y")]
    assert len(source.asked) > 1


def test_not_a_tar_file() -> None:
    err = expect_error(b"this is a text file, not a tar archive\n" * 40)
    assert (err.offset, err.reason) == (0, "tar header checksum mismatch (corrupt or not a tar file)")


def test_invalid_size_field() -> None:
    data = bytearray(make_tar(ENTRIES, tarfile.USTAR_FORMAT))
    header = bytearray(data[1024:1536])
    header[124:136] = b"0000000zz00\0"
    set_checksum(header)
    data[1024:1536] = header
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (1024, "invalid size in tar or PAX header")


def test_malformed_pax_record() -> None:
    data = bytearray(make_tar([("n" * 300 + ".txt", b"2")], tarfile.PAX_FORMAT))
    assert data[512:515].isdigit()
    data[512:515] = b"abc"  # the record length is not a number
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (0, "malformed PAX header record")


def test_pax_record_length_past_the_data() -> None:
    data = bytearray(make_tar([("n" * 300 + ".txt", b"2")], tarfile.PAX_FORMAT))
    space = data.index(b" ", 512)
    data[512:space] = b"9" * (space - 512)  # a length far beyond the header's data
    err = expect_error(bytes(data))
    assert (err.offset, err.reason) == (0, "malformed PAX header record length")


def test_non_utf8_ustar_name() -> None:
    data = make_tar([("ok.txt", b"1"), ("caf\xe9.txt", b"2")], tarfile.USTAR_FORMAT, encoding="latin-1")
    assert b"caf\xe9.txt" in data
    err = expect_error(data)
    assert (err.offset, err.reason) == (1024, "member name is not UTF-8: b'caf\\xe9.txt'")


def test_non_utf8_gnu_long_name() -> None:
    name = "l" * 120 + "\xe9.txt"
    data = make_tar([(name, b"1")], tarfile.GNU_FORMAT, encoding="latin-1")
    err = expect_error(data)
    assert err.offset == 0
    assert err.reason == f"member name is not UTF-8: {name.encode('latin-1')!r}"


def test_non_utf8_pax_path() -> None:
    # surrogateescape'd bytes make tarfile write hdrcharset=BINARY and the raw bytes
    data = make_tar([("caf\udce9.txt", b"1")], tarfile.PAX_FORMAT)
    assert b"hdrcharset=BINARY" in data
    err = expect_error(data)
    # reported at the member's own header, after the PAX header (0) and its data (512)
    assert (err.offset, err.reason) == (1024, "member name is not UTF-8: b'caf\\xe9.txt'")


def test_long_names_are_cut_in_messages() -> None:
    raw = b"\xe9" * 300 + b".txt"
    err = expect_error(long_name_member(raw, b"1") + END)
    assert (err.offset, err.reason) == (0, f"member name is not UTF-8: {raw[:200]!r}... (304 bytes)")
    name = "n" * 250 + ".jpg"
    err = expect_error(long_name_member(name, b"12345") + END, max_member_bytes=4)
    assert err.reason == f"member {name[:200]!r}... (254 characters) is 5 bytes, over max_member_bytes=4"


# -- size limits: checked from the header, before any data is read -------------------------------


class RecordingSource(BytesSource):
    """A :class:`BytesSource` that records the size of every read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, n: int) -> bytes:
        self.asked.append(n)
        return super().read(n)


def test_member_over_max_member_bytes() -> None:
    data = tar_of_two(b"y" * 1000)
    members, err = read_until_error(data, max_member_bytes=999)
    assert [m.name for m in members] == ["k.txt"]
    assert (err.url, err.offset) == (URL, 1024)
    assert str(err) == f"{URL} at byte 1024: member 'k.jpg' is 1000 bytes, over max_member_bytes=999"
    assert [(m.name, len(m.data)) for m in read_all(data, max_member_bytes=1000)] == [
        ("k.txt", 100),
        ("k.jpg", 1000),
    ]


def tar_of_two(second: bytes) -> bytes:
    return raw_member("k.txt", b"x" * 100) + raw_member("k.jpg", second) + END


def test_member_over_the_cap_is_refused_before_its_data_is_read() -> None:
    huge = header("k.jpg", 300_000_000)  # the header alone: the data is not there at all
    source = RecordingSource(huge)
    reader = TarReader(source, URL, max_member_bytes=256 * 1024 * 1024)
    with pytest.raises(ShardFormatError) as info:
        reader.next_member()
    assert (info.value.offset, info.value.reason) == (
        0,
        "member 'k.jpg' is 300000000 bytes, over max_member_bytes=268435456",
    )
    assert (source.asked, source.tell()) == ([512], 512)  # only the header was read
    # without a cap the reader asks for the data, which is missing
    err = expect_error(huge)
    assert (err.offset, err.reason) == (
        0,
        "truncated data of member 'k.jpg': expected 300000000 bytes, got 0",
    )


def test_cap_applies_to_base256_and_pax_sizes() -> None:
    tib = header("k.bin", 0, size_field=b"\x80" + (1 << 40).to_bytes(11, "big"))
    err = expect_error(tib + END, max_member_bytes=1024)
    assert (err.offset, err.reason) == (
        0,
        "member 'k.bin' is 1099511627776 bytes, over max_member_bytes=1024",
    )
    pax = pax_member({"path": "dir/k.bin"}, "k.bin", b"z" * 2000) + END
    assert [(m.name, m.offset, len(m.data)) for m in read_all(pax, max_member_bytes=2000)] == [
        ("dir/k.bin", 0, 2000)
    ]
    err = expect_error(pax, max_member_bytes=1999)
    # reported at the member's own header, after the PAX header and its data
    assert (err.offset, err.reason) == (1024, "member 'dir/k.bin' is 2000 bytes, over max_member_bytes=1999")


@pytest.mark.parametrize(
    ("kind", "what"), [(b"L", "GNU long name"), (b"x", "PAX header"), (b"g", "PAX global header")]
)
def test_extended_header_over_the_limit(kind: bytes, what: str) -> None:
    size = MAX_EXTENDED_HEADER_BYTES + 1
    source = RecordingSource(raw_member("k.txt", b"1") + header("././@LongLink", size, kind))
    reader = TarReader(source, URL)
    assert reader.next_member() is not None
    with pytest.raises(ShardFormatError) as info:
        reader.next_member()
    assert (info.value.offset, info.value.reason) == (
        1024,
        f"{what} of 1048577 bytes is over the limit of 1048576",
    )
    assert (max(source.asked), source.tell()) == (512, 1536)


def test_extended_header_at_the_limit() -> None:
    name = "d/" + "n" * (MAX_EXTENDED_HEADER_BYTES - 7) + ".txt"
    assert len(name) + 1 == MAX_EXTENDED_HEADER_BYTES  # NUL-terminated, as GNU tar writes it
    data = long_name_member(name, b"v") + END
    assert [(m.name, m.offset, m.data) for m in read_all(data)] == [(name, 0, b"v")]


def test_pax_record_without_newline() -> None:
    body = b"13 path=k.tx!"  # the length covers the record, whose last byte is not a newline
    data = raw_member("././@PaxHeader", body, b"x") + raw_member("k.txt", b"1") + END
    err = expect_error(data)
    assert (err.offset, err.reason) == (0, "malformed PAX header record length")


# -- property: whatever tarfile writes reads back identically -----------------------------------

_segment = st.text(
    alphabet=st.characters(categories=("Ll", "Lu", "Nd"), include_characters="-_.é鍵ю", max_codepoint=0x9FFF),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", ".."))
_name = st.lists(_segment, min_size=1, max_size=5).map("/".join)
_entries = st.lists(st.tuples(_name, st.binary(max_size=1300)), max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(entries=_entries, fmt=st.sampled_from(sorted(FORMATS)), end_blocks=st.booleans())
def test_roundtrip_property(entries: list[tuple[str, bytes]], fmt: str, end_blocks: bool) -> None:
    try:
        data = make_tar(list(entries), FORMATS[fmt])
    except ValueError:  # ustar cannot hold this name
        assume(False)
    expected = tarfile_view(data)
    assert [(name, payload) for name, _, payload in expected] == entries
    if end_blocks:
        assert triples(read_all(data)) == expected
        return
    end = members_end(data)  # cut right after the last member's padding: no end-of-archive blocks
    members, err = read_until_error(data[:end])
    assert triples(members) == expected  # every member, then the missing marker is reported
    assert (err.offset, err.reason) == (end, "empty object, not a tar archive" if end == 0 else NO_END_MARKER)


def members_end(data: bytes) -> int:
    """Offset just after the last member's padded data, from ``tarfile``."""
    end = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            end = info.offset_data + info.size + (-info.size) % 512
    return end
