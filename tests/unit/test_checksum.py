"""The CRC-32 used to check shards gives zlib's values, whichever implementation is loaded."""

from __future__ import annotations

import platform
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming_wds import checksum


def test_isal_is_used_where_installed() -> None:
    # a dependency where isal ships wheels: the benchmark figures rely on it
    if platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip("isal is not a dependency on this platform")
    import isal.isal_zlib

    assert checksum.implementation == "isal"
    assert checksum.crc32 is isal.isal_zlib.crc32


@given(st.lists(st.binary(max_size=5000), max_size=6), st.integers(0, 2**32 - 1))
def test_matches_zlib_piecewise(pieces: list[bytes], start: int) -> None:
    """Fed piece by piece (as the fetcher does) from any start value: zlib's value."""
    value, expected = start, start
    for piece in pieces:
        value = checksum.crc32(piece, value)
        expected = zlib.crc32(piece, expected)
    assert value == expected
    assert checksum.crc32(b"".join(pieces), start) == zlib.crc32(b"".join(pieces), start)


def test_known_value() -> None:
    assert checksum.crc32(b"123456789", 0) == 0xCBF43926  # the CRC-32 check value
    assert checksum.crc32(bytes(1 << 20), 0) == zlib.crc32(bytes(1 << 20))
