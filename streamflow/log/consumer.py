"""Read records from the partitions a consumer owns: the ``Consumer``.

A plain consumer (``group=None``) reads every partition of its topics. A group
member owns the partitions its group's coordinator assigns it: a background
task in the consumer's own nursery heartbeats, and when the group rebalances
it calls ``on_revoke`` with the partitions given up, rejoins, and calls
``on_assign`` with the new ones. Records fetched for a partition the member
lost meanwhile are dropped, never returned.
"""

from __future__ import annotations

import itertools
from collections import deque
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Final

import trio

from ..errors import BrokerUnavailable, InvalidConfig, OffsetOutOfRange
from .transport import Assignment, Committed, TopicPartition

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import TracebackType

    from .record import Record
    from .transport import Transport

    AssignmentCallback = Callable[[list[TopicPartition]], Awaitable[None]]

STARTS: Final = ("earliest", "latest")
LEAVE_TIMEOUT: Final = 5.0
MAX_BACKOFF: Final = 1.0


class Consumer:
    """Poll records of some topics, alone or as a member of a group.

    One task polls at a time; ``commit``, ``seek`` and ``position`` may be
    called from any task. Open with ``async with client.consumer(...)``;
    leaving the block leaves the group so that its partitions move at once.

    Args:
        transport: The target.
        topics: One topic name or several.
        group: Group id; ``None`` reads every partition and cannot commit.
        start: Where to begin a partition without a committed offset:
            ``"earliest"`` or ``"latest"``. Also where a position that fell out
            of the kept range (retention) is reset to.
        on_assign: ``async def f(partitions)``, called after each (re)join.
        on_revoke: ``async def f(partitions)``, called before partitions are
            given up (a rebalance or close); commit here to checkpoint.
        session_timeout_ms: A member silent for this long is dropped from the group.
        heartbeat_interval_ms: Default: a third of the session timeout.
        max_bytes: Most bytes per fetch.
    """

    def __init__(
        self,
        transport: Transport,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        start: str = "earliest",
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int | None = None,
        max_bytes: int = 1 << 20,
    ) -> None:
        if start not in STARTS:
            raise InvalidConfig("start", start, '"earliest" or "latest"')
        names = [topics] if isinstance(topics, str) else list(topics)
        if not names or not all(isinstance(t, str) for t in names):
            raise ValueError("consumer: topics must be a topic name or a list of names")
        if not isinstance(session_timeout_ms, int) or session_timeout_ms <= 0:
            raise InvalidConfig("session_timeout_ms", session_timeout_ms, "a positive integer")
        self._transport = transport
        self.topics = sorted(set(names))
        self.group = group
        self.start = start
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.session_timeout_ms = session_timeout_ms
        interval_ms = heartbeat_interval_ms or max(1, session_timeout_ms // 3)
        self.heartbeat_interval = interval_ms / 1000
        self.max_bytes = max_bytes
        self.member_id: str | None = None
        self.generation = -1
        self._assignment: list[TopicPartition] = []
        self._version = 0
        self._positions: dict[TopicPartition, int] = {}
        self._fetch_positions: dict[TopicPartition, int] = {}
        self._buffer: deque[Record] = deque()
        self._history: list[Assignment] = []
        self._changed = trio.Event()
        self._closed = False
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Consumer:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        try:
            if self.group is None:
                partitions: list[TopicPartition] = []
                for topic in self.topics:
                    desc = await self._transport.describe(topic)
                    partitions.extend((topic, p.partition) for p in desc.partitions)
                await self._assign(Assignment("", 0, partitions))
            else:
                await self._rejoin()
                self._nursery.start_soon(self._run_heartbeat)
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._close(exc_type, exc, tb)
        return None

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._wake()
        try:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            if self.group is not None and self.member_id is not None:
                with trio.move_on_after(LEAVE_TIMEOUT, shield=True):
                    try:
                        await self._transport.leave_group(self.group, self.member_id)
                    except BrokerUnavailable:
                        pass  # the group drops us after the session timeout
        finally:
            try:
                await self._stack.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise

    # -- reading ------------------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Record:
        """Return the next record, waiting as long as it takes; stop when closed."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._fill(timeout=1.0)
        record = self._buffer.popleft()
        self._positions[(record.topic, record.partition)] = record.offset + 1
        return record

    async def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Return up to *max_records* records, waiting up to *timeout* s for any.

        Returns ``[]`` at the timeout. A consumer at the end of its partitions
        wakes as soon as a record arrives (long poll).

        Raises:
            BrokerUnavailable: the target stayed unreachable.
            trio.ClosedResourceError: the consumer is closed.
        """
        if max_records < 1:
            raise ValueError("poll: max_records must be at least 1")
        if not self._buffer:
            await self._fill(timeout)
        out: list[Record] = []
        while self._buffer and len(out) < max_records:
            record = self._buffer.popleft()
            self._positions[(record.topic, record.partition)] = record.offset + 1
            out.append(record)
        return out

    async def _fill(self, timeout: float) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the consumer is closed")
        deadline = trio.current_time() + timeout
        while not self._buffer:
            version = self._version
            await self._resolve_positions()
            if version != self._version:
                continue
            asked = {tp: self._fetch_positions[tp] for tp in self._assignment}
            remaining = max(0.0, deadline - trio.current_time())
            if not asked:
                with trio.move_on_after(remaining):
                    await self._changed.wait()
                if trio.current_time() >= deadline or self._closed:
                    return
                continue
            try:
                fetched = await self._transport.fetch(
                    asked, max_bytes=self.max_bytes, timeout=remaining
                )
            except OffsetOutOfRange as exc:
                tp = (exc.topic, exc.partition)
                if version == self._version and tp in asked:
                    self._positions.pop(tp, None)
                    self._fetch_positions.pop(tp, None)
                    await self._resolve_positions(reset=True)
                continue
            if version != self._version:
                continue  # the assignment changed while we waited: drop what came back
            lanes = []
            for tp, batches in fetched.items():
                if self._fetch_positions.get(tp) != asked.get(tp):
                    continue  # seeked meanwhile
                lanes.append([(tp, b) for b in batches if len(b)])
            # Interleave partitions batch by batch, so that none waits behind another.
            for step in itertools.zip_longest(*lanes):
                for tp, batch in filter(None, step):
                    self._buffer.extend(batch.records(*tp))
                    self._fetch_positions[tp] = batch.next_offset
            if trio.current_time() >= deadline or self._closed:
                return

    async def _resolve_positions(self, *, reset: bool = False) -> None:
        """Give every owned partition without a position its starting offset."""
        missing = [tp for tp in self._assignment if tp not in self._fetch_positions]
        if not missing:
            return
        version = self._version
        found: dict[TopicPartition, int] = {}
        if self.group is not None and not reset:
            committed = await self._transport.committed(self.group, missing)
            found = {tp: c.offset for tp, c in committed.items()}
        for tp in missing:
            if tp not in found:
                start, end = await self._transport.offsets(*tp)
                found[tp] = start if self.start == "earliest" else end
        if version != self._version:
            return
        for tp, offset in found.items():
            self._fetch_positions.setdefault(tp, offset)
            self._positions.setdefault(tp, offset)

    # -- positions ----------------------------------------------------------------------

    def _partition(self, partition: int | TopicPartition) -> TopicPartition:
        if isinstance(partition, tuple):
            return partition
        if len(self.topics) != 1:
            raise ValueError(
                "this consumer reads several topics: name the partition as (topic, partition)"
            )
        return (self.topics[0], partition)

    def seek(self, partition: int | TopicPartition, offset: int) -> None:
        """Make the next record read from *partition* the one at *offset*.

        *partition* is a number (single-topic consumer) or ``(topic, partition)``.
        """
        tp = self._partition(partition)
        if tp not in self._assignment:
            raise ValueError(f"seek: {tp} is not assigned to this consumer")
        if offset < 0:
            raise ValueError("seek: offset must be >= 0")
        self._positions[tp] = offset
        self._fetch_positions[tp] = offset
        kept = [r for r in self._buffer if (r.topic, r.partition) != tp]
        self._buffer = deque(kept)

    async def position(self, partition: int | TopicPartition) -> int:
        """Return the offset of the next record this consumer returns from *partition*."""
        tp = self._partition(partition)
        if tp not in self._assignment:
            raise ValueError(f"position: {tp} is not assigned to this consumer")
        await self._resolve_positions()
        return self._positions[tp]

    def assignment(self) -> list[TopicPartition]:
        """Return the partitions this consumer reads now, sorted."""
        return list(self._assignment)

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Store the current positions (or *offsets*) as the group's committed offsets.

        Raises:
            RebalanceInProgress: this member no longer owns the partitions in the
                group's current generation; its next poll sees the new assignment.
            ValueError: the consumer has no group.
        """
        if self.group is None:
            raise ValueError("commit: this consumer has no group; pass group=... to consumer()")
        if offsets is None:
            offsets = {tp: self._positions[tp] for tp in self._assignment if tp in self._positions}
        if not offsets:
            return
        await self._transport.commit(
            self.group,
            {tp: Committed(offset) for tp, offset in offsets.items()},
            member_id=self.member_id,
            generation=self.generation,
        )

    async def committed(self) -> dict[TopicPartition, int]:
        """Return the group's committed offsets of the owned partitions."""
        if self.group is None:
            return {}
        stored = await self._transport.committed(self.group, self.assignment())
        return {tp: c.offset for tp, c in stored.items()}

    # -- group membership ---------------------------------------------------------------

    def assignments(self) -> AssignmentChanges:
        """Iterate over assignment changes, starting with the current assignment.

        ``async for change in consumer.assignments():`` yields an ``Assignment``
        per (re)join; an empty ``partitions`` list marks a revocation.
        """
        return AssignmentChanges(self)

    async def _run_heartbeat(self) -> None:
        """Heartbeat forever; rejoin when the group asks for it."""
        while True:
            await trio.sleep(self.heartbeat_interval)
            assert self.group is not None
            assert self.member_id is not None
            try:
                alive = await self._transport.heartbeat(self.group, self.member_id, self.generation)
            except BrokerUnavailable:
                continue
            if not alive:
                await self._rejoin()

    async def _rejoin(self) -> None:
        assert self.group is not None
        if self._assignment:
            lost = list(self._assignment)
            if self.on_revoke is not None:
                await self.on_revoke(lost)
            await self._assign(Assignment(self.member_id or "", self.generation, []))
        backoff = 0.05
        while True:
            try:
                joined = await self._transport.join_group(
                    self.group,
                    self.topics,
                    member_id=self.member_id,
                    session_timeout_ms=self.session_timeout_ms,
                )
                break
            except BrokerUnavailable:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self.member_id = joined.member_id
        self.generation = joined.generation
        await self._assign(joined)
        if self.on_assign is not None:
            await self.on_assign(list(joined.partitions))

    async def _assign(self, assignment: Assignment) -> None:
        owned = sorted(assignment.partitions)
        self._assignment = owned
        self._version += 1
        keep = set(owned)
        self._positions = {tp: o for tp, o in self._positions.items() if tp in keep}
        self._fetch_positions = {tp: o for tp, o in self._fetch_positions.items() if tp in keep}
        self._buffer = deque(r for r in self._buffer if (r.topic, r.partition) in keep)
        self._history.append(Assignment(assignment.member_id, assignment.generation, owned))
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()


class AssignmentChanges:
    """An async iterator over a consumer's assignment changes (see ``assignments``)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._index = max(0, len(consumer._history) - 1)

    def __aiter__(self) -> AssignmentChanges:
        return self

    async def __anext__(self) -> Assignment:
        consumer = self._consumer
        while self._index >= len(consumer._history):
            if consumer._closed:
                raise StopAsyncIteration
            await consumer._changed.wait()
        change = consumer._history[self._index]
        self._index += 1
        return change
