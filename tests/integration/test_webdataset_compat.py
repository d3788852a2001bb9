"""Format round trips with the reference ``webdataset`` package, on local files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from webdataset import autodecode, tariterators

from streaming_wds import SampleError, ShardWriter, StreamingWebDataset


def wds_read(paths: list[Path]) -> list[dict[str, Any]]:
    """Samples as webdataset groups them: raw bytes per field, plus ``__key__`` and ``__url__``."""
    out: list[dict[str, Any]] = []
    for path in paths:
        with open(path, "rb") as f:
            files = ({**fs, "__url__": str(path)} for fs in tariterators.tar_file_iterator(f))
            out.extend(tariterators.group_by_keys(files))
    return out


def ours(root: Path, **kw: Any) -> list[dict[str, Any]]:
    return list(StreamingWebDataset(str(root), **kw))


def pixels(i: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)


def wds_sample(i: int, key: str) -> dict[str, Any]:
    return {
        "__key__": key,
        "png": Image.fromarray(pixels(i, (5, 4, 3)), "RGB"),
        "seg.png": Image.fromarray(pixels(100 + i, (5, 4)) % 7, "L"),
        "cls": i % 3,
        "json": {"i": i, "name": f"n{i}", "tags": ["a", "b"][: i % 3]},
        "txt": f"caption {i} ✓",
        "npy": np.arange(i + 1, dtype=np.float32) / 3,
    }


KEYS = {
    "USTAR_FORMAT": lambda i: f"train/class{i % 2}/img{i:04d}",
    "GNU_FORMAT": lambda i: f"train/{'deep' * 30}/img{i:04d}",  # names over 100 bytes: 'L' headers
    "PAX_FORMAT": lambda i: f"val/données/ключ{i:04d}",  # non-ASCII: PAX path records
}


@pytest.mark.parametrize("fmt", sorted(KEYS))
def test_webdataset_tarwriter_shards_read_by_streaming_wds(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # webdataset 1.0.2's TarWriter ignores its format= argument: set tarfile's default instead
    monkeypatch.setattr(tarfile.TarFile, "format", getattr(tarfile, fmt))
    samples = [wds_sample(i, KEYS[fmt](i)) for i in range(7)]
    paths = [tmp_path / "shard-000000.tar", tmp_path / "shard-000001.tar"]
    for path, chunk in zip(paths, (samples[:4], samples[4:]), strict=True):
        with wds.TarWriter(str(path)) as tw:
            for s in chunk:
                tw.write(dict(s))
    assert (b"././@PaxHeader" in paths[0].read_bytes()) == (fmt == "PAX_FORMAT")
    if fmt == "GNU_FORMAT":
        assert b"././@LongLink" in paths[0].read_bytes()
    if fmt == "PAX_FORMAT":
        assert b"path=val/donn" in paths[0].read_bytes()

    schema = {".png": "rgb8", "seg.png": "PIL", "cls": "cls", "json": "json", "txt": "txt", "npy": "npy"}
    got = ours(tmp_path, schema=schema)
    assert [(s["__key__"], s["__url__"]) for s in got] == [
        (KEYS[fmt](i), str(paths[i // 4])) for i in range(7)
    ]
    for s, expected in zip(got, samples, strict=True):
        assert sorted(s) == ["__key__", "__url__", "cls", "json", "npy", "png", "seg.png", "txt"]
        assert (s["cls"], s["json"], s["txt"]) == (expected["cls"], expected["json"], expected["txt"])
        assert s["png"].dtype == np.uint8 and np.array_equal(s["png"], np.asarray(expected["png"]))
        seg = s["seg.png"]
        assert (seg.mode, seg.size) == ("RGB", (4, 5))
        assert np.array_equal(np.asarray(seg)[..., 0], np.asarray(expected["seg.png"]))
        assert s["npy"].dtype == np.float32 and np.array_equal(s["npy"], expected["npy"])

    # undecoded, both readers see exactly the same samples and bytes
    raw = ours(tmp_path)
    reference = [{k: v for k, v in s.items() if k != "__local_path__"} for s in wds_read(paths)]
    assert raw == reference
    assert len(raw) == 7


def our_sample(i: int) -> dict[str, Any]:
    key = f"{'split-a' if i % 2 else 'split.b'}/{'x' * (120 if i == 3 else 3)}k{i:03d}"
    if i == 5:
        key = f"unicode/é-鍵-{i}"
    return {
        "__key__": key,
        "jpg": Image.fromarray(pixels(i, (8, 6, 3)), "RGB"),
        "seg.png": Image.fromarray(pixels(50 + i, (8, 6, 3)), "RGB"),
        "cls": i,
        "json": {"i": i},
        "npy": np.full((2, 2), i, dtype=np.int32),
        "txt": f"t{i}",
        "bin": bytes(range(i * 40 % 256)),
    }


def test_shardwriter_shards_read_by_webdataset(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, maxcount=3) as w:
        for i in range(8):
            w.write(our_sample(i))
    paths = [tmp_path / name for name in w.written]
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]

    reference = wds_read(paths)
    assert [s["__key__"] for s in reference] == [our_sample(i)["__key__"] for i in range(8)]
    assert [s["__url__"] for s in reference] == [str(paths[i // 3]) for i in range(8)]
    fields = ["bin", "cls", "jpg", "json", "npy", "seg.png", "txt"]
    assert all(sorted(k for k in s if not k.startswith("__")) == fields for s in reference)
    assert [{k: v for k, v in s.items() if k != "__local_path__"} for s in reference] == ours(tmp_path)

    # webdataset's own decoders understand what ShardWriter encoded
    decode = autodecode.Decoder([autodecode.imagehandler("rgb8"), autodecode.basichandlers])
    for i, s in enumerate(reference):
        d = decode(dict(s))
        assert (d["cls"], d["json"], d["txt"]) == (i, {"i": i}, f"t{i}")
        assert d["npy"].dtype == np.int32 and np.array_equal(d["npy"], np.full((2, 2), i))
        assert np.array_equal(d["seg.png"], pixels(50 + i, (8, 6, 3)))
        assert d["jpg"].shape == (8, 6, 3) and d["jpg"].dtype == np.uint8

    # ... and decode images the same way as our decoders of the same name
    ours_rgb8 = ours(tmp_path, schema={"jpg": "rgb8", "seg.png": "torchrgb8"})
    wds_rgb8 = [
        autodecode.Decoder([autodecode.imagehandler("rgb8", ["jpg"]), autodecode.imagehandler("torchrgb8")])(
            dict(s)
        )
        for s in reference
    ]
    for a, b in zip(ours_rgb8, wds_rgb8, strict=True):
        assert np.array_equal(a["jpg"], b["jpg"])
        assert isinstance(b["seg.png"], torch.Tensor) and torch.equal(a["seg.png"], b["seg.png"])


def test_member_names_group_like_webdataset(tmp_path: Path) -> None:
    names = [
        "__index__",  # metadata: skipped by both
        "a.b/k1.TXT",
        "a.b/k1.Seg.PNG",
        "a.b/k1.tar.gz",
        "k2.txt",
        "__meta__/x.json",  # metadata inside a sample: skipped, the sample goes on
        "k2.cls",
        "__index__.json",  # not metadata: sample '__index__'
        "dir/k1.txt",
        "k2.json",  # a key seen before, not adjacent: a new sample for webdataset, an error here
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for n, name in enumerate(names):
            info = tarfile.TarInfo(name)
            data = f"{n}:{name}".encode()
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path = tmp_path / "mixed.tar"
    path.write_bytes(buf.getvalue())

    reference = [{k: v for k, v in s.items() if k != "__local_path__"} for s in wds_read([path])]
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in reference] == [
        ("a.b/k1", ["seg.png", "tar.gz", "txt"]),
        ("k2", ["cls", "txt"]),
        ("__index__", ["json"]),
        ("dir/k1", ["txt"]),
        ("k2", ["json"]),
    ]
    # The same groups, except that a key coming back after other keys (k2.json) is refused where
    # webdataset starts a new sample with it: raised, or skipped and counted.
    with pytest.raises(SampleError, match=r"mixed\.tar at byte \d+, sample 'k2': key 'k2' already appeared"):
        ours(tmp_path)
    ds = StreamingWebDataset(str(tmp_path), on_error="skip")
    assert list(ds) == reference[:-1]
    assert ds.error_counts == {"sample": 1}
