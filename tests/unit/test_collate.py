"""The loader's collate in the main process (``num_workers=0``): ``default_collate``'s batches,
without torch's warning about the read-only arrays that decoded images are."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

from streaming_wds import StreamingDataLoader, StreamingWebDataset
from streaming_wds.collate import stacked_collate

from ..helpers import write_dataset
from .test_arena import _DTYPES, assert_same


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def reference(samples: list[Any]) -> Any:
    """``default_collate``, whose warning about read-only arrays this suite turns into an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return default_collate(samples)


@settings(max_examples=60, deadline=None)
@given(
    dtype=_DTYPES,
    shape=st.lists(st.integers(0, 5), max_size=3),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_dtype_and_shape_collates_as_default_collate_does(
    dtype: str, shape: list[int], n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    arrays = [read_only(np.asarray(rng.random(shape) * 100).astype(dtype)) for _ in range(n)]
    samples = [{"v": a, "i": i, "s": f"k{i}", "t": torch.full((2,), i)} for i, a in enumerate(arrays)]
    got = stacked_collate(samples)
    assert_same(got, reference(samples))
    got["v"].zero_()  # the batch is the caller's to write: the arrays it came from are untouched
    assert all(np.array_equal(a, b) for a, b in zip(arrays, [s["v"] for s in samples], strict=True))


def test_arrays_of_different_shapes_fail_as_default_collate_fails() -> None:
    samples = [{"v": np.zeros((2, 3), np.uint8)}, {"v": np.zeros((3, 2), np.uint8)}]
    with pytest.raises(RuntimeError) as want:
        default_collate(samples)
    with pytest.raises(RuntimeError) as got:
        stacked_collate(samples)
    assert str(got.value) == str(want.value)


def test_arrays_torch_cannot_hold_fail_as_default_collate_fails() -> None:
    samples = [{"v": np.array(["a", "b"])}, {"v": np.array(["c", "d"])}]
    with pytest.raises(TypeError) as want:
        default_collate(samples)
    with pytest.raises(TypeError) as got:
        stacked_collate(samples)
    assert str(got.value) == str(want.value)


def test_the_loader_uses_it_only_without_workers_and_without_a_collate_fn(tmp_path: Path) -> None:
    write_dataset(tmp_path / "train", 8, 4)
    ds = StreamingWebDataset(f"file://{tmp_path}", "train")
    assert StreamingDataLoader(ds, batch_size=4).collate_fn is stacked_collate
    assert StreamingDataLoader(ds, batch_size=4, collate_fn=default_collate).collate_fn is default_collate
    assert StreamingDataLoader(ds, batch_size=None).collate_fn is not stacked_collate  # no batches
    assert StreamingDataLoader(ds, batch_size=4, num_workers=1).collate_fn is not stacked_collate


def test_decoded_images_batch_without_a_warning_in_the_main_process(tmp_path: Path) -> None:
    """torch warns once per process, so this runs in a fresh one, with warnings as errors."""
    from PIL import Image

    from streaming_wds import ShardWriter

    with ShardWriter(tmp_path / "train", maxcount=4) as w:
        for i in range(8):
            img = Image.new("RGB", (6, 5), (i * 30, 10, 200 - i * 20))
            w.write({"__key__": f"k{i}", "png": img, "cls": i})
    script = textwrap.dedent(
        f"""
        import numpy as np
        from PIL import Image
        from streaming_wds import StreamingDataLoader, StreamingWebDataset
        ds = StreamingWebDataset("file://{tmp_path}", "train", schema={{"png": "rgb8", "cls": "int"}})
        batches = list(StreamingDataLoader(ds, batch_size=4))
        got = np.concatenate([b["png"].numpy() for b in batches])
        want = np.stack([np.asarray(Image.new("RGB", (6, 5), (i * 30, 10, 200 - i * 20))) for i in range(8)])
        assert got.shape == (8, 5, 6, 3) and (got == want).all(), got.shape
        assert [int(c) for b in batches for c in b["cls"]] == list(range(8))
        print("ok")
        """
    )
    run = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
