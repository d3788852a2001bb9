"""One reusable resume harness: "before + after resume" must equal an uninterrupted run."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from streaming_wds import StreamingDataLoader, StreamingWebDataset

END = "end"  # cut after the iterator was exhausted (StopIteration seen)


def epoch_keys(loader: StreamingDataLoader) -> list[str]:
    return [k for batch in loader for k in batch["__key__"]]


def reference(make_loader: Callable[[], StreamingDataLoader], epochs: int = 2) -> list[list[str]]:
    loader = make_loader()
    return [epoch_keys(loader) for _ in range(epochs)]


def check_resume(
    make_loader: Callable[[], StreamingDataLoader], cut: int | str, ref: list[list[str]]
) -> dict[str, Any]:
    """Consume ``cut`` batches of epoch 0 (or all, for END), checkpoint through JSON, resume in a
    brand-new loader and check that the rest of epoch 0 and all of epoch 1 match ``ref``."""
    loader = make_loader()
    before: list[str] = []
    it = iter(loader)
    if cut == END:
        before = [k for batch in it for k in batch["__key__"]]
    else:
        assert isinstance(cut, int)
        for _ in range(cut):
            before.extend(next(it)["__key__"])
    state = json.loads(json.dumps(loader.state_dict()))
    del it, loader

    resumed = make_loader()
    resumed.load_state_dict(state)
    if cut == END:
        assert before == ref[0]
        assert epoch_keys(resumed) == ref[1], "a state taken after the epoch must resume into the next"
        return state
    after = epoch_keys(resumed)
    assert before + after == ref[0], f"cut {cut}: resumed epoch differs from the uninterrupted run"
    assert epoch_keys(resumed) == ref[1], f"cut {cut}: the epoch after the resumed one differs"
    return state


def dataset_factory(root: Any, **kw: Any) -> Callable[[], StreamingWebDataset]:
    return lambda: StreamingWebDataset(root, **kw)
