"""Batch records per partition and append them idempotently: the ``Producer``.

Each partition has a *lane*: a queue of records and one sender task that takes
up to ``batch_size`` records (waiting up to ``linger_ms`` for a batch to
fill), appends them as one batch and waits for the answer before it sends the
next one, so records of a partition are stored in the order they were queued.
Every batch carries the producer's random 63-bit id and a per-partition
sequence number; the log drops a batch it already holds, so a batch resent
after a lost connection or a broker restart is written once.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import trio

from ..errors import BrokerUnavailable, InvalidConfig, PartitionOffline, StorageError, UnknownTopic
from .partitioner import partition_for
from .transport import Columns, ProducerIdentity
from .wire import pack

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from .record import Headers
    from .transport import Transport

#: Bytes counted per record on top of its encoded key and value.
RECORD_OVERHEAD: Final = 16
MAX_BACKOFF: Final = 1.0


class RecordMetadata(NamedTuple):
    """Where a sent record was stored; ``offset`` is -1 when no longer known."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True, eq=False)
class _Chunk:
    """The records of one ``send``/``send_many`` call and their fate."""

    offsets: list[int]
    partitions: list[int]
    remaining: int
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class _Entry:
    chunk: _Chunk
    index: int
    key: Any
    value: Any
    timestamp: int | None
    headers: Headers | None
    size: int


@dataclass(slots=True, eq=False)
class _Lane:
    topic: str
    partition: int
    queue: deque[_Entry] = field(default_factory=deque)
    nonempty: trio.Event = field(default_factory=trio.Event)
    full: trio.Event = field(default_factory=trio.Event)
    next_sequence: int = 0


class Producer:
    """Send records to a log target in batches; idempotent. Safe from many tasks.

    Open with ``async with client.producer(...) as producer``. Leaving the
    block normally flushes every queued record; leaving it with an error
    cancels what is still queued.

    Args:
        transport: The target.
        batch_size: Most records per batch.
        linger_ms: How long a lane waits for a batch to fill before sending it.
            The default, 0, sends at once: while a partition's batch is in
            flight, records sent meanwhile queue up and leave together as the
            next batch, so concurrent senders batch without delaying a lone one.
        max_buffer_bytes: Bytes of queued, unacknowledged records above which
            ``send`` waits (backpressure).
        max_batch_bytes: Most encoded bytes per batch.
        delivery_timeout: Seconds a batch is retried while the target is
            unavailable (``BrokerUnavailable``) or cannot write (``StorageError``:
            nothing was stored, so a retry is safe) before its records fail with
            that error. ``PartitionOffline`` (a failed fsync) is never retried:
            what the log holds is uncertain until it is reopened.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int = 1000,
        linger_ms: int = 0,
        max_buffer_bytes: int = 32 << 20,
        max_batch_bytes: int = 1 << 20,
        delivery_timeout: float = 120.0,
    ) -> None:
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("linger_ms", linger_ms, 0),
            ("max_buffer_bytes", max_buffer_bytes, 1),
            ("max_batch_bytes", max_batch_bytes, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidConfig(name, value, f"an integer >= {low}")
        self._transport = transport
        self.batch_size = batch_size
        self.linger = linger_ms / 1000
        self.max_buffer_bytes = max_buffer_bytes
        self.max_batch_bytes = max_batch_bytes
        self.delivery_timeout = delivery_timeout
        self.identity = ProducerIdentity(secrets.randbits(63))
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._partition_counts: dict[str, int] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._buffered_bytes = 0
        self._space = trio.Event()
        self._unacked = 0
        self._idle = trio.Event()
        self._idle.set()
        self._flushing = 0
        self._closed = False
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Producer:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            self._closed = True
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            try:
                await self._stack.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
        return None

    async def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        partition: int | None = None,
        timestamp: int | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        """Queue one record and return where it was stored, once it is appended.

        Waits while the buffer is full. The record is visible to consumers
        (and fsynced first when the topic says ``fsync="always"``) when this
        returns.

        Raises:
            UnknownTopic: *topic* or *partition* does not exist.
            NotSerializable: *key*, *value* or *headers* cannot be encoded.
            RecordTooLarge: the target refused the record's size.
            BrokerUnavailable: the target stayed unreachable for ``delivery_timeout``.
            StorageError: the target's disk kept failing writes for ``delivery_timeout``.
            PartitionOffline: an fsync failed; the partition takes no writes until the
                log is reopened (the record may or may not be stored).
            trio.ClosedResourceError: the producer is closed.
        """
        count = await self._partition_count(topic)
        if partition is None:
            partition = self._choose(topic, key, count)
        elif not isinstance(partition, int) or not 0 <= partition < count:
            raise UnknownTopic(topic, partition if isinstance(partition, int) else None)
        chunk = _Chunk([-1], [partition], 1)
        await self._enqueue(topic, partition, _Entry(chunk, 0, key, value, timestamp, headers, 0))
        return RecordMetadata(topic, partition, (await self._outcome(chunk))[0])

    async def send_many(
        self, topic: str, values: Sequence[Any], keys: Sequence[Any] | None = None
    ) -> list[RecordMetadata]:
        """Queue many records of one topic and return where each was stored.

        Keyed records go to ``partition_for(key)``, unkeyed ones round-robin;
        records of one partition keep their order. Errors as for ``send``; on
        an error some of the records may have been stored.
        """
        if keys is not None and len(keys) != len(values):
            raise ValueError("send_many: keys and values must have the same length")
        count = await self._partition_count(topic)
        n = len(values)
        chunk = _Chunk([-1] * n, [0] * n, n)
        if n == 0:
            return []
        for i, value in enumerate(values):
            key = None if keys is None else keys[i]
            p = self._choose(topic, key, count)
            chunk.partitions[i] = p
            await self._enqueue(topic, p, _Entry(chunk, i, key, value, None, None, 0))
        offsets = await self._outcome(chunk)
        return [RecordMetadata(topic, p, o) for p, o in zip(chunk.partitions, offsets, strict=True)]

    async def flush(self) -> None:
        """Send every queued record now and wait until each one is answered."""
        self._flushing += 1
        try:
            for lane in self._lanes.values():
                lane.full.set()
            while self._unacked:
                await self._idle.wait()
        finally:
            self._flushing -= 1

    async def _partition_count(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len((await self._transport.describe(topic)).partitions)
            self._partition_counts[topic] = count
        return count

    def _choose(self, topic: str, key: Any, count: int) -> int:
        if key is not None:
            return partition_for(key, count)
        turn = self._round_robin.setdefault(topic, itertools.count())
        return next(turn) % count

    async def _enqueue(self, topic: str, partition: int, entry: _Entry) -> None:
        if self._closed or self._nursery is None:
            raise trio.ClosedResourceError("the producer is closed; open a new one")
        entry.size = (
            len(pack(entry.value))
            + len(pack(entry.key))
            + (len(pack(entry.headers)) if entry.headers else 0)
            + RECORD_OVERHEAD
        )
        while self._buffered_bytes and self._buffered_bytes + entry.size > self.max_buffer_bytes:
            await self._space.wait()
            if self._closed:
                raise trio.ClosedResourceError("the producer is closed; open a new one")
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = _Lane(topic, partition)
            self._nursery.start_soon(self._run_lane, lane)
        lane.queue.append(entry)
        self._buffered_bytes += entry.size
        self._unacked += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        lane.nonempty.set()
        if len(lane.queue) >= self.batch_size or self._flushing:
            lane.full.set()

    async def _outcome(self, chunk: _Chunk) -> list[int]:
        await chunk.done.wait()
        if chunk.error is not None:
            raise chunk.error
        return chunk.offsets

    async def _run_lane(self, lane: _Lane) -> None:
        """Send the lane's batches one at a time, forever (until cancelled)."""
        while True:
            await lane.nonempty.wait()
            if len(lane.queue) < self.batch_size and not self._flushing:
                with trio.move_on_after(self.linger):
                    await lane.full.wait()
            batch: list[_Entry] = []
            batch_bytes = 0
            while lane.queue and len(batch) < self.batch_size:
                entry = lane.queue[0]
                if batch and batch_bytes + entry.size > self.max_batch_bytes:
                    break
                batch.append(lane.queue.popleft())
                batch_bytes += entry.size
            if not lane.queue:
                lane.nonempty = trio.Event()
            if len(lane.queue) < self.batch_size and not self._flushing:
                lane.full = trio.Event()
            await self._deliver(lane, batch, batch_bytes)

    async def _deliver(self, lane: _Lane, batch: list[_Entry], batch_bytes: int) -> None:
        # Sequences advance even when the outcome is unknown, so that a batch that
        # did land can never make the log drop the next one as a duplicate.
        sequence = lane.next_sequence
        lane.next_sequence += len(batch)
        columns = Columns(
            [e.key for e in batch],
            [e.value for e in batch],
            None if all(e.timestamp is None for e in batch) else [e.timestamp for e in batch],
            None if all(e.headers is None for e in batch) else [e.headers for e in batch],
        )
        deadline = trio.current_time() + self.delivery_timeout
        backoff = 0.05
        error: BaseException | None = None
        first = -1
        while True:
            try:
                first = await self._transport.append(
                    lane.topic,
                    lane.partition,
                    columns,
                    producer=self.identity,
                    sequence=sequence,
                )
            except PartitionOffline as exc:
                # Fatal: the fsync that failed may have lost this very batch.
                error = exc
            except (BrokerUnavailable, StorageError) as exc:
                # Nothing of the batch was stored (or it was, and the retry's
                # sequence numbers make the log drop it): retrying is safe.
                if trio.current_time() + backoff >= deadline:
                    error = exc
                    break
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except Exception as exc:
                error = exc
            break
        for i, entry in enumerate(batch):
            chunk = entry.chunk
            if error is not None:
                chunk.error = chunk.error or error
            else:
                chunk.offsets[entry.index] = -1 if first < 0 else first + i
            chunk.remaining -= 1
            if chunk.remaining == 0:
                chunk.done.set()
        self._buffered_bytes -= batch_bytes
        space, self._space = self._space, trio.Event()
        space.set()
        self._unacked -= len(batch)
        if self._unacked == 0:
            self._idle.set()
