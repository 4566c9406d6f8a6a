"""Map offsets and timestamps to places in one segment: the sparse indexes (derived).

Both indexes live in memory and are written whole, as ``.index`` and ``.timeindex``
files, when a segment rolls or the log closes. They are derived from the ``.log``
file: recovery rebuilds a missing, garbled or inconsistent one. Entries are added
every ``INDEX_INTERVAL_BYTES`` of log, always at a batch boundary.

``.index``: entries of 8 bytes, big-endian ``relative_offset u32, position u32``,
where ``relative_offset`` is a batch's ``base_offset`` minus the segment's base
offset and ``position`` its byte position in the ``.log`` file.

``.timeindex``: entries of 12 bytes, big-endian ``timestamp i64, relative_offset u32``:
every batch before ``relative_offset`` has timestamps at most ``timestamp``, so a
search for the first record at or after a time can start at the last entry whose
timestamp is below it.

One writer at a time (the partition lock); readers may look up concurrently:
entries are only appended (positions before offsets) or replaced wholesale.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from typing import Final

INDEX_INTERVAL_BYTES: Final = 4096
OFFSET_ENTRY: Final = struct.Struct(">II")
TIME_ENTRY: Final = struct.Struct(">qI")


class OffsetIndex:
    """Sparse offset -> position map of one segment."""

    __slots__ = ("base_offset", "offsets", "positions")

    def __init__(self, base_offset: int) -> None:
        self.base_offset = base_offset
        self.offsets: list[int] = []
        self.positions: list[int] = []

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, position: int) -> None:
        """Record that the batch starting at *offset* sits at byte *position*."""
        # positions first: a concurrent lookup finds the offset only once its position exists
        self.positions.append(position)
        self.offsets.append(offset)

    def lookup(self, offset: int) -> tuple[int, int]:
        """Return ``(offset, position)`` of the last entry at or before *offset*.

        Returns ``(base_offset, 0)`` when no entry is that early.

        >>> index = OffsetIndex(100)
        >>> index.add(100, 0); index.add(150, 4100)
        >>> index.lookup(160)
        (150, 4100)
        >>> index.lookup(120)
        (100, 0)
        """
        i = bisect_right(self.offsets, offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.offsets[i], self.positions[i]

    def truncate(self, position: int) -> None:
        """Drop the entries at or after byte *position*."""
        i = bisect_left(self.positions, position)
        del self.offsets[i:]
        del self.positions[i:]

    def encode(self) -> bytes:
        """Return the ``.index`` file contents."""
        base = self.base_offset
        return b"".join(
            OFFSET_ENTRY.pack(o - base, p)
            for o, p in zip(self.offsets, self.positions, strict=True)
        )

    @classmethod
    def decode(cls, base_offset: int, data: bytes, log_size: int) -> OffsetIndex | None:
        """Parse ``.index`` contents; return None when they cannot be right.

        The entries must be strictly increasing in offset and position and point
        inside a log of *log_size* bytes; the caller checks that they land on batches.
        """
        if len(data) % OFFSET_ENTRY.size:
            return None
        index = cls(base_offset)
        last_offset = last_position = -1
        for relative, position in OFFSET_ENTRY.iter_unpack(data):
            if relative <= last_offset or position <= last_position or position >= log_size:
                return None
            index.add(base_offset + relative, position)
            last_offset, last_position = relative, position
        if index.positions and index.positions[0] != 0:
            return None
        return index


class TimeIndex:
    """Sparse timestamp -> offset map of one segment."""

    __slots__ = ("base_offset", "timestamps", "offsets")

    def __init__(self, base_offset: int) -> None:
        self.base_offset = base_offset
        self.timestamps: list[int] = []
        self.offsets: list[int] = []

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, timestamp: int, offset: int) -> None:
        """Record that every batch before *offset* has timestamps at most *timestamp*."""
        self.offsets.append(offset)
        self.timestamps.append(timestamp)

    def lookup(self, timestamp: int) -> int:
        """Return an offset before which every record is older than *timestamp*.

        >>> index = TimeIndex(0)
        >>> index.add(10, 5); index.add(20, 9)
        >>> index.lookup(15), index.lookup(10), index.lookup(99)
        (5, 0, 9)
        """
        i = bisect_left(self.timestamps, timestamp) - 1
        if i < 0:
            return self.base_offset
        return self.offsets[i]

    def truncate(self, offset: int) -> None:
        """Drop the entries at or after *offset*."""
        i = bisect_left(self.offsets, offset)
        del self.offsets[i:]
        del self.timestamps[i:]

    def encode(self) -> bytes:
        """Return the ``.timeindex`` file contents."""
        base = self.base_offset
        return b"".join(
            TIME_ENTRY.pack(t, o - base) for t, o in zip(self.timestamps, self.offsets, strict=True)
        )

    @classmethod
    def decode(cls, base_offset: int, data: bytes, next_offset: int) -> TimeIndex | None:
        """Parse ``.timeindex`` contents; return None when they cannot be right."""
        if len(data) % TIME_ENTRY.size:
            return None
        index = cls(base_offset)
        last_time = None
        last_offset = -1
        for timestamp, relative in TIME_ENTRY.iter_unpack(data):
            offset = base_offset + relative
            if relative <= last_offset or offset >= next_offset:
                return None
            if last_time is not None and timestamp < last_time:
                return None
            index.add(timestamp, offset)
            last_time, last_offset = timestamp, relative
        return index
