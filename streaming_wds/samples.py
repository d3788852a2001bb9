"""Group tar members into samples by webdataset's key convention.

A member ``dir/k1.seg.png`` belongs to sample key ``dir/k1`` as field ``seg.png``: the key is the
path up to the first dot of the basename, the field is the rest, lowercased. Consecutive members
with the same key form one sample. Top-level names like ``__index__`` are metadata and skipped
(as webdataset does).

These give a sample carrying an error, which the consumer raises as a
:class:`~streaming_wds.errors.SampleError` or, under ``on_error="skip"``, drops and counts:

* a member without an extension (it belongs to no sample);
* a field seen twice in one sample;
* a member path that is absolute or has a ``..`` component (nothing is ever written under a
  member's name, but such a name is never what a dataset writer meant);
* a key seen earlier in the same shard, not adjacent to its first members. A reader resumed
  mid-shard only knows the keys from where it resumed.

A sample whose members are split across two shards (its last members at the end of one shard,
the rest at the start of the next) cannot be put together by a streaming reader: it is read as
two samples with the same key, one per shard. With a schema, each half lacks the fields the
other holds and raises :class:`~streaming_wds.errors.MissingFieldError` naming the key and the
first missing field; without one, both halves are delivered as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .keys import ShardKeys
from .tar import Member, TarReader, shown

log = logging.getLogger(__name__)


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of a member path, or ``None`` if its basename has no extension."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None
    return name[:dot], name[dot + 1 :].lower()


def is_meta(name: str) -> bool:
    """Whether a member is webdataset metadata (``__name__`` at the top level)."""
    if not name.startswith("__"):
        return False
    head = name.split("/", 1)[0]  # starts with "__" too: it is a prefix of name without a "/"
    return len(head) > 4 and head.endswith("__")


def path_problem(name: str) -> str | None:
    """Why a member path is refused (absolute, or with a ``..`` component), or ``None``."""
    if name.startswith("/"):
        return f"member {shown(name)} has an absolute path"
    if ".." in name.split("/"):
        return f"member {shown(name)} has a '..' component in its path"
    return None


@dataclass(slots=True)
class RawSample:
    """A sample's undecoded fields, where it starts in the shard, and any grouping error."""

    key: str
    offset: int
    fields: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


class SampleReader:
    """Reads whole samples from a :class:`TarReader`, keeping one member of look-ahead."""

    def __init__(self, tar: TarReader) -> None:
        self.tar = tar
        self._pending: Member | None = None
        self._pending_parts: tuple[str, str] | None = None  # split_name of the pending member
        self._seen = ShardKeys()  # offset of the first sample of each key in this shard

    @property
    def next_offset(self) -> int:
        """Byte offset at which the next sample starts (where a resumed read begins)."""
        return self._pending.offset if self._pending is not None else self.tar.source.tell()

    def _next_member(self) -> Member | None:
        while True:
            member = self.tar.next_member()
            if member is None or not is_meta(member.name):
                return member
            log.debug("skipping metadata member %s in %s", member.name, self.tar.url)

    def next_sample(self) -> RawSample | None:
        """The next sample, or ``None`` at the end of the shard.

        Raises:
            ShardFormatError: At a corrupt or truncated header. The sample being read when it is
                met is not returned: its end could not be confirmed, so it may be incomplete.
        """
        member, parts = self._pending, self._pending_parts
        self._pending = self._pending_parts = None
        if member is None:
            member = self._next_member()
            if member is None:
                return None
            parts = split_name(member.name)
        if parts is None:
            return RawSample(
                key=member.name,
                offset=member.offset,
                error=f"member {shown(member.name)} has no extension, so it belongs to no sample",
            )
        key, name = parts
        sample = RawSample(key=key, offset=member.offset, fields={name: member.data})
        sample.error = path_problem(member.name)  # the sample's other members share its directory
        first = self._seen.first(key, member.offset)
        if first != member.offset and sample.error is None:
            sample.error = (
                f"key {shown(key)} already appeared at byte {first} in this shard; "
                "members of a sample must be adjacent"
            )
        while True:
            member = self._next_member()
            if member is None:
                return sample
            parts = split_name(member.name)
            if parts is None or parts[0] != key:
                self._pending, self._pending_parts = member, parts
                return sample
            if parts[1] in sample.fields and sample.error is None:
                sample.error = f"field {shown(parts[1])} appears twice (member {shown(member.name)})"
            sample.fields[parts[1]] = member.data

    def take(self, n: int) -> list[RawSample]:
        """Up to ``n`` samples; fewer only at the end of the shard."""
        out: list[RawSample] = []
        while len(out) < n:
            sample = self.next_sample()
            if sample is None:
                break
            out.append(sample)
        return out
