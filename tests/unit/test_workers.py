"""Worker set-up: glibc's malloc keeps freed memory for reuse, and the user's init still runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset, workers
from streaming_wds.workers import WorkerInit

_FAULTS = """
import io, resource, sys
import numpy as np
from PIL import Image
from streaming_wds import decoders, workers
if sys.argv[1] == "tuned":
    assert workers.keep_freed_memory()
buf = io.BytesIO()
noise = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
Image.fromarray(noise).save(buf, "JPEG", quality=90)
jpeg = buf.getvalue()
def batch():  # as a worker does: 32 images decoded and held until collated, then freed
    held = [decoders.decode_rgb8(jpeg) for _ in range(32)]
    del held
batch()  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain > 5 * 32 * 100  # each image's 137 pages of pixels faulted in again, batch after batch
    assert tuned < 500


def _mark(worker_id: int) -> None:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    assert info is not None
    Path(info.dataset.root_marks, f"w{worker_id}").write_text("ran")  # type: ignore[attr-defined]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_the_users_worker_init_fn_still_runs_in_every_worker(tmp_path: Path, context: str) -> None:
    with ShardWriter(tmp_path / "ds", maxcount=5) as w:
        for i in range(20):
            w.write({"__key__": f"k{i:02d}", "txt": str(i)})
    ds = StreamingWebDataset(tmp_path / "ds")
    ds.root_marks = str(tmp_path)  # type: ignore[attr-defined]
    loader = StreamingDataLoader(
        ds, batch_size=4, num_workers=2, worker_init_fn=_mark, multiprocessing_context=context
    )
    assert isinstance(loader.worker_init_fn, workers.WorkerInit)
    assert sorted(k for b in loader for k in b["__key__"]) == [f"k{i:02d}" for i in range(20)]
    assert sorted(p.name for p in tmp_path.glob("w*")) == ["w0", "w1"]


def test_malloc_can_be_left_alone(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, maxcount=5) as w:
        w.write({"__key__": "k", "txt": "x"})
    ds = StreamingWebDataset(tmp_path)
    plain = {"keep_freed_memory": False, "tensor_memory_bytes": 0}  # nothing to set up in workers
    assert StreamingDataLoader(ds, num_workers=1, **plain).worker_init_fn is None
    assert StreamingDataLoader(ds, num_workers=1, worker_init_fn=_mark, **plain).worker_init_fn is _mark
    assert StreamingDataLoader(ds, num_workers=0).worker_init_fn is None
    # with an arena, workers start it (and its image stager) but leave malloc alone
    loader = StreamingDataLoader(ds, num_workers=1, worker_init_fn=_mark, keep_freed_memory=False)
    init = loader.worker_init_fn
    assert isinstance(init, WorkerInit) and not init.tune_malloc and init.user is _mark
    assert init.start is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_free_memory_can_be_given_back() -> None:
    assert workers.release_free_memory()


@pytest.mark.parametrize(("context", "trims"), [("fork", 2), ("spawn", 0)])
def test_free_memory_goes_back_before_workers_are_forked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context: str, trims: int
) -> None:
    # forked workers would start with the main process's free pages; spawned ones do not
    import streaming_wds.loader as loader_module

    calls: list[int] = []
    monkeypatch.setattr(loader_module, "release_free_memory", lambda: calls.append(1) or True)
    with ShardWriter(tmp_path, maxcount=5) as w:
        for i in range(10):
            w.write({"__key__": f"k{i}", "txt": "x"})
    loader = StreamingDataLoader(
        StreamingWebDataset(tmp_path), batch_size=5, num_workers=1, multiprocessing_context=context
    )
    for _ in range(2):  # each epoch starts new workers
        assert sum(len(b["__key__"]) for b in loader) == 10
    assert len(calls) == trims
    assert StreamingDataLoader(StreamingWebDataset(tmp_path), batch_size=5).num_workers == 0
    assert (
        sum(len(b["__key__"]) for b in StreamingDataLoader(StreamingWebDataset(tmp_path), batch_size=5)) == 10
    )
    assert len(calls) == trims  # no workers, nothing to fork
