"""Hand a stage's appended repartition batches to the next stage's task in the same process.

A stage that ends in ``key_by`` appends to ``<pipeline>.<stage>.repartition``
and the next stage reads those records back. When both tasks run in this
process, the reader can take the batch as the decoded columns the writer
already holds, skipping the fetch and the msgpack decode. The append still
happens and stays what offsets, commits and restores refer to; a hand-off is
only a copy of what the log stored, used when that is provably the same data:

- The job is the only writer of the topic: an embedded log directory (one
  process opens it), no consumer groups (so no rebalance can move a
  partition), no transactions (a transactional append is not visible before
  its commit). Appends to a repartition partition are serialised here, and
  the end offset before and after each one shows that it stored exactly
  these records, contiguously (a sequence-number replay that dropped some or
  all of them as duplicates hands nothing off).
- The values are msgpack's own: every node of the writing stage is a topic
  source, ``filter``, ``peek``, ``key_by`` or ``merge``, with no branches, so
  each value is an object the writer decoded from the log and reaches one
  output only. Every timestamp is an ``int`` (what the log stores and gives
  back) and every key a ``str``, ``int``, ``float``, ``bool``, ``None`` or
  ``bytes``, types a msgpack round trip returns as they are (one C-speed type
  scan per batch). Anything else is read from the log.
- A batch is taken once, by the task at exactly its offset; entries behind a
  reader's position are dropped, and each partition holds at most
  ``MAX_ENTRIES`` batches. When full, a writer whose reader takes these
  batches next waits up to ``FULL_WAIT`` for room (a bounded channel's
  backpressure, so a fast stage does not run ahead of the hand-off);
  otherwise, or after that, the new batch is dropped: the log has it. A
  reader that let such a wait run out is not waited for again until it takes
  a batch, so a stage restoring its state does not slow its writers down.

The writer keeps no reference to what it handed off, so the reader owns
those objects as if it had decoded them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

import trio

from streamflow.log import Columns, RecordBatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from streamflow.log import ProducerIdentity, TopicPartition, Transport
    from streamflow.pipeline import Plan, Stage

#: Batches held per topic partition before new ones are dropped.
MAX_ENTRIES: Final = 8
#: Longest a writer waits for its reader to make room before dropping a batch (s).
FULL_WAIT: Final = 1.0
#: Longest a reader waits for an append in flight to finish (s); then it reads the log.
WRITE_WAIT: Final = 10.0
#: Node kinds that pass the records they are given on unchanged (or drop them).
PASSING: Final = frozenset({"source", "filter", "peek", "key_by", "merge"})
#: Key types a msgpack round trip returns unchanged (exact types: no subclasses).
SCALAR_KEYS: Final = frozenset({str, int, float, bool, type(None), bytes})


def hands_off(plan: Plan, stage: Stage) -> bool:
    """Return whether *stage*'s repartition outputs are msgpack's own decoded values.

    True when every input is a topic, every node passes the values it is
    given on unchanged (``PASSING``) and no node feeds two others of the
    stage (a value reaches one output only).
    """
    if not stage.repartition_outputs or not stage.inputs:
        return False
    if any(i.topic is None or i.kind not in ("topic", "repartition") for i in stage.inputs):
        return False
    members = set(stage.nodes)
    for node_id in stage.nodes:
        node = plan.node(node_id)
        if node.kind not in PASSING or node.factory is not None or node.sink is not None:
            return False
        if node.after or len([c for c in plan.children[node_id] if c in members]) > 1:
            return False
    return True


class Handoff:
    """Decoded repartition batches waiting for the next stage's task (one per job).

    Safe from many tasks of one trio run. Every append of the job's tasks
    goes through ``append``, so that it sees each one to a repartition topic.
    """

    def __init__(self, transport: Transport, repartition_topics: Iterable[str]) -> None:
        self._transport = transport
        self._topics = frozenset(repartition_topics)
        self._locks: dict[TopicPartition, trio.Lock] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._entries: dict[TopicPartition, dict[int, RecordBatch]] = {}
        self._events: dict[TopicPartition, trio.Event] = {}
        #: Where each partition's reader asks next (the end of what it took).
        self._reading: dict[TopicPartition, int] = {}
        #: Partitions whose reader let a writer's wait run out: no writer waits again
        #: until that reader takes a batch (it may be restoring state, or far behind).
        self._stalled: set[TopicPartition] = set()
        #: Records taken by readers instead of fetched.
        self.records_taken = 0

    def covers(self, tps: Iterable[TopicPartition]) -> bool:
        """Return whether every one of *tps* is a repartition topic this job writes."""
        return all(topic in self._topics for topic, _ in tps)

    def _event(self, tp: TopicPartition) -> trio.Event:
        event = self._events.get(tp)
        if event is None:
            event = self._events[tp] = trio.Event()
        return event

    def _signal(self, tp: TopicPartition) -> None:
        self._event(tp).set()
        self._events[tp] = trio.Event()

    async def poll(
        self,
        positions: dict[TopicPartition, int],
        fetch: Callable[[float], Awaitable[dict[TopicPartition, list[RecordBatch]]]],
        timeout: float,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Return what follows *positions*, handed over or ``fetch``-ed, within *timeout* s.

        For a reader whose partitions this job alone writes (``covers``): a
        long poll of the log, or a read while an append is in flight, would
        read and decode a batch that is about to be handed over, so it waits
        for this job's appends instead and reads the log only when none is
        in flight.
        """
        if self.writing(positions):
            await self.wait(positions, WRITE_WAIT)
            if found := self.take(positions):
                return found
        found = await fetch(0.0)
        if not found and timeout > 0:
            await self.wait(positions, timeout)
            found = self.take(positions) or await fetch(0.0)
        return found

    async def wait(self, tps: Iterable[TopicPartition], timeout: float) -> None:
        """Return once one of *tps* is appended to or *timeout* s pass (a reader's long poll)."""
        events = [self._event(tp) for tp in tps]  # now: a signal before the tasks run counts
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for event in events:
                    nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)

    async def append(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        *,
        producer: ProducerIdentity | None = None,
        sequence: int = -1,
        offer: bool,
    ) -> int:
        """Append *columns* like ``Transport.append`` and, if *offer*, keep them for the reader.

        Args:
            topic: Any topic; only repartition topics' batches are kept.
            partition: Its partition.
            columns: The records; kept only when they are msgpack-canonical.
            producer: As for ``Transport.append``.
            sequence: As for ``Transport.append``.
            offer: The writing stage ``hands_off``.

        Returns:
            What ``Transport.append`` returned.
        """
        transport = self._transport
        if topic not in self._topics:
            return await transport.append(
                topic, partition, columns, producer=producer, sequence=sequence
            )
        tp = (topic, partition)
        lock = self._locks.get(tp)
        if lock is None:
            lock = self._locks[tp] = trio.Lock()
        async with lock:
            before = self._ends.get(tp)
            if before is None:
                before = (await transport.offsets(topic, partition))[1]
            first = await transport.append(
                topic, partition, columns, producer=producer, sequence=sequence
            )
            after = (await transport.offsets(topic, partition))[1]
            self._ends[tp] = after
            n = len(columns)
            # Exactly these n records at [first, first + n): nothing dropped as a duplicate.
            if offer and n and first == before and after == before + n:
                await self._offer(tp, first, columns)
            # Under the lock, so that a reader that sees it held waits for the offer.
            self._signal(tp)
        return first

    def writing(self, tps: Iterable[TopicPartition]) -> bool:
        """Return whether an append to one of *tps* is in flight (its batch not offered yet)."""
        return any((lock := self._locks.get(tp)) is not None and lock.locked() for tp in tps)

    async def _offer(self, tp: TopicPartition, first: int, columns: Columns) -> None:
        stamps = columns.timestamps
        if stamps is None or columns.headers is not None:
            return
        # A timestamp function may return a float or a bool; the log gives back an int.
        if set(map(type, stamps)) != {int} or not set(map(type, columns.keys)) <= SCALAR_KEYS:
            return
        entries = self._entries.setdefault(tp, {})
        # Wait when the reader takes the oldest batch next (or has not asked yet).
        if (
            len(entries) >= MAX_ENTRIES
            and tp not in self._stalled
            and self._reading.get(tp, min(entries)) == min(entries)
        ):
            with trio.move_on_after(FULL_WAIT) as waited:
                while len(entries) >= MAX_ENTRIES:
                    await self._event(tp).wait()
            if waited.cancelled_caught:
                self._stalled.add(tp)
        if len(entries) >= MAX_ENTRIES:
            return
        offsets = list(range(first, first + len(columns)))
        entries[first] = RecordBatch(
            offsets, cast("list[int]", stamps), columns.keys, columns.values
        )

    def take(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, list[RecordBatch]]:
        """Remove and return the batches that continue *positions* without a gap.

        Batches behind a position are dropped; those further ahead stay.
        """
        found: dict[TopicPartition, list[RecordBatch]] = {}
        for tp, offset in positions.items():
            self._reading[tp] = offset
            entries = self._entries.get(tp)
            if not entries:
                continue
            held = len(entries)
            for stale in [o for o in entries if o < offset]:
                del entries[stale]
            batches: list[RecordBatch] = []
            while (batch := entries.pop(offset, None)) is not None:
                batches.append(batch)
                offset = batch.next_offset
            self._reading[tp] = offset
            if batches:
                found[tp] = batches
                self._stalled.discard(tp)
                self.records_taken += batches[-1].next_offset - batches[0].offsets[0]
            if len(entries) < held:
                self._signal(tp)  # room for a waiting writer
        return found


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
