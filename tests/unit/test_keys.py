"""ShardKeys answers as a dict of first offsets does, in far less memory than a dict."""

from __future__ import annotations

import random
import tracemalloc
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_wds import keys as keys_module
from streaming_wds.keys import ShardKeys

# few characters, so keys repeat; a lone surrogate (an undecodable tar name) and non-ASCII too
_KEYS = st.text(alphabet=st.sampled_from("ab9é\udc80\U0001f600"), min_size=0, max_size=3)


# how many out-of-order keys stay in a dict before moving to the compact table
_DICT_KEYS = st.sampled_from([1, 2, 3, 7, keys_module.DICT_KEYS])


def _same_as_a_dict(keys: list[str], dict_keys: int) -> None:
    reference: dict[str, int] = {}
    with mock.patch.object(keys_module, "DICT_KEYS", dict_keys):
        ours = ShardKeys()
        for offset, key in enumerate(keys):
            assert ours.first(key, offset * 512) == reference.setdefault(key, offset * 512), (key, offset)


@settings(max_examples=400)
@given(st.lists(_KEYS, max_size=80), _DICT_KEYS)
def test_first_offsets_are_a_dicts_for_any_keys(keys: list[str], dict_keys: int) -> None:
    _same_as_a_dict(keys, dict_keys)


@settings(max_examples=200)
@given(st.lists(_KEYS, max_size=60), st.data(), _DICT_KEYS)
def test_first_offsets_are_a_dicts_for_mostly_ascending_keys(
    keys: list[str], data: st.DataObject, dict_keys: int
) -> None:
    # sorted keys with a few moved or repeated: the ascending run and the dict both in use
    keys = sorted(set(keys))
    for _ in range(data.draw(st.integers(0, 4))):
        if keys:
            keys.insert(data.draw(st.integers(0, len(keys))), data.draw(st.sampled_from(keys)))
    _same_as_a_dict(keys, dict_keys)


def test_a_key_seen_again_is_found_in_the_run_and_among_the_others() -> None:
    keys = ShardKeys()
    assert [keys.first(k, o) for k, o in [("k1", 0), ("k3", 10), ("k2", 20), ("k4", 30)]] == [0, 10, 20, 30]
    assert keys.first("k1", 40) == 0  # ascending, bisected
    assert keys.first("k3", 50) == 10
    assert keys.first("k2", 60) == 20  # out of order, in the dict
    assert keys.first("k0", 70) == 70  # new, below the greatest
    assert keys.first("k0", 80) == 70


def test_many_keys_out_of_order_are_found_again_after_moving_to_the_table() -> None:
    names = [f"{i:09d}" for i in range(5_000)]
    random.Random(0).shuffle(names)
    with mock.patch.object(keys_module, "DICT_KEYS", 100):
        keys = ShardKeys()
        assert [keys.first(k, i) for i, k in enumerate(names)] == list(range(5_000))
        assert keys._table is not None and not keys._dict
        assert [keys.first(k, 10**9) for k in names] == list(range(5_000))


def _bytes_per_key(names: list[str]) -> float:
    tracemalloc.start()
    try:
        keys = ShardKeys()
        for offset, key in enumerate(names):
            keys.first(key, offset * 1024)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held / len(names)


def test_keys_cost_a_fraction_of_a_dict() -> None:
    # a dict of these str keys to int offsets: about 130 bytes each
    names = [f"{i:09d}" for i in range(20_000)]
    assert _bytes_per_key(names) < 30  # ascending
    random.Random(1).shuffle(names)
    with mock.patch.object(keys_module, "DICT_KEYS", 1_000):
        assert _bytes_per_key(names) < 45  # out of order, past the dict
