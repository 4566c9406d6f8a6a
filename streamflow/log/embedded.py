"""Serve the ``Transport`` protocol from a ``Log`` opened in this process.

Every blocking log call runs in a worker thread, one hop per batch. Long
polls wait on one ``trio.Event`` per partition: a fetch takes the events of
the partitions it asks for *before* it reads them, and each append sets its
partition's event (and drops it, so the next waiter gets a fresh one) once the
records are visible, so no append between the read and the wait is missed.
The broker is a thin shell over this class: groups and committed offsets are
implemented here only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .batch import decode_run
from .group import GroupCoordinator, validate_group_name
from .naming import log_path
from .offsets import OFFSETS_TOPIC, OffsetStore
from .transport import GroupDescription

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .directory import Log
    from .record import RecordBatch
    from .segment import StoredRun
    from .transport import (
        Assignment,
        Columns,
        Committed,
        ProducerIdentity,
        TopicDescription,
        TopicPartition,
    )

logger = logging.getLogger("streamflow.log")

#: Smallest read budget a partition gets when a fetch asks for many.
MIN_PARTITION_BYTES: Final = 64 << 10

_Found = TypeVar("_Found")


class EmbeddedTransport:
    """A ``Transport`` over a ``Log`` in this process. Safe from many tasks.

    Args:
        log: The open log.
        owns_log: Close the log in ``aclose``.
        assignor: Group assignment strategy, ``"range"`` or ``"roundrobin"``.
    """

    def __init__(self, log: Log, *, owns_log: bool = False, assignor: str = "range") -> None:
        self.log = log
        self._owns_log = owns_log
        self._events: dict[TopicPartition, trio.Event] = {}
        self.groups = GroupCoordinator(self._partition_count, assignor=assignor)
        self.offset_store = OffsetStore(log)

    async def _partition_count(self, topic: str) -> int:
        return len((await self.describe(topic)).partitions)

    async def create_topic(self, name: str, **config: Any) -> None:
        """Create topic *name* with the given settings (see ``Log.create_topic``)."""
        await trio.to_thread.run_sync(lambda: self.log.create_topic(name, **config))
        logger.info("topic %s created (%s)", name, config or "defaults")

    async def delete_topic(self, name: str) -> None:
        """Delete topic *name* and its data; waiting fetches of it wake up."""
        await trio.to_thread.run_sync(self.log.delete_topic, name)
        for tp in [tp for tp in self._events if tp[0] == name]:
            self._notify(tp)
        logger.info("topic %s deleted", name)

    async def topics(self) -> list[str]:
        """List the topic names, sorted (the internal offsets topic left out)."""
        names = await trio.to_thread.run_sync(self.log.topics)
        return sorted(name for name in names if name != OFFSETS_TOPIC)

    async def describe(self, name: str) -> TopicDescription:
        """Return the settings and per-partition offsets of *name*."""
        return await trio.to_thread.run_sync(self.log.describe, name)

    async def append(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        *,
        producer: ProducerIdentity | None = None,
        sequence: int = -1,
    ) -> int:
        """Append *columns* as one batch; see ``Transport.append``."""

        def work() -> int:
            p = self.log.partition(topic, partition)
            if producer is None:
                return p.append_columns(
                    columns.keys, columns.values, columns.timestamps, columns.headers
                )
            return p.append_columns(
                columns.keys,
                columns.values,
                columns.timestamps,
                columns.headers,
                producer_id=producer.producer_id,
                producer_epoch=producer.epoch,
                sequence=sequence,
            )

        first = await trio.to_thread.run_sync(work)
        self._notify((topic, partition))
        return first

    async def fetch(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read batches at *positions*, waiting up to *timeout* s; see ``Transport.fetch``."""
        return await self._poll(positions, timeout, self._read, max_bytes)

    async def fetch_stored(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[StoredRun]]:
        """Read what ``fetch`` would, as the batch bytes stored on disk (the broker's path).

        Nothing is CRC-checked or decoded: the reader does both and drops the
        records before its position (``wire.decode_stored``).
        """
        return await self._poll(positions, timeout, self._read_stored, max_bytes)

    def decode_stored(
        self, topic: str, partition: int, offset: int, runs: list[StoredRun]
    ) -> list[RecordBatch]:
        """Check and decode what ``fetch_stored`` read at *offset*, as ``fetch`` returns it.

        Raises:
            CorruptBatch: a batch fails its checks; it names the segment file
                and the byte position in it.
        """
        directory = self.log.partition(topic, partition).directory
        label = f"topic {topic!r} partition {partition}"
        out: list[RecordBatch] = []
        floor = 0
        for run in runs:
            path = log_path(directory, run.segment)
            floor = decode_run(run.data, path, run.position, offset, floor, label, out)
        return out

    async def _poll(
        self,
        positions: dict[TopicPartition, int],
        timeout: float,
        read: Callable[[dict[TopicPartition, int], int], dict[TopicPartition, list[_Found]]],
        max_bytes: int,
    ) -> dict[TopicPartition, list[_Found]]:
        deadline = trio.current_time() + max(0.0, timeout)
        if not positions:
            await trio.sleep_until(deadline)
            return {}
        while True:
            events = [self._event(tp) for tp in positions]
            found = await trio.to_thread.run_sync(read, dict(positions), max_bytes)
            if found or trio.current_time() >= deadline:
                return found
            with trio.move_on_at(deadline):
                await _wait_any(events)

    def _read(
        self, positions: dict[TopicPartition, int], max_bytes: int
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read every asked partition once. Blocking."""
        share = max(MIN_PARTITION_BYTES, max_bytes // max(1, len(positions)))
        found: dict[TopicPartition, list[RecordBatch]] = {}
        for (topic, partition), offset in positions.items():
            batches = self.log.partition(topic, partition).read_batches(offset, max_bytes=share)
            if batches:
                found[(topic, partition)] = batches
        return found

    def _read_stored(
        self, positions: dict[TopicPartition, int], max_bytes: int
    ) -> dict[TopicPartition, list[StoredRun]]:
        """Read every asked partition once, as stored. Blocking."""
        share = max(MIN_PARTITION_BYTES, max_bytes // max(1, len(positions)))
        found: dict[TopicPartition, list[StoredRun]] = {}
        for (topic, partition), offset in positions.items():
            runs = self.log.partition(topic, partition).read_stored(offset, max_bytes=share)
            if runs:
                found[(topic, partition)] = runs
        return found

    async def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """Return ``(start_offset, end_offset)`` of a partition."""

        def work() -> tuple[int, int]:
            p = self.log.partition(topic, partition)
            return p.start_offset, p.end_offset

        return await trio.to_thread.run_sync(work)

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Store committed offsets for *group*; see ``Transport.commit``."""
        validate_group_name(group)
        check = None
        if member_id is not None and generation is not None:

            def check(partitions: Iterable[TopicPartition]) -> None:
                self.groups.check_commit(group, member_id, generation, partitions)

        await self.offset_store.commit(group, offsets, check)

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group*; partitions without one are left out."""
        validate_group_name(group)
        return await self.offset_store.get(group, partitions)

    async def join_group(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join (or rejoin) *group*; return once the group has a new assignment."""
        return await self.groups.join(
            group, topics, member_id=member_id, session_timeout_ms=session_timeout_ms
        )

    async def heartbeat(self, group: str, member_id: str, generation: int) -> bool:
        """Keep the membership alive; return False when the member must rejoin."""
        return await self.groups.heartbeat(group, member_id, generation)

    async def leave_group(self, group: str, member_id: str) -> None:
        """Leave *group* so that its partitions move at once."""
        await self.groups.leave(group, member_id)

    async def describe_group(self, group: str) -> GroupDescription:
        """Return the members of *group*, their partitions, its generation and state."""
        validate_group_name(group)
        found = self.groups.describe(group)
        if found.state == "dead" and group in await self.offset_store.groups():
            return GroupDescription(group, "empty", 0)
        return found

    async def list_groups(self) -> list[str]:
        """List the groups with members or committed offsets, sorted."""
        return sorted(set(self.groups.groups()) | await self.offset_store.groups())

    async def aclose(self) -> None:
        """Close the log if this transport owns it (the final flush is shielded)."""
        if self._owns_log:
            with trio.move_on_after(5, shield=True):
                await trio.to_thread.run_sync(self.log.close)

    def _event(self, tp: TopicPartition) -> trio.Event:
        event = self._events.get(tp)
        if event is None:
            event = self._events[tp] = trio.Event()
        return event

    def _notify(self, tp: TopicPartition) -> None:
        event = self._events.pop(tp, None)
        if event is not None:
            event.set()


async def _wait_any(events: list[trio.Event]) -> None:
    """Return as soon as one of *events* is set."""
    if len(events) == 1:
        await events[0].wait()
        return
    async with trio.open_nursery() as nursery:

        async def wait_one(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_one, event)
