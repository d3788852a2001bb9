"""The pure planner: global epoch order, round-robin deal over consumers, seeds, World checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds import ConfigError, PlanningError, World, plan_epoch
from streaming_wds.planner import derive_seed, epoch_order


def _worlds(world_size: int, num_workers: int) -> list[World]:
    """Every consumer of a topology, in consumer (rank-major) order."""
    return [
        World(rank=r, world_size=world_size, worker_id=w, num_workers=num_workers)
        for r in range(world_size)
        for w in range(num_workers)
    ]


def _all_plans(num_shards: int, world_size: int, num_workers: int, **kw: object) -> list[list[int]]:
    return [plan_epoch(num_shards, world=w, **kw) for w in _worlds(world_size, num_workers)]  # type: ignore[arg-type]


@st.composite
def _topologies(draw: st.DrawFn) -> tuple[int, int, int]:
    world_size = draw(st.integers(1, 8))
    num_workers = draw(st.integers(1, 8))
    num_shards = draw(st.integers(world_size * num_workers, 300))
    return num_shards, world_size, num_workers


# -- partition properties ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    topo=_topologies(),
    seed=st.integers(0, 2**63),
    epoch=st.integers(0, 10_000),
    shuffle=st.booleans(),
)
def test_every_shard_goes_to_exactly_one_consumer(
    topo: tuple[int, int, int], seed: int, epoch: int, shuffle: bool
) -> None:
    num_shards, world_size, num_workers = topo
    plans = _all_plans(num_shards, world_size, num_workers, seed=seed, epoch=epoch, shuffle=shuffle)

    flat = [s for p in plans for s in p]
    assert sorted(flat) == list(range(num_shards))  # union is everything, each exactly once
    counts = [len(p) for p in plans]
    assert max(counts) - min(counts) <= 1
    assert min(counts) >= 1
    # Within a rank, earlier workers get the extra shards; earlier ranks get the extra shards.
    for r in range(world_size):
        mine = counts[r * num_workers : (r + 1) * num_workers]
        assert mine == sorted(mine, reverse=True)
    per_rank = [sum(counts[r * num_workers : (r + 1) * num_workers]) for r in range(world_size)]
    assert per_rank == sorted(per_rank, reverse=True)
    assert max(per_rank) - min(per_rank) <= 1


@settings(max_examples=100, deadline=None)
@given(topo=_topologies(), seed=st.integers(0, 2**32), epoch=st.integers(0, 100), shuffle=st.booleans())
def test_plans_deal_the_global_order_to_ranks_then_workers(
    topo: tuple[int, int, int], seed: int, epoch: int, shuffle: bool
) -> None:
    num_shards, world_size, num_workers = topo
    order = epoch_order(num_shards, seed=seed, epoch=epoch, shuffle=shuffle)
    plans = _all_plans(num_shards, world_size, num_workers, seed=seed, epoch=epoch, shuffle=shuffle)
    for r in range(world_size):
        ranks_share = order[r::world_size]
        for w in range(num_workers):
            assert plans[r * num_workers + w] == ranks_share[w::num_workers]


@settings(max_examples=100, deadline=None)
@given(topo=_topologies(), seed=st.integers(0, 2**63), epoch=st.integers(0, 10_000), shuffle=st.booleans())
def test_plan_is_deterministic(topo: tuple[int, int, int], seed: int, epoch: int, shuffle: bool) -> None:
    num_shards, world_size, num_workers = topo
    kw = {"seed": seed, "epoch": epoch, "shuffle": shuffle}
    assert _all_plans(num_shards, world_size, num_workers, **kw) == _all_plans(
        num_shards, world_size, num_workers, **kw
    )


# -- exact small cases ---------------------------------------------------------------------


def test_unshuffled_plan_is_listing_order_dealt_to_ranks_then_workers() -> None:
    # 7 shards, 2 ranks x 2 workers: consumers are (r0,w0), (r0,w1), (r1,w0), (r1,w1).
    # rank 0 gets 0, 2, 4, 6 and rank 1 gets 1, 3, 5, each dealt over its two workers
    plans = _all_plans(7, 2, 2, seed=123, epoch=5, shuffle=False)
    assert plans == [[0, 4], [2, 6], [1, 5], [3]]


def test_unshuffled_plan_ignores_seed_and_epoch() -> None:
    world = World(rank=1, world_size=3)
    expected = [1, 4, 7, 10]
    for seed, epoch in [(0, 0), (1, 0), (0, 9), (12345, 678)]:
        assert plan_epoch(12, seed=seed, epoch=epoch, shuffle=False, world=world) == expected


def test_single_consumer_gets_the_whole_order() -> None:
    world = World()
    assert plan_epoch(5, seed=0, epoch=0, shuffle=False, world=world) == [0, 1, 2, 3, 4]
    shuffled = plan_epoch(50, seed=0, epoch=0, shuffle=True, world=world)
    assert shuffled == epoch_order(50, seed=0, epoch=0, shuffle=True)
    assert sorted(shuffled) == list(range(50))


def test_exactly_as_many_shards_as_consumers() -> None:
    plans = _all_plans(6, 3, 2, seed=0, epoch=0, shuffle=False)
    assert plans == [[0], [3], [1], [4], [2], [5]]


# -- epoch_order -----------------------------------------------------------------------------


def test_epoch_order_unshuffled_is_range() -> None:
    assert epoch_order(6, seed=9, epoch=3, shuffle=False) == [0, 1, 2, 3, 4, 5]
    assert epoch_order(0, seed=0, epoch=0, shuffle=False) == []


def test_shuffled_order_is_a_permutation_that_moves_shards() -> None:
    order = epoch_order(100, seed=0, epoch=0, shuffle=True)
    assert sorted(order) == list(range(100))
    assert order != list(range(100))


def test_different_epochs_give_different_orders() -> None:
    orders = [tuple(epoch_order(100, seed=7, epoch=e, shuffle=True)) for e in range(10)]
    assert len(set(orders)) == 10
    plans = [plan_epoch(100, seed=7, epoch=e, shuffle=True, world=World(0, 1, 0, 4)) for e in (0, 1)]
    assert plans[0] != plans[1]


def test_different_seeds_give_different_orders() -> None:
    orders = [tuple(epoch_order(100, seed=s, epoch=0, shuffle=True)) for s in range(10)]
    assert len(set(orders)) == 10


def test_same_seed_and_epoch_give_the_same_order() -> None:
    a = epoch_order(100, seed=42, epoch=3, shuffle=True)
    b = epoch_order(100, seed=42, epoch=3, shuffle=True)
    assert a == b


# -- derive_seed -----------------------------------------------------------------------------


def test_derive_seed_is_blake2b_of_joined_parts() -> None:
    # Pinned: checkpoints written by one version must replay identically in the next.
    expected = int.from_bytes(hashlib.blake2b(b"shards\x1f3\x1f7", digest_size=8).digest(), "little")
    assert derive_seed("shards", 3, 7) == expected == 0x94664B8E538BDA84


def test_derive_seed_is_64_bit_and_sensitive_to_every_part() -> None:
    base = derive_seed("picks", 1, 2, 3)
    assert 0 <= base < 2**64
    assert derive_seed("picks", 1, 2, 3) == base
    others = {
        derive_seed("picks", 1, 2, 4),
        derive_seed("picks", 1, 3, 3),
        derive_seed("picks", 2, 2, 3),
        derive_seed("block", 1, 2, 3),
        derive_seed("picks", 1, 2),
        derive_seed("picks", 12, 3),
    }
    assert base not in others
    assert len(others) == 6


def test_order_is_identical_in_another_interpreter_with_another_hash_seed() -> None:
    # Loads the planner without the package __init__ (which imports torch): the planner itself
    # must not need torch, and must give the same numbers under another str-hash seed.
    import streaming_wds

    code = (
        "import sys, types;"
        "pkg = types.ModuleType('streaming_wds'); pkg.__path__ = [sys.argv[1]];"
        "sys.modules['streaming_wds'] = pkg;"
        "from streaming_wds.planner import derive_seed, epoch_order;"
        "print(derive_seed('x', 1, 2));"
        "print(epoch_order(30, seed=5, epoch=2, shuffle=True));"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(streaming_wds.__file__)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    assert out == [
        str(derive_seed("x", 1, 2)),
        str(epoch_order(30, seed=5, epoch=2, shuffle=True)),
        "False",
    ]


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_shards", "world_size", "num_workers"),
    [(3, 2, 2), (0, 1, 1), (7, 1, 8), (1, 2, 1)],
)
def test_fewer_shards_than_consumers_is_a_planning_error(
    num_shards: int, world_size: int, num_workers: int
) -> None:
    for world in _worlds(world_size, num_workers):
        with pytest.raises(PlanningError) as info:
            plan_epoch(num_shards, seed=0, epoch=0, shuffle=True, world=world)
        msg = str(info.value)
        assert msg.startswith(f"{num_shards} shard(s) cannot feed {world_size * num_workers} consumers")
        assert f"world_size={world_size} x num_workers={num_workers}" in msg
    assert issubclass(PlanningError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rank": 1, "world_size": 1}, "rank 1 is not in range for world_size 1"),
        ({"rank": -1, "world_size": 2}, "rank -1 is not in range for world_size 2"),
        ({"rank": 0, "world_size": 0}, "rank 0 is not in range for world_size 0"),
        ({"worker_id": 2, "num_workers": 2}, "worker_id 2 is not in range for num_workers 2"),
        ({"worker_id": -1, "num_workers": 2}, "worker_id -1 is not in range for num_workers 2"),
        ({"worker_id": 0, "num_workers": 0}, "worker_id 0 is not in range for num_workers 0"),
    ],
)
def test_world_validation(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        World(**kwargs)


def test_world_consumer_index_is_rank_major() -> None:
    worlds = _worlds(3, 4)
    assert [w.consumer for w in worlds] == list(range(12))
    assert {w.num_consumers for w in worlds} == {12}
    assert World(rank=2, world_size=3, worker_id=1, num_workers=4).consumer == 9
    assert World().consumer == 0
    assert World().num_consumers == 1
