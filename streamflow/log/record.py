"""Define the values that go into the log and come out of it.

``Message`` is what a caller appends, ``Record`` is what a reader gets back,
and ``RecordBatch`` is the decoded, columnar form of one on-disk batch that the
broker, client and runtime pass around without building a ``Record`` per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Headers = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One record to append; ``timestamp=None`` means "now" (ms since the epoch)."""

    key: Any
    value: Any
    timestamp: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One record read back from a partition."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Any
    value: Any
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """The records of one stored batch, as parallel columns.

    ``offsets[i]``, ``timestamps[i]``, ``keys[i]``, ``values[i]`` and
    ``headers[i]`` (when ``headers`` is not ``None``) describe the i-th record.
    Offsets are increasing; a compacted batch may have gaps between them.
    """

    offsets: list[int]
    timestamps: list[int]
    keys: list[Any]
    values: list[Any]
    headers: list[Headers | None] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def next_offset(self) -> int:
        """Return the offset just after this batch's last record."""
        return self.offsets[-1] + 1

    def records(self, topic: str, partition: int) -> list[Record]:
        """Build one ``Record`` per entry (the convenient, slower form)."""
        hs = self.headers if self.headers is not None else [None] * len(self.offsets)
        return [
            Record(topic, partition, o, t, k, v, h)
            for o, t, k, v, h in zip(
                self.offsets, self.timestamps, self.keys, self.values, hs, strict=True
            )
        ]

    def since(self, offset: int) -> RecordBatch:
        """Return the part of this batch at or after *offset*.

        >>> b = RecordBatch([4, 5, 7], [1, 1, 2], ["a", "b", "c"], [1, 2, 3])
        >>> b.since(5).offsets
        [5, 7]
        """
        if not self.offsets or self.offsets[0] >= offset:
            return self
        i = 0
        n = len(self.offsets)
        while i < n and self.offsets[i] < offset:
            i += 1
        return RecordBatch(
            self.offsets[i:],
            self.timestamps[i:],
            self.keys[i:],
            self.values[i:],
            None if self.headers is None else self.headers[i:],
        )
