"""The package is typed for its users: mypy reads the installed package through py.typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONSUMER = """
from streaming_wds import S3Options, StreamingDataLoader, StreamingWebDataset, StreamOptions

ds = StreamingWebDataset(
    "s3://b/p", split="train", schema={".cls": "int"}, s3=S3Options(region="us-east-1"),
    options=StreamOptions(interleave=4),
)
loader = StreamingDataLoader(ds, batch_size=2)
state: dict[str, object] = loader.state_dict()
counts: dict[str, int] = ds.error_counts
n: int = ds.options.interleave
wrong: str = ds.options.interleave
"""


@pytest.mark.slow
def test_mypy_sees_the_public_api_types(tmp_path: Path) -> None:
    (tmp_path / "consumer.py").write_text(CONSUMER)
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(repo / ".mypy_cache"), "consumer.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert lines == [
        'consumer.py:12: error: Incompatible types in assignment (expression has type "int", '
        'variable has type "str")  [assignment]'
    ], result.stdout
