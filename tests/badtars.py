"""Hand-made tar blocks for tests of bad shards: any name, size field or type, valid checksums.

``tarfile`` refuses to write most of what these build (sizes that disagree with the data, names
it would normalise), so the blocks are put together by hand.
"""

from __future__ import annotations

BLOCK = 512
END = bytes(2 * BLOCK)  # the end-of-archive marker as the library's ShardWriter writes it


def set_checksum(block: bytearray) -> None:
    """Store the checksum of a header block (computed with the checksum field as spaces)."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def header(name: str | bytes, size: int, kind: bytes = b"0", *, size_field: bytes | None = None) -> bytes:
    """A ustar header block for ``name`` (at most 100 bytes) with ``size`` in its size field.

    Args:
        size_field: The raw 12 bytes of the size field instead (for example base-256).
    """
    raw = name.encode() if isinstance(name, str) else name
    assert len(raw) <= 100, raw
    block = bytearray(BLOCK)
    block[0 : len(raw)] = raw
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    field = size_field if size_field is not None else b"%011o\0" % size
    assert len(field) == 12, field
    block[124:136] = field
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    set_checksum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def raw_member(name: str | bytes, data: bytes, kind: bytes = b"0") -> bytes:
    """A member: its header, its data, the padding to a block."""
    return header(name, len(data), kind) + padded(data)


def pax_member(records: dict[str, str], name: str, data: bytes) -> bytes:
    """A PAX extended header with ``records``, then the member ``name`` (ustar name field)."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length += 1
        body += str(length).encode() + record
    return raw_member("././@PaxHeader", body, b"x") + raw_member(name, data)


def long_name_member(name: str | bytes, data: bytes) -> bytes:
    """A GNU long-name header (``L``) with ``name``, then the member itself."""
    raw = name.encode() if isinstance(name, str) else name
    return raw_member("././@LongLink", raw + b"\0", b"L") + raw_member(raw[:100], data)


def tar_of(members: list[tuple[str | bytes, bytes]]) -> bytes:
    """A complete archive of regular files, end-of-archive marker included."""
    return b"".join(raw_member(name, data) for name, data in members) + END


def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header says ``width`` x ``height``: tiny, but a bomb if decoded."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
