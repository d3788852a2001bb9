"""ShardWriter limits count real tar bytes; NumPy scalars encode like Python scalars."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from streaming_wds import MemoryStorage, ShardWriter, StreamingWebDataset, encode_field


def test_maxsize_counts_record_padding_and_pax_headers() -> None:
    store = MemoryStorage()
    long_key = "dir/" + "k" * 120 + "é"  # needs a PAX header
    with ShardWriter(store, maxsize=20_000) as w:
        for i in range(20):
            w.write({"__key__": f"{long_key}{i}", "bin": b"x" * 3000})
    sizes = [len(d) for n, d in store.objects.items() if n.endswith(".tar")]
    assert len(sizes) == 5
    assert all(size <= 20_000 for size in sizes), sizes
    for data in (d for n, d in store.objects.items() if n.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert all(m.name.startswith(long_key) for m in tf.getmembers())
    assert sorted(s["__key__"] for s in StreamingWebDataset(store)) == sorted(
        f"{long_key}{i}" for i in range(20)
    )


def test_numpy_scalars_encode_as_text() -> None:
    assert encode_field("cls", np.int64(3)) == b"3"
    assert encode_field("txt", np.str_("hé")) == "hé".encode()
    store = MemoryStorage()
    with ShardWriter(store) as w:
        w.write({"__key__": "a", "cls": np.int64(3)})
    assert [s["cls"] for s in StreamingWebDataset(store, schema={"cls": "int"})] == [3]
