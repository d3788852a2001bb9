"""ShardKeys answers as a dict of first offsets does, in far less memory for ascending keys."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds.keys import ShardKeys

# few characters, so keys repeat; a lone surrogate (an undecodable tar name) and non-ASCII too
_KEYS = st.text(alphabet=st.sampled_from("ab9é\udc80\U0001f600"), min_size=0, max_size=3)


def _same_as_a_dict(keys: list[str]) -> None:
    ours, reference = ShardKeys(), {}
    for offset, key in enumerate(keys):
        assert ours.first(key, offset * 512) == reference.setdefault(key, offset * 512), (key, offset)


@settings(max_examples=300)
@given(st.lists(_KEYS, max_size=60))
def test_first_offsets_are_a_dicts_for_any_keys(keys: list[str]) -> None:
    _same_as_a_dict(keys)


@settings(max_examples=200)
@given(st.lists(_KEYS, max_size=60), st.data())
def test_first_offsets_are_a_dicts_for_mostly_ascending_keys(keys: list[str], data: st.DataObject) -> None:
    # sorted keys with a few moved or repeated: the ascending run and the dict both in use
    keys = sorted(set(keys))
    for _ in range(data.draw(st.integers(0, 4))):
        if keys:
            keys.insert(data.draw(st.integers(0, len(keys))), data.draw(st.sampled_from(keys)))
    _same_as_a_dict(keys)


def test_a_key_seen_again_is_found_in_the_run_and_among_the_others() -> None:
    keys = ShardKeys()
    assert [keys.first(k, o) for k, o in [("k1", 0), ("k3", 10), ("k2", 20), ("k4", 30)]] == [0, 10, 20, 30]
    assert keys.first("k1", 40) == 0  # ascending, bisected
    assert keys.first("k3", 50) == 10
    assert keys.first("k2", 60) == 20  # out of order, in the dict
    assert keys.first("k0", 70) == 70  # new, below the greatest
    assert keys.first("k0", 80) == 70


def test_ascending_keys_cost_a_fraction_of_a_dict() -> None:
    n = 20_000
    names = [f"{i:09d}" for i in range(n)]
    tracemalloc.start()
    try:
        keys = ShardKeys()
        for offset, key in enumerate(names):
            keys.first(key, offset * 1024)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / n < 40  # a dict of these str keys to int offsets: about 130 bytes each
