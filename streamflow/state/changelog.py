"""Append a store's changes to its changelog topic and read them back.

Each state store has a compacted topic ``<pipeline>.<store>.changelog``; a
task writes its partition of it (the task's input partition) and is its only
writer. Compaction keeps the newest record per key, so the topic stays about
as large as the state.

Record format (version 2, named by the checkpoint's ``"v"``): a record carries
the exact bytes the store keeps in LMDB, so a checkpoint encodes each change
once and a restore writes what it fetched without decoding it::

    key    msgpack bin   packb(state_key, use_bin_type=True), the LMDB key
    value  msgpack bin   packb(state_value, use_bin_type=True), the LMDB value
           or nil        a tombstone: the key was deleted

So a reader of the topic unpacks the record (the log does that) and then
unpacks the key and value bytes once more. Version 1 (streamflow before this
format) stored the state key and value themselves; those records are refused
(``legacy_format_error``), never misread.

With ``exactly_once``, every append carries a ``ProducerIdentity`` derived
from the topic name and sequence numbers equal to the offsets the records are
expected to land at. A retried append whose first attempt did land is then
dropped by the log, and a stale writer (a task that lost its partition but
still runs) cannot append over records the new owner wrote.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Final

from streamflow.errors import StateStoreError, TopicExists
from streamflow.log import Columns, ProducerIdentity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from streamflow.log import RecordBatch, Transport

logger = logging.getLogger(__name__)

#: Bytes asked per fetch while restoring.
RESTORE_FETCH_BYTES: Final = 4 << 20


def changelog_topic(pipeline: str, store: str) -> str:
    """Return the changelog topic of *store* in *pipeline*.

    >>> changelog_topic("fraud", "spend")
    'fraud.spend.changelog'
    """
    return f"{pipeline}.{store}.changelog"


def changelog_producer(topic: str) -> ProducerIdentity:
    """Return the stable producer identity used for idempotent appends to *topic*.

    The id is derived from the name (BLAKE2b, 63 bits), so every process and
    every restart of a task uses the same one.

    >>> changelog_producer("a.b.changelog") == changelog_producer("a.b.changelog")
    True
    """
    digest = hashlib.blake2b(topic.encode(), digest_size=8).digest()
    return ProducerIdentity(int.from_bytes(digest, "big") >> 1)


async def ensure_changelog(
    transport: Transport, topic: str, partition: int, partitions: int
) -> None:
    """Create the compacted changelog *topic* if missing; check it has *partition*.

    Raises:
        StateStoreError: if the existing topic has too few partitions.
    """
    if topic not in await transport.topics():
        try:
            await transport.create_topic(
                topic, partitions=max(partitions, partition + 1), cleanup_policy="compact"
            )
        except TopicExists:
            pass  # another task of the same stage created it first
    found = len((await transport.describe(topic)).partitions)
    if partition >= found:
        raise StateStoreError(
            f"changelog {topic!r} has {found} partitions but task partition {partition} "
            "needs one of its own: recreate the changelog with enough partitions"
        )


class ChangelogWriter:
    """Append one store's changes to its partition of the changelog.

    One task at a time (the task owning the partition is its only writer).
    """

    def __init__(
        self, transport: Transport, topic: str, partition: int, *, exactly_once: bool
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.partition = partition
        self.producer = changelog_producer(topic) if exactly_once else None
        self._end_offset: int | None = None

    async def end_offset(self) -> int:
        """Return the partition's end offset (asked once, then tracked)."""
        if self._end_offset is None:
            _, self._end_offset = await self.transport.offsets(self.topic, self.partition)
        return self._end_offset

    async def append(self, keys: list[bytes], values: list[bytes | None]) -> int:
        """Append one batch of changes; return the changelog end offset after it.

        Args:
            keys: The encoded keys (the LMDB keys).
            values: The encoded values (the LMDB values); ``None`` is a tombstone.

        If this raises, the outcome is unknown: the next call asks the log for
        its end offset again rather than trusting the tracked one.
        """
        if not keys:
            return await self.end_offset()
        expected = await self.end_offset()
        self._end_offset = None
        columns = Columns(keys=keys, values=values)
        if self.producer is None:
            first = await self.transport.append(self.topic, self.partition, columns)
        else:
            first = await self.transport.append(
                self.topic, self.partition, columns, producer=self.producer, sequence=expected
            )
        if first >= expected:
            self._end_offset = first + len(keys)
        return await self.end_offset()


def legacy_format_error(topic: str, partition: int) -> StateStoreError:
    """Return the error for a changelog record that is not in the current format.

    >>> "Delete the job's state directory" in str(legacy_format_error("p.s.changelog", 0))
    True
    """
    return StateStoreError(
        f"changelog {topic}[{partition}] holds records whose key or value is not msgpack "
        "bytes: it was written by an older streamflow (changelog format 1), which this "
        "version cannot read. Delete the job's state directory and the changelog topic, "
        "and reset the group's committed offsets (or use a new group), then run the job "
        "again to rebuild the state from its input"
    )


async def read_changelog(
    transport: Transport,
    topic: str,
    partition: int,
    start: int,
    end: int,
    apply: Callable[[RecordBatch], Awaitable[None]],
) -> None:
    """Call *apply* with every batch of records in ``[start, end)``, in order.

    Compaction gaps are skipped; *start* below the partition's first kept
    offset starts at that offset.
    """
    first, last = await transport.offsets(topic, partition)
    position = max(start, first)
    end = min(end, last)
    tp = (topic, partition)
    while position < end:
        found = await transport.fetch({tp: position}, max_bytes=RESTORE_FETCH_BYTES, timeout=0.0)
        batches = found.get(tp, [])
        if not batches:
            # Everything from here to the end was compacted away.
            return
        for batch in batches:
            if batch.offsets[0] >= end:
                return
            if batch.offsets[-1] >= end:
                cut = next(i for i, offset in enumerate(batch.offsets) if offset >= end)
                batch = _head(batch, cut)
            await apply(batch)
            position = batch.next_offset


def _head(batch: RecordBatch, count: int) -> RecordBatch:
    return type(batch)(
        batch.offsets[:count],
        batch.timestamps[:count],
        batch.keys[:count],
        batch.values[:count],
        None if batch.headers is None else batch.headers[:count],
    )
