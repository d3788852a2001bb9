"""Grouping tar members into samples by webdataset's key convention."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds.samples import RawSample, SampleReader, is_meta, split_name
from streaming_wds.tar import TarReader
from tests.helpers import BytesSource

URL = "mem://b/shard.tar"


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [info.offset for info in tf]


def end_marker(data: bytes) -> int:
    """Offset of the end-of-archive marker: just after the last member's padded data."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return max((i.offset_data + i.size + (-i.size) % 512 for i in tf), default=0)


def reader_of(data: bytes, pos: int = 0) -> SampleReader:
    return SampleReader(TarReader(BytesSource(data, pos), URL))


def read_all(data: bytes, pos: int = 0) -> list[RawSample]:
    reader = reader_of(data, pos)
    out = []
    while (s := reader.next_sample()) is not None:
        out.append(s)
    assert reader.next_sample() is None
    return out


def as_tuples(samples: list[RawSample]) -> list[tuple[str, int, dict[str, bytes], str | None]]:
    return [(s.key, s.offset, s.fields, s.error) for s in samples]


def test_split_name() -> None:
    cases = {
        "a/k1.seg.png": ("a/k1", "seg.png"),
        "k1.txt": ("k1", "txt"),
        "k1.Seg.PNG": ("k1", "seg.png"),  # the field is lowercased
        "Dir/Key.JPG": ("Dir/Key", "jpg"),  # the key is not
        "a.b/c.d/k.tar.gz": ("a.b/c.d/k", "tar.gz"),  # dots in directories are part of the key
        "x/y/z/k.cls": ("x/y/z/k", "cls"),
        "k.": ("k", ""),
        "noext": None,
        ".hidden": None,
        "dir/.hidden": None,
        "dir/noext": None,
        "dir.d/noext": None,
        "dir/": None,
    }
    assert {name: split_name(name) for name in cases} == cases


def test_is_meta() -> None:
    names = ["__index__", "__meta__/info.json", "__index__.json", "a/__x__", "___", "k.txt", "__k.txt"]
    assert [n for n in names if is_meta(n)] == ["__index__", "__meta__/info.json"]


def test_groups_consecutive_members_by_key() -> None:
    data = make_tar(
        [
            ("a/k1.txt", b"t1"),
            ("a/k1.cls", b"1"),
            ("a/k1.seg.png", b"png1"),
            ("a/k2.txt", b"t2"),
            ("b/k1.TXT", b"t3"),
            ("b/k1.Json", b"{}"),
            ("k9.bin", b""),
        ]
    )
    off = header_offsets(data)
    assert as_tuples(read_all(data)) == [
        ("a/k1", off[0], {"txt": b"t1", "cls": b"1", "seg.png": b"png1"}, None),
        ("a/k2", off[3], {"txt": b"t2"}, None),
        ("b/k1", off[4], {"txt": b"t3", "json": b"{}"}, None),
        ("k9", off[6], {"bin": b""}, None),
    ]


def test_key_seen_again_after_another_gives_error_samples() -> None:
    data = make_tar(
        [
            ("k1.jpg", b"a"),
            ("k2.jpg", b"b"),
            ("k1.cls", b"1"),
            ("k1.txt", b"t"),
            ("k3.jpg", b"c"),
            ("k1.x", b""),
        ]
    )
    off = header_offsets(data)
    reason = "key 'k1' already appeared at byte 0 in this shard; members of a sample must be adjacent"
    assert as_tuples(read_all(data)) == [
        ("k1", 0, {"jpg": b"a"}, None),
        ("k2", off[1], {"jpg": b"b"}, None),
        ("k1", off[2], {"cls": b"1", "txt": b"t"}, reason),  # one error sample for the run
        ("k3", off[4], {"jpg": b"c"}, None),
        ("k1", off[5], {"x": b""}, reason),  # still named after the first sample
    ]


def test_same_basename_in_another_directory_is_another_key() -> None:
    data = make_tar([("a/k1.jpg", b"a"), ("b/k1.jpg", b"b"), ("k1.jpg", b"c")])
    assert [(s.key, s.error) for s in read_all(data)] == [("a/k1", None), ("b/k1", None), ("k1", None)]


def test_resumed_reader_knows_only_the_keys_from_where_it_resumed() -> None:
    data = make_tar([("k1.jpg", b"a"), ("k2.jpg", b"b"), ("k1.cls", b"1")])
    off = header_offsets(data)
    assert [(s.key, s.error) for s in read_all(data, off[1])] == [("k2", None), ("k1", None)]


def test_absolute_and_parent_paths_give_error_samples() -> None:
    data = make_tar(
        [
            ("k0.txt", b"0"),
            ("/etc/x.jpg", b"j"),
            ("/etc/x.cls", b"1"),  # the same key: one error sample
            ("../up/k.txt", b"u"),
            ("a/../k.txt", b"m"),
            ("a/..", b"not a dir"),  # no extension: that error comes first
            ("./k2.txt", b"2"),  # '.' components and dots inside names are fine
            ("a..b/k3..txt", b"3"),
        ]
    )
    off = header_offsets(data)
    assert as_tuples(read_all(data)) == [
        ("k0", off[0], {"txt": b"0"}, None),
        ("/etc/x", off[1], {"jpg": b"j", "cls": b"1"}, "member '/etc/x.jpg' has an absolute path"),
        ("../up/k", off[3], {"txt": b"u"}, "member '../up/k.txt' has a '..' component in its path"),
        ("a/../k", off[4], {"txt": b"m"}, "member 'a/../k.txt' has a '..' component in its path"),
        ("a/..", off[5], {}, "member 'a/..' has no extension, so it belongs to no sample"),
        ("./k2", off[6], {"txt": b"2"}, None),
        ("a..b/k3", off[7], {".txt": b"3"}, None),
    ]


def test_metadata_members_are_skipped() -> None:
    data = make_tar(
        [
            ("__index__", b"meta"),
            ("k1.txt", b"a"),
            ("__meta__/info.json", b"{}"),  # inside a sample: skipped, the sample goes on
            ("k1.cls", b"1"),
            ("__end__", b"meta"),
            ("k2.txt", b"b"),
        ]
    )
    off = header_offsets(data)
    assert as_tuples(read_all(data)) == [
        ("k1", off[1], {"txt": b"a", "cls": b"1"}, None),
        ("k2", off[5], {"txt": b"b"}, None),
    ]


def test_index_json_is_a_sample_like_in_webdataset() -> None:
    # webdataset skips ``__name__`` and ``__name__/...`` only; ``__index__.json`` has key ``__index__``
    data = make_tar([("__index__.json", b"[]"), ("k1.txt", b"a")])
    assert [(s.key, s.fields) for s in read_all(data)] == [
        ("__index__", {"json": b"[]"}),
        ("k1", {"txt": b"a"}),
    ]


def test_duplicate_field_sets_error() -> None:
    data = make_tar(
        [
            ("k1.txt", b"first"),
            ("k1.cls", b"1"),
            ("k1.TXT", b"second"),  # same field once lowercased
            ("k1.cls", b"2"),
            ("k2.txt", b"ok"),
        ]
    )
    off = header_offsets(data)
    samples = read_all(data)
    assert [(s.key, s.offset, sorted(s.fields), s.error) for s in samples] == [
        ("k1", off[0], ["cls", "txt"], "field 'txt' appears twice (member 'k1.TXT')"),
        ("k2", off[4], ["txt"], None),
    ]


def test_member_without_extension_gives_error_sample() -> None:
    data = make_tar(
        [("k1.txt", b"a"), ("README", b"r"), ("README.txt", b"b"), ("d/.hidden", b"h"), ("k2.txt", b"c")]
    )
    off = header_offsets(data)
    assert as_tuples(read_all(data)) == [
        ("k1", off[0], {"txt": b"a"}, None),
        ("README", off[1], {}, "member 'README' has no extension, so it belongs to no sample"),
        ("README", off[2], {"txt": b"b"}, None),  # not absorbed into the error sample
        ("d/.hidden", off[3], {}, "member 'd/.hidden' has no extension, so it belongs to no sample"),
        ("k2", off[4], {"txt": b"c"}, None),
    ]


def test_long_names_are_cut_in_errors() -> None:
    name = "d/" + "n" * 300
    (sample,) = read_all(make_tar([(name, b"x")]))
    assert (
        sample.error
        == f"member {name[:200]!r}... (302 characters) has no extension, so it belongs to no sample"
    )


def test_next_offset_is_the_header_of_the_next_samples_first_member() -> None:
    long_key = "dir/" + "k" * 150  # PAX headers: the sample starts at the extended header
    members = [
        ("__index__", b"m"),
        ("k1.txt", b"a" * 700),
        ("k1.cls", b"1"),
        (long_key + ".txt", b"b"),
        (long_key + ".cls", b"2"),
        ("k3.txt", b"c"),
    ]
    data = make_tar(members)
    off = header_offsets(data)
    reader = reader_of(data)
    assert reader.next_offset == 0
    seen = []
    while (s := reader.next_sample()) is not None:
        seen.append((s.key, s.offset, reader.next_offset))
    # after the last sample: past the end-of-archive block that ended it
    after = end_marker(data) + 512
    assert seen == [("k1", off[1], off[3]), (long_key, off[3], off[5]), ("k3", off[5], after)]
    assert off[3] % 512 == 0 and data[off[3] + 156 : off[3] + 157] == b"x"


def test_resume_from_next_offset_reads_the_rest() -> None:
    members = [(f"s{i}.{f}", f"{i}{f}".encode() * (i * 37)) for i in range(6) for f in ("cls", "txt")]
    data = make_tar(members)
    full = read_all(data)
    reader = reader_of(data)
    first = reader.take(2)
    assert [s.key for s in first] == ["s0", "s1"]
    rest = read_all(data, reader.next_offset)
    assert as_tuples(first + rest) == as_tuples(full)
    assert [s.key for s in full] == [f"s{i}" for i in range(6)]


def test_take() -> None:
    data = make_tar([(f"s{i}.txt", b"x") for i in range(5)])
    reader = reader_of(data)
    assert [s.key for s in reader.take(3)] == ["s0", "s1", "s2"]
    assert [s.key for s in reader.take(3)] == ["s3", "s4"]
    assert reader.take(3) == []


# -- property -----------------------------------------------------------------------------------

_word = st.text(alphabet="abcxyzABC019-", min_size=1, max_size=12)
_key = st.tuples(st.lists(st.text(alphabet="abc.-09", min_size=1, max_size=8), max_size=2), _word).map(
    lambda t: "/".join([d for d in t[0] if d not in (".", "..")] + [t[1]])
)
_field = st.lists(st.text(alphabet="abcdefgpnj", min_size=1, max_size=5), min_size=1, max_size=3).map(
    ".".join
)
_sample = st.tuples(
    _key,
    st.dictionaries(_field, st.binary(max_size=700), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)


@settings(max_examples=60, deadline=None)
@given(samples=st.lists(_sample, max_size=6, unique_by=lambda s: s[0]))
def test_roundtrip_property(samples: list) -> None:
    members = []
    first_member = []
    for key, fields, rnd in samples:
        first_member.append(len(members))
        for field, data in fields.items():
            shown = "".join(c.upper() if rnd.random() < 0.3 else c for c in field)
            members.append((f"{key}.{shown}", data))
    data = make_tar(members)
    off = header_offsets(data)
    starts = [off[i] for i in first_member]
    reader = reader_of(data)
    got, resume_points = [], []
    while (s := reader.next_sample()) is not None:
        got.append((s.key, s.offset, s.fields, s.error))
        resume_points.append(reader.next_offset)
    expected = [(key, start, fields, None) for (key, fields, _), start in zip(samples, starts, strict=True)]
    assert got == expected
    assert resume_points == [*starts[1:], end_marker(data) + 512][: len(samples)]
