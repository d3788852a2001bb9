"""A streaming tar reader: members straight from a shard's bytes, no ``tarfile`` objects.

Understands ustar (with prefix), GNU long names (``L``) and PAX headers (``x``: ``path`` and
``size``; ``g`` is ignored). Directories are skipped. Links, devices and FIFOs are refused:
a shard is data, never a file-system recipe; nothing is ever written under a member's name.

Every problem raises :class:`~streaming_wds.errors.ShardFormatError` with the byte offset of the
header it concerns: a corrupt header, a member or extended header over its size limit (checked
from the header, before its data is read), and any truncation. The archive must end with its
end-of-archive marker (a zero block): data that stops at a member boundary without one is
truncated, so a cut at any 512-byte boundary is detected. An empty object is not an archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from zlib import adler32

from .errors import ShardFormatError

BLOCK = 512
#: Largest GNU long name or PAX header (``L``, ``x``, ``g``) accepted; a larger one is refused.
MAX_EXTENDED_HEADER_BYTES = 1024 * 1024
_ZEROS = bytes(BLOCK)
_NO_END_MARKER = "truncated: the data ends with no end-of-archive marker"
_EXTENDED = {b"L": "GNU long name", b"x": "PAX header", b"g": "PAX global header"}
_REGULAR = (b"0", b"\0", b"7")
_PLAIN_KINDS = b"0\0"  # header[156] of the kinds _plain_member reads (an int: in a bytes)
_SKIPPED = (b"5",)  # directories
_REFUSED = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
}


class ByteSource(Protocol):
    def read(self, n: int) -> bytes: ...
    def skip(self, n: int) -> int: ...
    def tell(self) -> int: ...


class WindowSource(ByteSource, Protocol):
    """A :class:`ByteSource` that also shows the bytes it holds in memory right now, so the
    reader can take a member that lies wholly inside them with no call per field."""

    def window(self) -> tuple[bytes | memoryview, int]:
        """The bytes held now and the position of the next unread one among them."""
        ...

    def advance(self, n: int) -> None:
        """Consume ``n`` bytes, all inside the current window."""
        ...


class BytesSource:
    """A :class:`ByteSource` over bytes already in memory."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        done = min(n, len(self.data) - self.pos)
        self.pos += done
        return done

    def tell(self) -> int:
        return self.pos

    def window(self) -> tuple[bytes, int]:
        return self.data, self.pos

    def advance(self, n: int) -> None:
        self.pos += n


@dataclass(slots=True)
class Member:
    """A regular file in the archive: its path, the offset of its first header, its bytes."""

    name: str
    offset: int
    data: bytes


def shown(name: str | bytes) -> str:
    """``repr(name)`` for messages, cut to its first 200 characters (and its length) if longer."""
    if len(name) <= 200:
        return repr(name)
    unit = "bytes" if isinstance(name, bytes) else "characters"
    return f"{name[:200]!r}... ({len(name)} {unit})"


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    try:  # the usual "digits, then NULs or spaces" (int() itself strips leading spaces)
        return int(field.rstrip(b"\0 "), 8)
    except ValueError:  # a NUL before the end, or nothing: the text up to the first NUL
        text = field.split(b"\0", 1)[0].strip(b" ")
        return int(text, 8) if text else 0


def _unsigned_checksum(header: bytes) -> int:
    """The header's byte sum with its checksum field counted as spaces (pieces of at most 256
    bytes, so that each Adler-32 half is exact)."""
    return (
        (adler32(header[:148]) & 0xFFFF)
        + (adler32(header[156:404]) & 0xFFFF)
        + (adler32(header[404:]) & 0xFFFF)
        + (8 * 32 - 3)
    )


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = _octal(header[148:156])
    except ValueError:  # not octal digits: not a tar header at all
        return False
    unsigned = _unsigned_checksum(header)
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
    return stored == signed


def _pax_records(data: bytes, url: str, offset: int) -> dict[str, bytes]:
    """The ``"<length> <key>=<value>\\n"`` records of a PAX header's data."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)  # a length of at most 20 digits, then a space
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ShardFormatError(url, offset, "malformed PAX header record")
        end = pos + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:  # must end in a newline
            raise ShardFormatError(url, offset, "malformed PAX header record length")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ShardFormatError(url, offset, "PAX header record without '='")
        records[key.decode("utf-8", "replace")] = value
        pos = end
    return records


class TarReader:
    """Yields the regular-file members of a tar stream in order.

    Args:
        source: The shard's bytes, from the offset of a member's first header (or 0).
        url: The shard's URL, for error messages.
        max_member_bytes: Largest member accepted (``None``: no limit). A larger one is refused
            from its header, before any of its data is read, so memory stays bounded.
    """

    def __init__(self, source: ByteSource, url: str, *, max_member_bytes: int | None = None) -> None:
        self.source = source
        self.url = url
        self.max_member_bytes = max_member_bytes
        self.ended = False
        self._windowed = hasattr(source, "window") and hasattr(source, "advance")

    def _read_exact(self, n: int, offset: int, what: str, name: str | None = None) -> bytes:
        data = self.source.read(n)
        if len(data) != n:
            what = what if name is None else f"{what} {shown(name)}"
            raise ShardFormatError(self.url, offset, f"truncated {what}: expected {n} bytes, got {len(data)}")
        return data

    def _skip_exact(self, n: int, offset: int, what: str, name: str) -> None:
        if self.source.skip(n) != n:
            raise ShardFormatError(self.url, offset, f"truncated {what} {shown(name)}")

    def next_member(self) -> Member | None:
        """The next regular file, or ``None`` at the end of the archive."""
        if self._windowed and not self.ended:
            member = self._plain_member()
            if member is not None:
                return member
        return self._any_member()

    def _plain_member(self) -> Member | None:
        """The next member if it is the common case, read straight from the source's window: a
        plain file (no extended header, no prefix) with a valid header that lies wholly in the
        window. ``None`` (with nothing consumed) leaves every other case, error or not, to
        :meth:`_any_member`, which reads the same bytes again and judges them."""
        source: WindowSource = self.source  # type: ignore[assignment]  # checked in __init__
        buf, pos = source.window()
        start = pos + BLOCK
        if start > len(buf):
            return None
        header = bytes(buf[pos:start])
        if header[156] not in _PLAIN_KINDS or header[345]:  # another type, or a ustar prefix
            return None
        if not _checksum_ok(header):
            return None
        try:
            size = _octal(header[124:136])
        except ValueError:
            return None
        cap = self.max_member_bytes
        if size < 0 or (cap is not None and size > cap):
            return None
        offset = source.tell()
        # undecodable: the general path would raise this same error for this same header
        name = self._decode_name(header[:100].split(b"\0", 1)[0], offset)
        if not name or name[-1] == "/":
            return None
        end = start + size
        padded = end + (-size) % BLOCK
        if padded <= len(buf):
            data = bytes(buf[start:end])
            source.advance(padded - pos)
            return Member(name=name, offset=offset, data=data)
        source.advance(BLOCK)  # the data goes on past the window
        data = self._read_exact(size, offset, "data of member", name)
        self._skip_exact(padded - end, offset, "padding of member", name)
        return Member(name=name, offset=offset, data=data)

    def _any_member(self) -> Member | None:
        long_name: str | None = None
        pax: dict[str, bytes] = {}
        first_offset: int | None = None
        while not self.ended:
            offset = self.source.tell()
            header = self.source.read(BLOCK)
            if not header and first_offset is None:
                reason = "empty object, not a tar archive" if offset == 0 else _NO_END_MARKER
                raise ShardFormatError(self.url, offset, reason)
            if len(header) != BLOCK:
                raise ShardFormatError(self.url, offset, f"truncated tar header ({len(header)} of 512 bytes)")
            if header == _ZEROS:
                if first_offset is not None:
                    raise ShardFormatError(self.url, offset, "end-of-archive marker after an extended header")
                self.ended = True
                return None
            if not _checksum_ok(header):
                raise ShardFormatError(
                    self.url, offset, "tar header checksum mismatch (corrupt or not a tar file)"
                )
            kind = header[156:157]
            if first_offset is None and kind != b"g":  # a global header belongs to no member
                first_offset = offset
            try:
                size = _octal(header[124:136])
                if "size" in pax:
                    size = int(pax["size"])
            except ValueError:
                raise ShardFormatError(self.url, offset, "invalid size in tar or PAX header") from None
            if size < 0:
                raise ShardFormatError(self.url, offset, f"negative member size {size}")
            padded = size + (-size) % BLOCK
            if kind in _EXTENDED and size > MAX_EXTENDED_HEADER_BYTES:
                raise ShardFormatError(
                    self.url,
                    offset,
                    f"{_EXTENDED[kind]} of {size} bytes is over the limit of {MAX_EXTENDED_HEADER_BYTES}",
                )
            if kind == b"L":
                data = self._read_exact(padded, offset, "GNU long name")
                long_name = self._decode_name(data[:size].rstrip(b"\0"), offset)
                continue
            if kind in (b"x", b"g"):
                data = self._read_exact(padded, offset, "PAX header")
                if kind == b"x":
                    pax = _pax_records(data[:size], self.url, offset)
                continue
            if kind in _REFUSED:
                raise ShardFormatError(self.url, offset, f"unsupported tar member type: {_REFUSED[kind]}")
            name = self._member_name(header, long_name, pax, offset)
            if kind not in _REGULAR and kind not in _SKIPPED:
                raise ShardFormatError(
                    self.url, offset, f"unsupported tar member type {kind!r} for {shown(name)}"
                )
            if kind in _SKIPPED or (kind == b"\0" and name.endswith("/")):  # old-style directory
                self._skip_exact(padded, offset, "member", name)
                long_name, pax, first_offset = None, {}, None
                continue
            cap = self.max_member_bytes
            if cap is not None and size > cap:
                raise ShardFormatError(
                    self.url, offset, f"member {shown(name)} is {size} bytes, over max_member_bytes={cap}"
                )
            data = self._read_exact(size, offset, "data of member", name)
            self._skip_exact(padded - size, offset, "padding of member", name)
            return Member(name=name, offset=offset if first_offset is None else first_offset, data=data)
        return None

    def _decode_name(self, raw: bytes, offset: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ShardFormatError(self.url, offset, f"member name is not UTF-8: {shown(raw)}") from None

    def _member_name(self, header: bytes, long_name: str | None, pax: dict[str, bytes], offset: int) -> str:
        if "path" in pax:
            return self._decode_name(pax["path"], offset)
        if long_name is not None:
            return long_name
        name = header[0:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return self._decode_name(name, offset)
