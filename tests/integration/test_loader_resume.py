"""The resume matrix: workers 0/1/several x shuffle x every kind of cut point x ranks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streaming_wds import (
    CheckpointError,
    StreamingDataLoader,
    StreamingWebDataset,
    StreamOptions,
)
from tests.helpers import all_keys, write_dataset
from tests.resume_harness import END, check_resume, epoch_keys, reference

# 3 workers on a 2-core machine is deliberate here: torch warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

NUM, PER_SHARD, BATCH = 120, 10, 4  # 12 shards
OPTS = StreamOptions(interleave=3, shuffle_block=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ds")
    write_dataset(path, NUM, PER_SHARD)
    return path


def _factory(root: Path, num_workers: int, shuffle: bool, **kw: Any) -> Any:
    loader_kw = {k: kw.pop(k) for k in ("persistent_workers", "batch_size") if k in kw}
    loader_kw.setdefault("batch_size", BATCH)

    def make() -> StreamingDataLoader:
        ds = StreamingWebDataset(root, schema={"cls": "int"}, shuffle=shuffle, seed=11, options=OPTS, **kw)
        return StreamingDataLoader(ds, num_workers=num_workers, **loader_kw)

    return make


# total batches per epoch: 30 with 0/1 worker; 2 workers: 15 batches each
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_matrix(root: Path, num_workers: int, shuffle: bool) -> None:
    make = _factory(root, num_workers, shuffle)
    ref = reference(make)
    assert sorted(ref[0]) == sorted(ref[1]) == all_keys(NUM)
    if shuffle:
        assert ref[0] != ref[1]
    total_batches = -(-NUM // BATCH) if num_workers <= 1 else None
    cuts: list[int | str] = [0, 1, 5, 13, END]
    if total_batches is not None:
        cuts += [total_batches - 1, total_batches]
    for cut in cuts:
        check_resume(make, cut, ref)


def test_resume_at_shard_boundary(root: Path) -> None:
    # no shuffle, one worker reading whole shards of 10 with batches of 5: batch 2 ends shard 0
    make = _factory(root, 1, False, batch_size=5)
    ref = reference(make)
    state = check_resume(make, 2, ref)
    worker = state["loader"]["_snapshot"]["_worker_snapshots"]["worker_0"]["dataset_state"]
    # shard 0 fully delivered: its last block (samples 8, 9; blocks of 4) starts at byte
    # 8 samples x 3 members x (512 header + 512 data) and both of its samples were handed out
    assert worker["slots"] == [[0, 10, 8 * 3 * 1024, 2]]
    assert worker["opened"] == 1


def test_state_before_first_iteration_resumes_a_whole_epoch(root: Path) -> None:
    make = _factory(root, 2, True)
    ref = reference(make)
    loader = make()
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert epoch_keys(resumed) == ref[0]
    assert epoch_keys(resumed) == ref[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_several_ranks_resume_independently(root: Path, num_workers: int) -> None:
    seen: list[str] = []
    for rank in range(2):
        make = _factory(root, num_workers, True, rank=rank, world_size=2)
        ref = reference(make)
        check_resume(make, 4, ref)
        seen += ref[0]
    assert sorted(seen) == all_keys(NUM), "ranks split the epoch exactly"


def test_persistent_workers_get_a_new_order_each_epoch_and_resume(root: Path) -> None:
    make = _factory(root, 2, True, persistent_workers=True)
    plain = reference(_factory(root, 2, True), epochs=3)
    loader = make()
    epochs = [epoch_keys(loader) for _ in range(3)]
    assert epochs == plain, "persistent workers follow the same epochs as fresh ones"
    assert len({tuple(e) for e in epochs}) == 3
    check_resume(make, 6, plain)
    check_resume(make, END, plain)


def test_epoch_counter_and_set_epoch(root: Path) -> None:
    make = _factory(root, 0, True)
    ref = reference(make, epochs=3)
    loader = make()
    assert loader.epoch == 0
    loader.set_epoch(2)
    assert epoch_keys(loader) == ref[2]
    assert loader.epoch == 2


def test_checkpoint_mismatch_is_rejected(root: Path, tmp_path: Path) -> None:
    loader = _factory(root, 2, True)()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it

    with pytest.raises(CheckpointError, match="num_workers: checkpoint has 2, this run has 1"):
        _factory(root, 1, True)().load_state_dict(state)
    with pytest.raises(CheckpointError, match="shuffle: checkpoint has True, this run has False"):
        _factory(root, 2, False)().load_state_dict(state)
    with pytest.raises(CheckpointError, match="world_size: checkpoint has 1, this run has 2"):
        _factory(root, 2, True, rank=0, world_size=2)().load_state_dict(state)
    write_dataset(tmp_path, NUM + 1, PER_SHARD)
    with pytest.raises(CheckpointError, match="fingerprint"):
        _factory(tmp_path, 2, True)().load_state_dict(state)
    with pytest.raises(CheckpointError, match="not supported"):
        _factory(root, 2, True)().load_state_dict({**state, "streaming_wds": 99})
    with pytest.raises(CheckpointError, match="not a streaming-wds loader checkpoint"):
        _factory(root, 2, True)().load_state_dict(state["loader"])


def test_checkpoint_is_small_and_plain(root: Path) -> None:
    loader = _factory(root, 2, True)()
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    del it
    text = json.dumps(state)
    assert json.loads(text) == state
    assert len(text) < 4000


def test_set_epoch_reaches_persistent_workers(root: Path) -> None:
    plain = _factory(root, 2, True)()
    plain.set_epoch(5)
    epoch5 = epoch_keys(plain)
    plain.set_epoch(0)
    epoch0, epoch1 = epoch_keys(plain), epoch_keys(plain)

    loader = _factory(root, 2, True, persistent_workers=True)()
    assert epoch_keys(loader) == epoch0
    loader.set_epoch(5)
    assert epoch_keys(loader) == epoch5
    loader.set_epoch(0)
    assert epoch_keys(loader) == epoch0
    assert epoch_keys(loader) == epoch1
    state = loader.state_dict()
    workers = state["loader"]["_snapshot"]["_worker_snapshots"].values()
    assert state["epoch"] == 1
    assert {w["dataset_state"]["epoch"] for w in workers} == {1}
