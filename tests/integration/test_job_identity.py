"""A rerun resumes only the same job: other inputs or other function arguments are refused."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from streaming_wds import ConfigError, map, optimize


def to_sample(x: int, tag: str = "") -> dict[str, Any]:
    return {"__key__": f"k{x:05d}", "txt": f"{tag}{x}"}


def write_file(x: int, out: str, tag: str = "") -> None:
    Path(out, f"{x}.txt").write_text(f"{tag}{x}")


def test_optimize_refuses_other_inputs_or_arguments(tmp_path: Path) -> None:
    optimize(to_sample, [1, 2, 3], tmp_path, num_workers=0, progress=False)
    assert optimize(to_sample, [1, 2, 3], tmp_path, num_workers=0, progress=False).samples == 3
    for fn, inputs in (
        (to_sample, [100, 200, 300]),
        (functools.partial(to_sample, tag="b"), [1, 2, 3]),
    ):
        with pytest.raises(ConfigError, match="records a different optimize job"):
            optimize(fn, inputs, tmp_path, num_workers=0, progress=False)
    with pytest.raises(ConfigError, match="records a different optimize job"):
        optimize(to_sample, [1, 2, 3], tmp_path, num_workers=0, progress=False, on_error="skip")


def test_map_refuses_other_inputs_or_arguments(tmp_path: Path) -> None:
    map(functools.partial(write_file, tag="a"), [1, 2, 3], tmp_path, num_workers=0, progress=False)
    again = map(functools.partial(write_file, tag="a"), [1, 2, 3], tmp_path, num_workers=0, progress=False)
    assert (again.done, again.skipped_done) == (3, 3)
    for fn, inputs in (
        (functools.partial(write_file, tag="a"), [1001, 1002, 1003]),
        (functools.partial(write_file, tag="b"), [1, 2, 3]),
    ):
        with pytest.raises(ConfigError, match="records a different map job"):
            map(fn, inputs, tmp_path, num_workers=0, progress=False)
    assert sorted(p.read_text() for p in tmp_path.glob("*.txt")) == ["a1", "a2", "a3"]
