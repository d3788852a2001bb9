"""The dataset index: format, build_index, the dataset's use of it (no listing, len, checksums)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import webdataset as wds

from streaming_wds import (
    MemoryStorage,
    NoShardsError,
    ShardFormatError,
    ShardWriter,
    StorageError,
    StreamingWebDataset,
    StreamOptions,
)
from streaming_wds.index import (
    INDEX_NAME,
    DatasetIndex,
    ShardEntry,
    build_index,
    describe_shard,
    read_index,
    write_index,
)

from ..helpers import all_keys, memory_dataset, sample

SHA_A = "a" * 64
SHA_B = "b" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys(ds: StreamingWebDataset) -> list[str]:
    return [s["__key__"] for s in ds]


def uneven_dataset(sizes: list[int], index: bool = True) -> tuple[MemoryStorage, list[list[str]]]:
    """Shards holding ``sizes[i]`` samples; returns the store and each shard's keys."""
    store = MemoryStorage()
    per_shard: list[list[str]] = []
    n = 0
    with ShardWriter(store, index=index) as w:
        for size in sizes:
            per_shard.append([])
            for _ in range(size):
                w.write(sample(n))
                per_shard[-1].append(f"s{n:06d}")
                n += 1
            w.flush()
    assert w.written == [f"shard-{i:06d}.tar" for i in range(len(sizes))]
    return store, per_shard


def no_listing(ds: StreamingWebDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(suffix: str) -> Any:
        raise AssertionError(f"listed {suffix!r} although there is an index")

    monkeypatch.setattr(ds.storage, "list", refuse)


# -- the format -------------------------------------------------------------------------------


def test_index_json_round_trip() -> None:
    index = DatasetIndex.of(
        [
            ShardEntry(name="b.tar", samples=3, size=30, sha256=SHA_B),
            ShardEntry(name="a.tar", samples=2, size=20, sha256=SHA_A),
        ]
    )
    assert [s.name for s in index.shards] == ["a.tar", "b.tar"]  # sorted by name
    assert index.total_samples == 5
    store = MemoryStorage()
    write_index(store, index)
    assert list(store.objects) == [INDEX_NAME]
    assert msgspec.json.decode(store.objects[INDEX_NAME]) == {
        "format": "streaming_wds.index",
        "version": 1,
        "total_samples": 5,
        "shards": [
            {"name": "a.tar", "samples": 2, "size": 20, "sha256": SHA_A},
            {"name": "b.tar", "samples": 3, "size": 30, "sha256": SHA_B},
        ],
    }
    assert read_index(store) == index


def test_of_and_merged_keep_the_last_entry_of_a_name() -> None:
    old = DatasetIndex.of([ShardEntry("a.tar", 1, 10, SHA_A), ShardEntry("c.tar", 4, 40, SHA_A)])
    new = old.merged([ShardEntry("b.tar", 2, 20, SHA_B), ShardEntry("a.tar", 7, 70, SHA_B)])
    assert new.shards == [
        ShardEntry("a.tar", 7, 70, SHA_B),
        ShardEntry("b.tar", 2, 20, SHA_B),
        ShardEntry("c.tar", 4, 40, SHA_A),
    ]
    assert new.total_samples == 13
    assert old.total_samples == 5  # frozen: merged returns a new index


def test_infos_carry_counts_and_hashes() -> None:
    store = MemoryStorage(name="x")
    index = DatasetIndex.of([ShardEntry("a.tar", 2, 20, SHA_A)])
    (info,) = index.infos(store)
    assert (info.name, info.size, info.url, info.samples, info.sha256, info.etag) == (
        "a.tar",
        20,
        "memory://x/a.tar",
        2,
        SHA_A,
        None,
    )


def test_read_index_without_an_index_is_none(tmp_path: Path) -> None:
    assert read_index(MemoryStorage({"shard-000000.tar": b""})) is None
    assert read_index(StreamingWebDataset(tmp_path).storage) is None


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[]", "Expected `object`, got `array`"),
        (b'{"shards": "a.tar"}', "Object missing required field `format`"),
        (
            b'{"format": "streaming_wds.index", "version": 1, "shards": "a.tar"}',
            "Expected `array`, got `str` - at `$.shards`",
        ),
        (
            b'{"format": "streaming_wds.index", "version": 1, "shards": [{"name": "a.tar"}]}',
            "Object missing required field `samples` - at `$.shards[0]`",
        ),
    ],
)
def test_an_invalid_index_is_a_storage_error(raw: bytes, detail: str) -> None:
    store = MemoryStorage({INDEX_NAME: raw}, name="bad")
    with pytest.raises(StorageError) as exc:
        read_index(store)
    assert str(exc.value) == f"memory://bad/index.json is not a valid dataset index: {detail}"


@pytest.mark.parametrize("raw", [b"not json", b'{"format": "streaming_wds.index", "vers', b"\xff\xfe"])
def test_malformed_json_index_is_a_storage_error(raw: bytes) -> None:
    store = MemoryStorage({INDEX_NAME: raw}, name="bad")
    with pytest.raises(StorageError, match=r"^memory://bad/index\.json is not a valid dataset index: "):
        read_index(store)


@pytest.mark.parametrize("raw", [b"{}", b'{"shards": []}', b'{"total_samples": 0}'])
def test_an_index_without_format_and_version_is_rejected(raw: bytes) -> None:
    store = MemoryStorage({INDEX_NAME: raw}, name="bad")
    with pytest.raises(StorageError, match=r"^memory://bad/index\.json is not a valid dataset index"):
        read_index(store)


def test_an_unrelated_index_json_is_an_error_not_an_empty_dataset() -> None:
    store = memory_dataset(4, 2)
    store.objects[INDEX_NAME] = b"{}"
    ds = StreamingWebDataset(store)
    with pytest.raises(StorageError, match=r"^memory://mem/index\.json is not a valid dataset index"):
        _ = ds.shards


@pytest.mark.parametrize(
    ("fmt", "version"), [("streaming_wds.index", 2), ("streaming_wds.index", 0), ("other.index", 1)]
)
def test_an_unsupported_format_or_version_is_a_storage_error(fmt: str, version: int) -> None:
    raw = msgspec.json.encode({"format": fmt, "version": version, "total_samples": 0, "shards": []})
    store = MemoryStorage({INDEX_NAME: raw}, name="bad")
    with pytest.raises(StorageError) as exc:
        read_index(store)
    assert str(exc.value) == (
        f"memory://bad/index.json: index format {fmt!r} version {version} is not supported "
        "(this version reads 'streaming_wds.index' version 1)"
    )


def test_a_future_index_of_another_shape_names_the_version() -> None:
    raw = msgspec.json.encode(
        {"format": "streaming_wds.index", "version": 2, "shards": [{"path": "a.tar", "n": 3}]}
    )
    store = MemoryStorage({INDEX_NAME: raw}, name="bad")
    with pytest.raises(StorageError, match=r"version 2 is not supported"):
        read_index(store)


def test_a_dataset_with_an_invalid_index_fails_instead_of_listing() -> None:
    store = memory_dataset(4, 2)
    store.objects[INDEX_NAME] = b'{"format": "streaming_wds.index", "version": 9}'
    ds = StreamingWebDataset(store)
    with pytest.raises(StorageError, match=r"^memory://mem/index\.json: index format .* version 9 "):
        list(ds)


# -- build_index ------------------------------------------------------------------------------


def write_wds_shards(root: Path, counts: list[int]) -> tuple[list[str], list[str]]:
    """Shards written by webdataset's TarWriter; keys live in sub-directories."""
    root.mkdir(parents=True, exist_ok=True)
    names, written = [], []
    n = 0
    for s, count in enumerate(counts):
        name = f"part-{s:03d}.tar"
        with wds.TarWriter(str(root / name)) as tw:
            for _ in range(count):
                key = f"dir{n % 3}/sub/k{n:04d}"
                tw.write({"__key__": key, "txt": f"text {n}", "cls": n, "json": {"n": n}})
                written.append(key)
                n += 1
        names.append(name)
    return names, written


def test_build_index_of_webdataset_shards_and_reading_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names, written = write_wds_shards(tmp_path, [3, 5, 1, 4])
    (tmp_path / "notes.txt").write_text("not a shard")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "x.tar").write_bytes(b"ignored: not directly under the location")

    index = build_index(tmp_path)

    expected = DatasetIndex(
        total_samples=13,
        shards=[
            ShardEntry(
                name=n,
                samples=c,
                size=(tmp_path / n).stat().st_size,
                sha256=sha((tmp_path / n).read_bytes()),
                crc32=zlib.crc32((tmp_path / n).read_bytes()),
            )
            for n, c in zip(names, [3, 5, 1, 4], strict=True)
        ],
    )
    assert index == expected
    assert read_index(StreamingWebDataset(tmp_path).storage) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, INDEX_NAME, "nested", "notes.txt"])

    ds = StreamingWebDataset(tmp_path)
    no_listing(ds, monkeypatch)
    assert ds.num_samples == 13
    assert ds.index == expected
    assert len(ds) == 13
    got = list(ds)
    assert [s["__key__"] for s in got] == written
    assert got[4] == {
        "__key__": "dir1/sub/k0004",
        "__url__": str(tmp_path / "part-001.tar"),
        "txt": b"text 4",
        "cls": b"4",
        "json": b'{"n": 4}',
    }
    assert [s.url for s in ds.shards] == [str(tmp_path / n) for n in names]


def test_build_index_without_writing(tmp_path: Path) -> None:
    write_wds_shards(tmp_path, [2])
    index = build_index(tmp_path, write=False, max_workers=1)
    assert index.total_samples == 2
    assert not (tmp_path / INDEX_NAME).exists()


def test_build_index_under_a_split(tmp_path: Path) -> None:
    write_wds_shards(tmp_path / "train", [2, 2])
    index = build_index(tmp_path, "train")
    assert [s.name for s in index.shards] == ["part-000.tar", "part-001.tar"]
    assert (tmp_path / "train" / INDEX_NAME).is_file()
    assert not (tmp_path / INDEX_NAME).exists()


def test_build_index_agrees_with_the_writers_index() -> None:
    store = memory_dataset(10, 4)
    written = read_index(store)
    del store.objects[INDEX_NAME]
    assert build_index(store) == written
    assert read_index(store) == written


def test_build_index_of_a_shard_that_is_not_a_tar(tmp_path: Path) -> None:
    write_wds_shards(tmp_path, [2])
    (tmp_path / "part-001.tar").write_bytes(b"x" * 1024)
    with pytest.raises(ShardFormatError) as exc:
        build_index(tmp_path)
    url = str(tmp_path / "part-001.tar")
    assert exc.value.url == url
    assert str(exc.value) == f"{url} at byte 0: tar header checksum mismatch (corrupt or not a tar file)"
    assert not (tmp_path / INDEX_NAME).exists()


def test_build_index_of_a_truncated_shard(tmp_path: Path) -> None:
    write_wds_shards(tmp_path, [2])
    data = (tmp_path / "part-000.tar").read_bytes()
    (tmp_path / "part-000.tar").write_bytes(data[:700])
    with pytest.raises(ShardFormatError) as exc:
        build_index(tmp_path)
    # webdataset writes PAX headers: the cut falls in the first member's extended header
    url = str(tmp_path / "part-000.tar")
    assert str(exc.value) == f"{url} at byte 0: truncated PAX header: expected 512 bytes, got 188"
    assert not (tmp_path / INDEX_NAME).exists()


def test_build_index_of_a_sample_error_names_the_shard_and_key() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("k1.txt", "k1.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    store = MemoryStorage({"a.tar": buf.getvalue()}, name="m")
    with pytest.raises(ShardFormatError) as exc:
        build_index(store)
    assert str(exc.value) == (
        "memory://m/a.tar at byte 0: sample 'k1': field 'txt' appears twice (member 'k1.txt')"
    )


@pytest.mark.parametrize("make", ["missing", "empty", "no_tar"])
def test_build_index_of_an_empty_location(tmp_path: Path, make: str) -> None:
    root = tmp_path / "data"
    if make != "missing":
        root.mkdir()
    if make == "no_tar":
        (root / "a.txt").write_text("x")
    with pytest.raises(NoShardsError) as exc:
        build_index(root)
    assert isinstance(exc.value, FileNotFoundError)
    assert str(exc.value) == f"no *.tar shards found directly under {root.as_uri()!r}"
    assert not (root / INDEX_NAME).exists()


def test_describe_shard() -> None:
    store = memory_dataset(3, 3)
    data = store.objects["shard-000000.tar"]
    want = ShardEntry("n.tar", 3, len(data), sha(data), zlib.crc32(data))
    assert describe_shard("n.tar", data, "u") == want
    empty = bytes(1024)  # an archive of no members: just its end-of-archive marker
    assert describe_shard("e.tar", empty, "u") == ShardEntry("e.tar", 0, 1024, sha(empty), zlib.crc32(empty))
    with pytest.raises(ShardFormatError, match=r"^z at byte 0: empty object, not a tar archive$"):
        describe_shard("z.tar", b"", "z")


# -- len and num_samples ----------------------------------------------------------------------


def test_len_per_rank_is_exact_and_sums_to_the_total() -> None:
    sizes = [1, 2, 3, 4, 5, 6, 7]
    store, per_shard = uneven_dataset(sizes)
    got: dict[int, list[str]] = {}
    for rank in range(3):
        ds = StreamingWebDataset(store, rank=rank, world_size=3)
        assert ds.num_samples == 28
        n = len(ds)
        got[rank] = keys(ds)
        assert n == len(got[rank])
    # round-robin of the listing order: rank r reads shards r, r+3, ... in order
    assert got == {r: [k for shard in per_shard[r::3] for k in shard] for r in range(3)}
    assert {r: len(k) for r, k in got.items()} == {0: 1 + 4 + 7, 1: 2 + 5, 2: 3 + 6}
    assert sorted(k for ks in got.values() for k in ks) == all_keys(28)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_len_follows_the_epoch_when_shuffling(world_size: int) -> None:
    sizes = [1, 2, 3, 5, 8, 13, 21]
    store, _ = uneven_dataset(sizes)
    lengths: dict[tuple[int, int], int] = {}
    for epoch in range(6):
        per_rank = []
        for rank in range(world_size):
            ds = StreamingWebDataset(store, shuffle=True, seed=3, rank=rank, world_size=world_size)
            ds.set_epoch(epoch)
            n = len(ds)
            got = keys(ds)
            assert ds.epoch == epoch
            assert n == len(got)
            assert len(ds) == n  # still this epoch after iterating it
            lengths[epoch, rank] = n
            per_rank.extend(got)
        assert sorted(per_rank) == all_keys(sum(sizes))
    if world_size > 1:
        # not vacuous: the shuffled shard order changes how many samples rank 0 gets
        assert len({lengths[e, 0] for e in range(6)}) > 1


def test_len_with_a_bound_world() -> None:
    store, _ = uneven_dataset([1, 2, 3, 4])
    ds = StreamingWebDataset(store)
    assert len(ds) == 10
    ds.bind_world(1, 2)
    assert len(ds) == 2 + 4
    assert len(keys(ds)) == 6


def test_len_without_an_index_is_a_type_error() -> None:
    store, _ = uneven_dataset([2, 3], index=False)
    assert INDEX_NAME not in store.objects
    ds = StreamingWebDataset(store)
    with pytest.raises(TypeError) as exc:
        len(ds)
    assert str(exc.value) == (
        "the length of memory://mem is unknown without a dataset index (index.json); "
        "write one with ShardWriter or build_index()"
    )
    assert ds.index is None
    assert ds.num_samples is None
    assert len(keys(ds)) == 5


# -- checksum verification --------------------------------------------------------------------


def corrupt_member_data(data: bytes, member: str) -> bytes:
    """``data`` with the first byte of ``member``'s content changed (headers untouched)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        info = tf.getmember(member)
        offset = info.offset_data
    assert data[offset : offset + 1] == b"s"
    return data[:offset] + b"S" + data[offset + 1 :]


def corrupted_dataset() -> tuple[MemoryStorage, str]:
    """3 shards of 4 samples; the content of sample 5's ``txt`` in shard 1 changed by one byte."""
    store = memory_dataset(12, 4)
    name = "shard-000001.tar"
    good = store.objects[name]
    bad = corrupt_member_data(good, "s000005.txt")
    assert len(bad) == len(good) and bad != good
    store.objects[name] = bad
    return store, name


def test_a_corrupt_shard_fails_its_checksum_after_its_samples() -> None:
    store, name = corrupted_dataset()
    index = read_index(store)
    assert index is not None
    want = index.shards[1].crc32
    ds = StreamingWebDataset(store)
    it = iter(ds)
    got = []
    with pytest.raises(ShardFormatError) as exc:
        for s in it:
            got.append(s)
    # every sample of the corrupt shard was handed out (with the changed byte) before the end
    # of the shard could be checked
    assert [s["__key__"] for s in got] == all_keys(8)
    assert got[5]["txt"] == b"Sample 5"
    assert exc.value.url == f"memory://mem/{name}"
    assert exc.value.offset == len(store.objects[name])
    assert str(exc.value) == (
        f"memory://mem/{name} at byte {len(store.objects[name])}: CRC-32 "
        f"{zlib.crc32(store.objects[name])} does not match the dataset index ({want})"
    )
    assert list(it) == []  # the stream is closed


def test_an_index_without_crc32_is_checked_with_sha256() -> None:
    """Indexes written before CRC-32s were recorded still verify their shards, by SHA-256."""
    store, name = corrupted_dataset()
    index = read_index(store)
    assert index is not None
    old = DatasetIndex.of(msgspec.structs.replace(s, crc32=None) for s in index.shards)
    write_index(store, old)
    assert b"crc32" not in store.objects[INDEX_NAME]
    with pytest.raises(ShardFormatError) as exc:
        list(StreamingWebDataset(store))
    assert str(exc.value) == (
        f"memory://mem/{name} at byte {len(store.objects[name])}: SHA-256 "
        f"{sha(store.objects[name])} does not match the dataset index ({index.shards[1].sha256})"
    )


def test_a_corrupt_shard_is_counted_when_skipping() -> None:
    store, _ = corrupted_dataset()
    ds = StreamingWebDataset(store, on_error="skip")
    got = list(ds)
    # its samples were already handed out: skipping cannot take them back
    assert [s["__key__"] for s in got] == all_keys(12)
    assert got[5]["txt"] == b"Sample 5"
    assert ds.error_counts == {"shard_format": 1}


def test_checksums_can_be_turned_off() -> None:
    store, _ = corrupted_dataset()
    ds = StreamingWebDataset(store, options=StreamOptions(verify_checksums=False))
    got = list(ds)
    assert [s["__key__"] for s in got] == all_keys(12)
    assert got[5]["txt"] == b"Sample 5"
    assert ds.error_counts == {}


def test_a_corrupt_shard_without_an_index_is_not_detected() -> None:
    store, _ = corrupted_dataset()
    del store.objects[INDEX_NAME]
    assert len(list(StreamingWebDataset(store))) == 12


def test_intact_shards_pass_verification_with_small_chunks() -> None:
    store = memory_dataset(30, 7)
    opts = StreamOptions(chunk_size=100, buffer_bytes=1000, shuffle_block=3, interleave=3)
    ds = StreamingWebDataset(store, shuffle=True, options=opts)
    assert sorted(keys(ds)) == all_keys(30)
    assert ds.error_counts == {}


@pytest.mark.parametrize("taken", [6, 7])
def test_only_shards_read_from_byte_0_are_verified(taken: int) -> None:
    """Shard 1 holds samples 4-7 in blocks [4, 5] and [6, 7]. A checkpoint after 6 samples
    resumes shard 1 at its first block (byte 0), so the shard is hashed again and fails; after 7
    it resumes at the block [6, 7] (byte > 0), so the shard is not hashed."""
    store, _ = corrupted_dataset()
    opts = StreamOptions(shuffle_block=2)
    ds = StreamingWebDataset(store, options=opts)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(taken)]
    state = ds.state_dict()
    it.close()
    ((shard, delivered, block_offset, block_pos),) = state["slots"]
    if taken == 6:
        assert (shard, delivered, block_offset, block_pos) == (1, 2, 0, 2)
    else:
        assert (shard, delivered, block_pos) == (1, 3, 1)
        assert block_offset > 0
    ds2 = StreamingWebDataset(store, options=opts)
    ds2.load_state_dict(state)
    got = []
    if taken == 6:
        with pytest.raises(ShardFormatError, match=r"CRC-32 \d+ does not match the dataset index"):
            for s in ds2:
                got.append(s["__key__"])
        assert head + got == all_keys(8)
    else:
        got = keys(ds2)
        assert head + got == all_keys(12)
        assert ds2.error_counts == {}


# -- checkpoints with and without the index ---------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_checkpoint_taken_with_the_index_resumes_without_it(shuffle: bool) -> None:
    store, _ = uneven_dataset([3, 7, 2, 9, 4, 6])
    opts = StreamOptions(interleave=3, shuffle_block=2)
    with_index = StreamingWebDataset(store, shuffle=shuffle, seed=5, options=opts)
    with_index.set_epoch(2)
    full = keys(with_index)
    assert sorted(full) == all_keys(31)

    ds = StreamingWebDataset(store, shuffle=shuffle, seed=5, options=opts)
    ds.set_epoch(2)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(13)]
    state = ds.state_dict()
    it.close()

    bare = MemoryStorage({n: d for n, d in store.objects.items() if n != INDEX_NAME})
    resumed = StreamingWebDataset(bare, shuffle=shuffle, seed=5, options=opts)
    assert resumed.index is None
    assert resumed.fingerprint == ds.fingerprint == state["fingerprint"]
    resumed.load_state_dict(state)
    rest = keys(resumed)
    assert resumed.epoch == 2
    assert head + rest == full


def test_a_checkpoint_taken_without_the_index_resumes_with_it() -> None:
    store, _ = uneven_dataset([5, 1, 4])
    bare = MemoryStorage({n: d for n, d in store.objects.items() if n != INDEX_NAME})
    ds = StreamingWebDataset(bare)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(7)]
    state = ds.state_dict()
    it.close()
    resumed = StreamingWebDataset(store)
    resumed.load_state_dict(state)
    assert head + keys(resumed) == all_keys(10)
