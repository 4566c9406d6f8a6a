"""Drive a stage's tasks: fetch, run the operators, append the outputs, commit.

One task per input partition index of each stage runs in a nursery. A task's
loop is fetch (a long poll), then ``TaskEngine.process`` on whole batches,
then one append per destination partition, so its only buffers are the
current fetch and its outputs: a slow append slows the fetch, which is the
backpressure all the way back to the source. Input offsets are committed to
the stage's group ``<pipeline>.<stage>`` (and the state checkpointed) every
``commit_interval_ms`` and at shutdown; a restart resumes from there.

Exactly-once outputs: every append carries ``ProducerIdentity(id)`` with
``id`` a stable hash of (pipeline, stage, input topic, partition, output
topic) and ``sequence = first input offset of the batch << 20``; each stored
input batch is processed and appended on its own, so a replay after a crash
repeats the same sequence numbers and the log drops the duplicates. A stage
that feeds a repartition topic does the same under ``at_least_once`` too, so
that the next stage's state never folds a record twice. On a target with
transactions (Kafka), both use those instead (``Job.transactional``,
``transactions.py``). How a stage's tasks start is ``stage.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from streamflow.errors import (
    OffsetOutOfRange,
    OperatorError,
    ProducerFenced,
    RebalanceInProgress,
    UnknownMember,
)
from streamflow.failpoint import failpoint
from streamflow.log import Columns, Committed, Message, ProducerIdentity

from .completion import FINISHED, committed_through
from .handoff import hands_off
from .job import Job, Revoked, producer_id
from .readahead import ReadAhead
from .task import TaskEngine
from .transactions import TaskTransactions, skip_markers, start_offsets

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from streamflow.log import Headers, RecordBatch, TopicPartition
    from streamflow.operators import Item
    from streamflow.pipeline import Stage


logger = logging.getLogger("streamflow.runtime")

SEQUENCE_SHIFT: Final = 20
LOCAL_CHUNK: Final = 5_000
SHUTDOWN_TIMEOUT: Final = 10.0
#: Longest a task runs operators before other tasks (heartbeats, I/O) get a turn (s).
SLICE_SECONDS: Final = 0.01
#: Records in a batch's first slice, which measures what a record costs.
FIRST_SLICE: Final = 64


def _local_rows(node_source: Any, lines: list[str] | None) -> Iterator[tuple[Any, Any, int]]:
    """Yield ``(key, value, timestamp)`` for an items or file source."""
    now = int(time.time() * 1000)
    if lines is not None:
        for line in lines:
            if line.strip():
                yield None, json.loads(line), now
        return
    for value in node_source.items.values:
        if isinstance(value, Message):
            ts = value.timestamp if value.timestamp is not None else now
            yield value.key, value.value, ts
        else:
            yield None, value, now


class TaskRunner:
    """One task: the loop of one stage over one input partition index."""

    def __init__(
        self, job: Job, stage: Stage, partition: int, member: tuple[str, int] | None = None
    ) -> None:
        self.job = job
        self.stage = stage
        self.partition = partition
        self.member = member
        self.group = f"{job.plan.pipeline.name}.{stage.name}"
        self.engine = TaskEngine(
            job.plan, stage, job.layout, partition, job.plan.pipeline.late_topic
        )
        self.tps: list[TopicPartition] = []
        self.input_of: dict[TopicPartition, int] = {}
        self.locals: list[tuple[int, Iterator[tuple[Any, Any, int]]]] = []
        for index, inp in enumerate(stage.inputs):
            if inp.topic is not None:
                if partition < job.layout.topic_partitions[inp.topic]:
                    tp = (inp.topic, partition)
                    self.tps.append(tp)
                    self.input_of[tp] = index
        self.positions: dict[TopicPartition, int] = {}
        self.saved: dict[TopicPartition, int] = {}
        self.local_offsets: dict[int, int] = {}
        self.task_state: Any = None
        self.dirty = False
        self.finished = False
        self.metrics = job.metrics.task(stage.name, partition) if job.metrics else None
        self.append: Callable[..., Awaitable[int]] = job.transport.append
        if job.handoffs is not None:
            self.append = partial(job.handoffs.append, offer=hands_off(job.plan, stage))

    # -- setup -----------------------------------------------------------------------------

    async def _open_locals(self) -> None:
        if self.partition != 0:
            return
        for index, inp in enumerate(self.stage.inputs):
            if inp.topic is not None:
                continue
            node = self.job.plan.node(inp.node)
            source = node.source
            assert source is not None
            lines = None
            if source.path is not None:
                text = await trio.to_thread.run_sync(source.path.read_text)
                lines = text.splitlines()
            self.locals.append((index, _local_rows(source, lines)))
            self.local_offsets[index] = 0

    async def _initial_positions(self, committed: dict[TopicPartition, Committed]) -> None:
        transport = self.job.transport
        restored: dict[TopicPartition, int] = {}
        if self.task_state is not None:
            restored = dict(self.task_state.input_offsets)
        for tp in self.tps:
            if tp in restored:
                self.positions[tp] = restored[tp]
            elif tp in committed:
                self.positions[tp] = committed[tp].offset
            else:
                start, end = await transport.offsets(*tp)
                inp = self.stage.inputs[self.input_of[tp]]
                source = self.job.plan.node(inp.node).source
                latest = inp.kind == "topic" and source is not None and source.start == "latest"
                self.positions[tp] = end if latest else start
        self.saved = {tp: c.offset for tp, c in committed.items()}
        if self.task_state is not None and restored:
            # The group's copy must cover what the state layer restored or compensated.
            await self._commit(self.task_state.last_checkpoint.committed(), final=False)
            self.saved = dict(self.positions)
        await self._measure()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled, or until the input is drained under ``until_idle``.

        Raises:
            OperatorError: a user function failed (``on_error="stop"``); the
                failing batch's offsets are not committed.
        """
        job, engine = self.job, self.engine
        self.txn: TaskTransactions | None = None
        async with AsyncExitStack() as stack:
            if job.transactional(self.stage) and self.tps:
                # Fence the task's previous run before trusting the group's offsets, so
                # that nothing it left open can still commit behind them.
                try:
                    self.txn, committed = await TaskTransactions.open(
                        job.transport,
                        pipeline=job.plan.pipeline.name,
                        stage=self.stage.name,
                        partition=self.partition,
                        group=self.group,
                        fresh=await start_offsets(job, self.stage, self.input_of),
                        member=self.member,
                    )
                except (RebalanceInProgress, UnknownMember, ProducerFenced) as exc:
                    raise Revoked(str(exc)) from exc
                stack.push_async_callback(self.txn.aclose)
            elif self.tps:
                committed = await job.transport.committed(self.group, self.tps)
            else:
                committed = {}
            if self.stage.stores:
                from streamflow.state import TaskState

                self.task_state = await TaskState.open(
                    self.txn.transport if self.txn is not None else job.transport,
                    state_dir=job.state_dir,
                    pipeline=job.plan.pipeline.name,
                    stage=self.stage.name,
                    partition=self.partition,
                    stores=list(self.stage.stores),
                    exactly_once=job.exactly_once,
                    committed=committed,
                    changelog_partitions=job.layout.tasks[self.stage.name],
                    on_progress=self.metrics.on_restore if self.metrics else None,
                )
                stack.push_async_callback(self._close_state)
            await self._open_locals()
            await self._initial_positions(committed)
            engine.open(self.task_state.view if self.task_state is not None else None)
            try:
                await self._loop()
                await self._measure()
                if job.until_idle:
                    self.dirty = engine.stateful
                    engine.finish()
                    await self._flush("(finish)", self._end_sequence())
                    self.dirty = False
                    self.finished = True
            finally:
                if not self.dirty:
                    with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
                        await self._save(final=True)

    async def _close_state(self) -> None:
        with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
            await self.task_state.aclose()

    def _end_sequence(self) -> int:
        return max(self.positions.values(), default=0) << SEQUENCE_SHIFT

    async def _loop(self) -> None:
        job = self.job
        last_save = trio.current_time()
        interval = job.commit_interval_ms / 1000
        idle = False
        # The nursery only holds the read-ahead: a failure leaves it unwrapped.
        async with _lone_errors_unwrapped(), trio.open_nursery() as nursery:
            ahead: ReadAhead | None = None
            try:
                while True:
                    if idle and job.until_idle and await self._drained():
                        return
                    worked = await self._run_locals()
                    if self.tps:
                        fetched = job.handoffs.take(self.positions) if job.handoffs else {}
                        if not fetched and ahead is not None:
                            fetched = await ahead.take(self.positions)
                        ahead = None
                        if not fetched:
                            fetched = await self._poll(0.0 if worked else self._poll_timeout())
                        if fetched:
                            worked = True
                            ahead = await self._read_ahead(nursery, fetched)
                            await self._process_fetch(fetched)
                    elif not worked and not job.until_idle:
                        await trio.sleep_forever()
                    idle = not worked
                    if trio.current_time() - last_save >= interval:
                        await self._save(final=False)
                        await self._measure()
                        last_save = trio.current_time()
            finally:
                nursery.cancel_scope.cancel()

    async def _read_ahead(
        self, nursery: trio.Nursery, fetched: dict[TopicPartition, list[RecordBatch]]
    ) -> ReadAhead | None:
        """Start fetching what follows *fetched* while it is processed.

        The read, the CRC check and the disk wait run on a worker thread
        without the GIL, so they overlap the operators' work on this batch.
        None for a reader of this job's hand-off: it would read what is
        about to be handed over.
        """
        if self.job.handoffs is not None and self.job.handoffs.covers(self.tps):
            return None
        positions = dict(self.positions)
        for tp, batches in fetched.items():
            positions[tp] = batches[-1].next_offset
        ahead = ReadAhead(positions)
        nursery.start_soon(ahead.run, self.job.transport, self.job.fetch_max_bytes)
        await trio.lowlevel.checkpoint()  # let the read start before the batch is processed
        return ahead

    def _poll_timeout(self) -> float:
        if not self.job.until_idle:
            return 1.0
        # Bounded run: nothing more will arrive once the upstream stages are done;
        # until then, poll briefly so a finished upstream is noticed soon.
        upstream_done = all(self.job.done[name].is_set() for name in self.stage.upstream)
        return 0.0 if upstream_done else 0.05

    async def _poll(self, timeout: float) -> dict[TopicPartition, list[RecordBatch]]:
        """Fetch, waiting up to *timeout* s (for the hand-off: see ``Handoff.poll``)."""
        handoffs = self.job.handoffs
        if handoffs is None or not handoffs.covers(self.tps):
            return await self._fetch(timeout)
        return await handoffs.poll(self.positions, self._fetch, timeout)

    async def _fetch(self, timeout: float) -> dict[TopicPartition, list[RecordBatch]]:
        transport = self.job.transport
        try:
            return await transport.fetch(
                dict(self.positions), max_bytes=self.job.fetch_max_bytes, timeout=timeout
            )
        except OffsetOutOfRange as exc:
            tp = (exc.topic, exc.partition)
            start, end = await transport.offsets(*tp)
            moved = min(max(self.positions[tp], start), end)
            logger.warning(
                "%s[%d]: offset %d is no longer kept; resuming at %d",
                exc.topic,
                exc.partition,
                self.positions[tp],
                moved,
            )
            self.positions[tp] = moved
            return {}

    async def _drained(self) -> bool:
        job = self.job
        if not all(job.done[name].is_set() for name in self.stage.upstream):
            return False
        if self.locals:
            return False
        for tp in self.tps:
            _, end = await job.transport.offsets(*tp)
            if self.positions[tp] < end:
                return False
        if job.use_groups:
            # Other processes may still run upstream tasks: this process's
            # `done` flags only speak for its own.
            for name in self.stage.upstream:
                if not await committed_through(job, job.plan.stage(name)):
                    return False
        return True

    async def _run_locals(self) -> bool:
        worked = False
        for entry in list(self.locals):
            index, rows = entry
            chunk = list(itertools.islice(rows, LOCAL_CHUNK))
            if not chunk:
                self.locals.remove(entry)
                continue
            worked = True
            first = self.local_offsets[index]
            offsets = list(range(first, first + len(chunk)))
            self.local_offsets[index] = first + len(chunk)
            keys, values, stamps = (list(c) for c in zip(*chunk, strict=True))
            self.dirty = self.engine.stateful
            self.engine.process(index, "(items)", offsets, keys, values, stamps)
            self._after_batch(len(offsets))
            await self._flush("(items)", None)
            self.dirty = False
        return worked

    async def _process_fetch(self, fetched: dict[TopicPartition, list[RecordBatch]]) -> None:
        engine = self.engine
        # A stage that feeds a repartition topic appends idempotently in both modes:
        # a duplicate there would be counted twice by the next stage's state.
        one_by_one = self.job.exactly_once or bool(self.stage.repartition_outputs)
        for tp, batches in fetched.items():
            index = self.input_of[tp]
            topic = tp[0]
            if one_by_one:
                for batch in batches:
                    self.dirty = engine.stateful
                    await self._process(
                        index, topic, batch.offsets, batch.keys, batch.values, batch.timestamps
                    )
                    self._after_batch(len(batch))
                    await self._flush(topic, batch.offsets[0] << SEQUENCE_SHIFT)
                    self.positions[tp] = batch.next_offset
                    self.dirty = False
                    # A revoked task stops here, between whole batches, rather than after
                    # the whole fetch: a rebalance waits for it.
                    await trio.lowlevel.checkpoint()
                continue
            self.dirty = engine.stateful
            if len(batches) == 1:
                b = batches[0]
                await self._process(index, topic, b.offsets, b.keys, b.values, b.timestamps)
                self._after_batch(len(b))
            else:
                offsets: list[int] = []
                keys: list[Any] = []
                values: list[Any] = []
                stamps: list[int] = []
                for b in batches:
                    offsets += b.offsets
                    keys += b.keys
                    values += b.values
                    stamps += b.timestamps
                await self._process(index, topic, offsets, keys, values, stamps)
                self._after_batch(len(offsets))
            self.positions[tp] = batches[-1].next_offset
        if not one_by_one:
            await self._flush(None, None)
            self.dirty = False

    async def _process(
        self,
        index: int,
        topic: str,
        offsets: list[int],
        keys: list[Any],
        values: list[Any],
        stamps: list[int],
    ) -> None:
        """Run one batch through ``engine.process`` in slices of about ``SLICE_SECONDS``.

        Operators run on the event loop, so a slow user function over a large
        batch would otherwise hold up every other task of the process for the
        whole batch: heartbeats stop, and the group drops a member that is only
        busy. Between slices other tasks run; the yield is cancel-shielded, so a
        batch is still processed whole (its outputs flushed together). Cheap
        operators get the rest of the batch in one slice after the first.
        """
        count = len(offsets)
        if count <= FIRST_SLICE:
            self.engine.process(index, topic, offsets, keys, values, stamps)
            return
        start, size = 0, FIRST_SLICE
        while start < count:
            end = min(count, start + size)
            began = time.perf_counter()
            self.engine.process(
                index,
                topic,
                offsets[start:end],
                keys[start:end],
                values[start:end],
                stamps[start:end],
            )
            spent = time.perf_counter() - began
            size = max(1, int(SLICE_SECONDS * (end - start) / spent)) if spent > 0 else count
            start = end
            if start < count and spent >= SLICE_SECONDS / 2:
                await trio.lowlevel.cancel_shielded_checkpoint()

    def _after_batch(self, records_in: int) -> None:
        if self.metrics is not None:
            self.metrics.record_batch(records_in, 0)
            self.metrics.late_records = self.engine.late_records
            self.metrics.errors = self.engine.dead_letters

    # -- writing ---------------------------------------------------------------------------

    async def _flush(self, input_topic: str | None, sequence: int | None) -> None:
        """Write the outbox: one append per topic partition, then the local sinks."""
        outputs = self.engine.outbox.take()
        if not outputs:
            return
        failpoint("runtime.before_output")
        with trio.move_on_after(SHUTDOWN_TIMEOUT * 3, shield=True) as scope:
            await self._write(outputs, input_topic, sequence)
        if scope.cancelled_caught:
            raise trio.TooSlowError("appending a batch's outputs took too long; stopping")
        failpoint("runtime.after_output")

    async def _write(
        self,
        outputs: list[tuple[Any, list[Item], list[Headers | None] | None]],
        input_topic: str | None,
        sequence: int | None,
    ) -> None:
        job = self.job
        pipeline = job.plan.pipeline.name
        for dest, items, headers in outputs:
            if isinstance(dest, int):
                await self._write_local(dest, items)
                continue
            topic, partition = dest
            keys = [i[0] for i in items]
            values = [i[1] for i in items]
            stamps: list[int | None] = [i[2] for i in items]
            columns = Columns(keys, values, stamps, headers)
            if self.txn is not None:
                try:
                    await self.txn.append(topic, partition, columns)
                except ProducerFenced as exc:  # another instance of this task owns it now
                    raise Revoked(str(exc)) from exc
            elif sequence is not None and input_topic is not None:
                pid = producer_id(pipeline, self.stage.name, input_topic, self.partition, topic)
                await self.append(
                    topic, partition, columns, producer=ProducerIdentity(pid), sequence=sequence
                )
            else:
                await self.append(topic, partition, columns)
            job.records_written += len(items)
            if len(outputs) > 1:
                failpoint("runtime.mid_output")
            if self.metrics is not None:
                self.metrics.record_batch(0, len(items))

    async def _write_local(self, node_id: int, items: list[Item]) -> None:
        node = self.job.plan.node(node_id)
        spec = node.sink
        assert spec is not None
        if spec.into is not None:
            spec.into.extend(v for _, v, _ in items)
        elif spec.call is not None:
            call: Callable[[Any], object] = spec.call
            for _, v, _ in items:
                try:
                    call(v)
                except Exception as exc:
                    raise OperatorError(node.label, "(sink)", self.partition, -1, exc) from exc
        elif spec.path is not None:
            text = "".join(json.dumps(v) + "\n" for _, v, _ in items)
            path = spec.path

            def append() -> None:
                with path.open("a", encoding="utf-8") as f:
                    f.write(text)

            await trio.to_thread.run_sync(append)

    async def _save(self, *, final: bool) -> None:
        """Checkpoint state and commit input offsets (when they moved, or to mark the finish)."""
        skip_markers(self.job.transport, self.positions)
        finish_mark = self.finished and self.task_state is not None
        if self.positions == self.saved and not finish_mark:
            return
        pending = None
        if self.task_state is not None:
            if self.txn is not None:
                # LMDB may only say what the Kafka commit below made visible: write it after.
                pending = await self.task_state.prepare_checkpoint(dict(self.positions))
                checkpoint = pending.checkpoint
            else:
                checkpoint = await self.task_state.checkpoint(dict(self.positions))
            offsets = checkpoint.committed()
            if finish_mark:
                offsets = {
                    tp: Committed(c.offset, {**c.metadata, FINISHED: True})
                    for tp, c in offsets.items()
                }
            if pending is None:
                failpoint("runtime.mid_checkpoint")
        else:
            offsets = {tp: Committed(pos) for tp, pos in self.positions.items()}
        if self.tps and not await self._commit(offsets, final=final):
            return
        if pending is not None:
            failpoint("runtime.mid_checkpoint")
            await self.task_state.write_checkpoint(pending)
        self.saved = dict(self.positions)

    async def _measure(self) -> None:
        """Update the lag and state size metrics (once per commit, not per batch)."""
        if self.metrics is None:
            return
        lag = 0
        for tp, position in self.positions.items():
            _, end = await self.job.transport.offsets(*tp)
            lag += max(0, end - position)
        self.metrics.lag = lag
        if self.task_state is not None:
            from streamflow.state import task_state_dir

            path = task_state_dir(self.job.state_dir, self.stage.name, self.partition)
            self.metrics.state_bytes = await trio.to_thread.run_sync(_dir_bytes, path)

    async def _commit(self, offsets: dict[TopicPartition, Committed], *, final: bool) -> bool:
        """Commit *offsets* (in the task's transaction, if any); return False if skipped."""
        member_id, generation = self.member if self.member else (None, None)
        try:
            if self.txn is not None:
                await self.txn.commit(
                    self.group, offsets, member_id=member_id, generation=generation
                )
            else:
                await self.job.transport.commit(
                    self.group, offsets, member_id=member_id, generation=generation
                )
        except (RebalanceInProgress, UnknownMember, ProducerFenced) as exc:
            if final:
                logger.info("%s: final commit skipped (%s)", self.group, exc)
                return False
            raise Revoked(str(exc)) from exc
        return True


def _dir_bytes(path: Path) -> int:
    """Return the bytes of the files directly in *path* (0 if it is gone). Blocking."""
    try:
        return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file())
    except FileNotFoundError:
        return 0


@asynccontextmanager
async def _lone_errors_unwrapped() -> AsyncIterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
