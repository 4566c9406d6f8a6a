"""Keep the committed offsets of consumer groups, durably, in an internal topic.

Commits are appended to the compacted topic ``__consumer_offsets`` (one
partition, created on first use) with the key ``[group, topic, partition]``
and the value ``[offset, metadata]``; compaction keeps the newest commit per
key. The store holds every committed offset in memory too, rebuilt by reading
the topic from its start when the store loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import trio

from ..errors import TopicExists
from .transport import Columns, Committed, TopicPartition

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .directory import Log

OFFSETS_TOPIC: Final = "__consumer_offsets"
_READ_BYTES: Final = 4 << 20

OffsetKey = tuple[str, str, int]


def load_offsets(log: Log) -> dict[OffsetKey, Committed]:
    """Read every commit in ``__consumer_offsets``; the newest per key wins. Blocking."""
    found: dict[OffsetKey, Committed] = {}
    if not log.has_topic(OFFSETS_TOPIC):
        return found
    partition = log.partition(OFFSETS_TOPIC, 0)
    offset = partition.start_offset
    end = partition.end_offset
    while offset < end:
        batches = partition.read_batches(offset, max_bytes=_READ_BYTES)
        if not batches:
            break
        for batch in batches:
            for key, value in zip(batch.keys, batch.values, strict=True):
                parsed = _parse_key(key)
                if parsed is None:
                    continue
                if value is None:
                    found.pop(parsed, None)
                elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
                    found[parsed] = Committed(value[0], value[1])
            offset = batch.next_offset
    return found


def _parse_key(key: Any) -> OffsetKey | None:
    if (
        isinstance(key, list)
        and len(key) == 3
        and isinstance(key[0], str)
        and isinstance(key[1], str)
        and isinstance(key[2], int)
    ):
        return (key[0], key[1], key[2])
    return None


def append_commits(log: Log, group: str, offsets: dict[TopicPartition, Committed]) -> None:
    """Append one batch of commits to ``__consumer_offsets``, creating it if needed. Blocking."""
    if not log.has_topic(OFFSETS_TOPIC):
        try:
            log.create_topic(OFFSETS_TOPIC, partitions=1, cleanup_policy="compact", internal=True)
        except TopicExists:
            pass
    columns = Columns(
        [[group, topic, partition] for topic, partition in offsets],
        [[c.offset, c.metadata] for c in offsets.values()],
    )
    log.partition(OFFSETS_TOPIC, 0).append_columns(columns.keys, columns.values)


class OffsetStore:
    """Committed offsets of every group of one log. Safe from many tasks.

    Commits are appended one at a time, and applied in memory once the append
    succeeded: a commit that failed (``StorageError``, ``PartitionOffline``) is
    not visible, and a reader never sees an offset that is not stored.
    """

    def __init__(self, log: Log) -> None:
        self._log = log
        self._offsets: dict[OffsetKey, Committed] | None = None
        self._lock = trio.Lock()

    async def _loaded(self) -> dict[OffsetKey, Committed]:
        if self._offsets is None:
            async with self._lock:
                if self._offsets is None:
                    self._offsets = await trio.to_thread.run_sync(load_offsets, self._log)
        return self._offsets

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        check: Callable[[Iterable[TopicPartition]], None] | None = None,
    ) -> None:
        """Store *offsets* for *group*; *check* (run first, atomically) may refuse them."""
        await self._loaded()
        async with self._lock:
            assert self._offsets is not None
            if check is not None:
                check(offsets.keys())
            await trio.to_thread.run_sync(append_commits, self._log, group, offsets)
            for (topic, partition), committed in offsets.items():
                self._offsets[(group, topic, partition)] = committed

    async def groups(self) -> set[str]:
        """Return the groups that have at least one committed offset."""
        return {group for group, _, _ in await self._loaded()}

    async def get(
        self, group: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group* for *partitions* that have one."""
        stored = await self._loaded()
        out: dict[TopicPartition, Committed] = {}
        for topic, partition in partitions:
            found = stored.get((group, topic, partition))
            if found is not None:
                out[(topic, partition)] = found
        return out
