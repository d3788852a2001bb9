"""What an epoch holds: samples handed out are not kept by the slot they came from."""

from __future__ import annotations

import pytest

from streaming_wds import StreamingWebDataset, StreamOptions
from tests.helpers import all_keys, memory_dataset


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_slot_holds_only_the_samples_of_its_block_not_handed_out_yet(shuffle: bool) -> None:
    store = memory_dataset(120, 10)
    opts = StreamOptions(interleave=4, shuffle_block=8, chunk_size=700)
    it = iter(StreamingWebDataset(store, shuffle=shuffle, seed=3, options=opts))
    delivered: list[str] = []
    for sample in it:
        delivered.append(sample["__key__"])
        slots = [slot for slot in it._slots if slot is not None]
        held = [raw.key for slot in slots for raw in slot.pending]
        assert not set(held) & set(delivered)
        # each block: what was handed out of it plus what it still holds
        assert all(slot.pos + len(slot.pending) == slot.block_size <= 8 for slot in slots)
    assert sorted(delivered) == all_keys(120)
