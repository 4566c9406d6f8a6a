"""Read records from Kafka at explicit positions, with a pool of consumers: ``FetchPool``.

A fetch borrows a group-less consumer, ``assign()``s it the asked positions
(unless it is already at exactly those positions, so that librdkafka's
prefetching carries on between calls), polls it in a worker thread for at
most ``MAX_WAIT`` seconds per hop until records come or the timeout passes,
and decodes what came into one ``RecordBatch`` per partition in the same
thread call. When a short wait ends empty, the partitions' watermarks say
whether records are stored there after all (then it waits for them, so a
fetch with ``timeout=0`` still returns stored records) or whether a
position is out of range.

Transactions: the consumers read committed records only. A transaction's
commit or abort marker takes an offset, and aborted records are skipped, so
the consumer's position (librdkafka's ``position()``, which moves past
both) can be ahead of the last record returned. A partition's batch then
ends there (``KafkaBatch.next_offset``); when a fetch returns no record for
a partition but its position moved, ``position_after`` remembers how far.
``assign()`` does not reset ``position()``: until the consumer delivers a
record of the partition or the value changes, it still reports the position
of the previous assignment, and is not used.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio
from confluent_kafka import KafkaError
from confluent_kafka import TopicPartition as KafkaPartition

from ..errors import OffsetOutOfRange
from .kafka_client import MAX_WAIT, new_consumer, translate, watermarks
from .kafka_codec import decode, decode_headers
from .record import RecordBatch

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from confluent_kafka import Consumer, Message
    from confluent_kafka.admin import AdminClient

    from .transport import TopicPartition

#: Consumer group id of the fetch consumers; they never join it or commit to it.
FETCH_GROUP: Final = "streamflow-fetch"
#: Fetch consumers kept open for reuse.
MAX_IDLE_FETCHERS: Final = 8
#: Records a fetch returns at most, for *max_bytes* of budget (bytes per record).
BYTES_PER_RECORD_ESTIMATE: Final = 128
MAX_FETCH_RECORDS: Final = 50_000
#: How long a fetch that found records waiting (by the watermarks) polls for them (s).
READY_WAIT: Final = 2.0
#: Records a fetch consumer reads ahead, at most (KiB; librdkafka's default is 64 MiB).
PREFETCH_KBYTES: Final = 8192
#: One poll while waiting for records the watermarks promise (s).
READY_POLL: Final = 0.05
#: Partitions whose skipped markers ``position_after`` remembers, at most.
MAX_SKIPS: Final = 10_000


@dataclass(frozen=True, slots=True)
class KafkaBatch(RecordBatch):
    """A ``RecordBatch`` whose reader's position ends at ``end``, past trailing markers.

    >>> KafkaBatch([3, 4], [0, 0], [None, None], [1, 2], None, 7).next_offset
    7
    """

    end: int = -1

    @property
    def next_offset(self) -> int:
        """Return where the reader is after this batch (after markers that follow it too)."""
        return max(self.offsets[-1] + 1, self.end)


@dataclass(slots=True, eq=False)
class _Fetcher:
    """A fetch consumer and the positions its assignment will deliver next."""

    consumer: Consumer
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    #: ``position()`` right after the last ``assign()``, per partition, while it is stale.
    stale: dict[TopicPartition, int] = field(default_factory=dict)


class FetchPool:
    """Fetch consumers of one transport, one per concurrent fetch. Safe from many tasks.

    Args:
        bootstrap: The cluster's ``bootstrap.servers`` (named in errors).
        settings: librdkafka consumer settings.
        admin: The transport's admin client (for watermarks).
    """

    def __init__(self, bootstrap: str, settings: Mapping[str, Any], admin: AdminClient) -> None:
        self._bootstrap = bootstrap
        self._settings = dict(settings)
        self._admin = admin
        self._idle: list[_Fetcher] = []
        self._closed = False
        #: (topic, partition) -> (asked offset, position past only markers and aborted records)
        self._skips: dict[TopicPartition, tuple[int, int]] = {}

    async def fetch(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read records at *positions* (known partitions), waiting up to *timeout* s.

        *max_bytes* bounds the number of records returned (estimated at
        ``BYTES_PER_RECORD_ESTIMATE`` bytes each).

        Raises:
            OffsetOutOfRange: a position is outside ``[start_offset, end_offset]``.
        """
        if not positions:
            await trio.sleep(max(0.0, timeout))
            return {}
        wanted = dict(positions)
        max_records = max(1, min(MAX_FETCH_RECORDS, max_bytes // BYTES_PER_RECORD_ESTIMATE))
        fetcher = self._borrow(wanted)
        deadline = trio.current_time() + max(0.0, timeout)
        try:
            while True:
                wait = min(MAX_WAIT, max(0.0, deadline - trio.current_time()))
                last = trio.current_time() + wait >= deadline
                found = await trio.to_thread.run_sync(
                    self._poll, fetcher, wanted, max_records, wait, last
                )
                if found or last:
                    return found
        except BaseException:
            # Records polled but not returned are lost to the caller: make the
            # next fetch assign() again at the caller's positions.
            fetcher.positions = {}
            raise
        finally:
            extra = self._give_back(fetcher)
            if extra is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(extra.consumer.close)

    def position_after(self, tp: TopicPartition, offset: int) -> int:
        """Return the position a fetch at *offset* of *tp* reached without finding records.

        Returns *offset* unless the last such fetch at exactly *offset* moved
        past transaction markers or aborted records only.
        """
        asked, position = self._skips.get(tp, (offset, offset))
        return position if asked == offset else offset

    async def aclose(self) -> None:
        """Close the idle consumers; busy ones are closed when their fetch ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for fetcher in idle:
            await trio.to_thread.run_sync(fetcher.consumer.close)

    def _borrow(self, positions: dict[TopicPartition, int]) -> _Fetcher:
        i = next((i for i, f in enumerate(self._idle) if f.positions == positions), -1)
        if self._idle:
            fetcher = self._idle.pop(i)
        else:
            consumer = new_consumer(
                self._settings,
                FETCH_GROUP,
                {"queued.max.messages.kbytes": PREFETCH_KBYTES},
                **{"auto.offset.reset": "error"},
            )
            fetcher = _Fetcher(consumer)
        return fetcher

    def _give_back(self, fetcher: _Fetcher) -> _Fetcher | None:
        """Put *fetcher* back in the pool; return one to close when the pool is full."""
        if self._closed:
            return fetcher
        self._idle.append(fetcher)
        if len(self._idle) > MAX_IDLE_FETCHERS:
            return self._idle.pop(0)
        return None

    def _poll(
        self,
        fetcher: _Fetcher,
        positions: dict[TopicPartition, int],
        max_records: int,
        wait: float,
        last: bool,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Poll once for up to *wait* s; on the *last* poll, check the watermarks. Blocking."""
        consumer = fetcher.consumer
        if fetcher.positions != positions:
            consumer.assign([KafkaPartition(t, p, o) for (t, p), o in positions.items()])
            fetcher.positions = dict(positions)
            fetcher.stale = self._raw_positions(consumer, positions)
        messages = self._consume(consumer, max_records, wait)
        if not messages and last:
            ends = self._ends(positions)
            deadline = time.monotonic() + READY_WAIT
            # Records are there, or only markers (a reader's position moves past them).
            while (
                not messages
                and self._waiting(fetcher, positions, ends)
                and time.monotonic() < deadline
            ):
                messages = self._consume(consumer, max_records, READY_POLL)
        return self._decode(fetcher, positions, messages)

    def _consume(self, consumer: Consumer, max_records: int, wait: float) -> list[Message]:
        first = consumer.poll(wait)
        if first is None:
            return []
        return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]

    def _ends(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Return the end offset of each partition of *positions*. Blocking.

        Raises:
            OffsetOutOfRange: a position is outside the partition's kept range.
        """
        by_topic: defaultdict[str, list[KafkaPartition]] = defaultdict(list)
        for t, p in positions:
            by_topic[t].append(KafkaPartition(t, p))
        ends: dict[TopicPartition, int] = {}
        for topic, partitions in by_topic.items():
            for p, (start, end) in watermarks(self._admin, partitions).items():
                offset = positions[(topic, p)]
                if not start <= offset <= end:
                    raise OffsetOutOfRange(topic, p, offset, start, end)
                ends[(topic, p)] = end
        return ends

    def _waiting(
        self,
        fetcher: _Fetcher,
        positions: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
    ) -> bool:
        """Return whether a partition's reader is still below its end offset. Blocking."""
        reached = self._positions(fetcher, positions)
        return any(reached[tp] < end for tp, end in ends.items())

    def _raw_positions(
        self, consumer: Consumer, positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        found = consumer.position([KafkaPartition(t, p) for t, p in positions])
        return {(kp.topic, kp.partition): kp.offset for kp in found if kp.error is None}

    def _positions(
        self, fetcher: _Fetcher, positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Return the consumer's position per partition (past markers), at least *positions*.

        A position still equal to the stale one seen right after ``assign()``
        is not used (the asked position stands).
        """
        reached = dict(positions)
        for tp, offset in self._raw_positions(fetcher.consumer, positions).items():
            if tp not in reached:
                continue
            if tp in fetcher.stale:
                if fetcher.stale[tp] == offset:
                    continue
                del fetcher.stale[tp]  # it moved: it now speaks of this assignment
            reached[tp] = max(reached[tp], offset)
        return reached

    def _decode(
        self, fetcher: _Fetcher, positions: dict[TopicPartition, int], messages: list[Message]
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Group *messages* by partition into batches and advance the positions. Blocking."""
        columns: dict[TopicPartition, RecordBatch] = {}
        for m in messages:
            topic, partition = m.topic(), m.partition()
            assert topic is not None
            assert partition is not None
            tp = (topic, partition)
            error = m.error()
            if error is not None:
                fetcher.positions = {}  # force a fresh assign() next time
                if error.code() == KafkaError._AUTO_OFFSET_RESET:
                    asked = positions.get(tp, -1)
                    start, end = watermarks(self._admin, [KafkaPartition(*tp)])[partition]
                    if start <= asked <= end:
                        # A stale event from an earlier fetch at another position
                        # of this pooled consumer: the asked position is fine.
                        continue
                    raise OffsetOutOfRange(topic, partition, asked, start, end)
                raise translate(error, self._bootstrap, topic=topic, partition=partition)
            offset = m.offset()
            assert offset is not None
            batch = columns.get(tp)
            if batch is None:
                batch = columns[tp] = RecordBatch([], [], [], [], [])
            batch.offsets.append(offset)
            batch.timestamps.append(m.timestamp()[1])
            batch.keys.append(decode(m.key()))
            batch.values.append(decode(m.value()))
            assert batch.headers is not None
            batch.headers.append(decode_headers(m.headers()))
            fetcher.positions[tp] = offset + 1
        for tp in columns:
            fetcher.stale.pop(tp, None)  # a delivered record set the position
        reached = self._positions(fetcher, positions)
        out: dict[TopicPartition, list[RecordBatch]] = {}
        for tp, batch in columns.items():
            headers = None if all(h is None for h in batch.headers or ()) else batch.headers
            end = reached[tp] if reached[tp] > batch.next_offset else -1
            if end >= 0:
                fetcher.positions[tp] = end
            out[tp] = [
                KafkaBatch(batch.offsets, batch.timestamps, batch.keys, batch.values, headers, end)
            ]
        for tp, asked in positions.items():
            if tp not in columns and reached[tp] > asked:
                if len(self._skips) >= MAX_SKIPS:
                    self._skips.clear()
                self._skips[tp] = (asked, reached[tp])
        return out
