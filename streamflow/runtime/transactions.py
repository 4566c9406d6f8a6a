"""Give a task exactly-once writes through a transactional target's transactions.

On the built-in log, exactly-once rests on sequence numbers that the log
keeps with the data, so a replay after a crash is dropped (``worker``). A
Kafka cluster forgets a producer's sequences when the producer goes away, so
there a task writes in Kafka transactions instead (the log layer's
``Transactional`` capability), with one transactional writer per run. Under
at-least-once, the tasks of a stage that feeds a repartition topic do too
(``Job.transactional``), so that the next stage never folds a record twice:

1. ``open`` fences the task's previous run (a crashed or stalled run of the
   same stage and partition, in any process), which aborts what it left
   open, and claims a writer of its own (below);
2. outputs, and the changelog appends of a checkpoint, go into the open
   transaction (``append``, and ``transport`` for ``TaskState``);
3. ``commit`` adds the input offsets, carrying the checkpoint as metadata, and
   commits: outputs, changelog and offsets become visible together;
4. only then does the runtime write the checkpoint to LMDB. A crash before
   that leaves LMDB one checkpoint behind the group, and ``TaskState.open``
   rebuilds the state from the changelog up to the group's checkpoint.

Readers see committed records only, so whatever a killed run appended after
its last commit is never seen. A commit or abort marker takes an offset of its
own; ``skip_markers`` moves a task's positions past markers that its fetches
skipped without returning a record, so that an ``until_idle`` run still sees
its inputs drained.

Writers: run ``k`` of a task uses the transactional id
``streamflow.<pipeline>.<stage>.<partition>.<k>``, and every group commit of
the task carries ``k`` in its metadata (``TXN_KEY``). A starting run reads
``k`` from the group, fences id ``k`` (``init_transactions``: the cluster
aborts what that writer left open and refuses its later writes), and claims
``k + 1`` with a transactional commit of the unchanged offsets before it
writes anything. So the previous run is fenced wherever it ran, and a
producer id that had a transaction aborted never writes again: some
Kafka-protocol brokers (noida-db 0.2.3) report an aborted transaction in every
later fetch, and a ``read_committed`` reader then drops all later records of
that producer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

from streamflow.errors import ProducerFenced
from streamflow.log import Committed, Transactional
from streamflow.state import Checkpoint

if TYPE_CHECKING:
    from streamflow.log import (
        Columns,
        ProducerIdentity,
        TopicPartition,
        Transaction,
        Transport,
    )
    from streamflow.pipeline import Stage

    from .job import Job

#: Key of the group commit metadata that names the run's writer (``k``).
TXN_KEY: Final = "txn"
#: Claims lost to runs starting at the same moment before ``open`` gives up.
MAX_CLAIM_ATTEMPTS: Final = 10


def transactional_id(pipeline: str, stage: str, partition: int, run: int) -> str:
    """Return the transactional id of writer *run* of task ``(stage, partition)``.

    >>> transactional_id("fraud", "s1", 3, 0)
    'streamflow.fraud.s1.3.0'
    """
    return f"streamflow.{pipeline}.{stage}.{partition}.{run}"


def claimed_run(committed: dict[TopicPartition, Committed]) -> int:
    """Return the writer number that the group's commits name (-1 when none does).

    >>> claimed_run({("t", 0): Committed(5, {"txn": 2}), ("t", 1): Committed(7)})
    2
    """
    found = [
        c.metadata[TXN_KEY]
        for c in committed.values()
        if isinstance(c.metadata, dict) and isinstance(c.metadata.get(TXN_KEY), int)
    ]
    return max(found, default=-1)


def with_claim(
    offsets: dict[TopicPartition, Committed], run: int
) -> dict[TopicPartition, Committed]:
    """Return *offsets* with ``TXN_KEY: run`` added to each metadata map.

    >>> with_claim({("t", 0): Committed(5)}, 3)
    {('t', 0): Committed(offset=5, metadata={'txn': 3})}
    """
    out: dict[TopicPartition, Committed] = {}
    for tp, c in offsets.items():
        metadata = dict(c.metadata) if isinstance(c.metadata, dict) else {}
        out[tp] = Committed(c.offset, {**metadata, TXN_KEY: run})
    return out


async def start_offsets(
    job: Job, stage: Stage, input_of: dict[TopicPartition, int]
) -> dict[TopicPartition, Committed]:
    """Return where the task starts on each input partition the group has no offset for.

    As the worker does: a source read from ``"latest"`` starts at the end,
    everything else at the first kept offset. For a stateful stage the
    offsets carry an empty checkpoint (id 0), so that the state layer can
    tell them from offsets committed without one.
    """
    out: dict[TopicPartition, Committed] = {}
    for tp, index in input_of.items():
        start, end = await job.transport.offsets(*tp)
        inp = stage.inputs[index]
        source = job.plan.node(inp.node).source
        latest = inp.kind == "topic" and source is not None and source.start == "latest"
        out[tp] = Committed(end if latest else start)
    if stage.stores:
        empty = Checkpoint(0, {tp: c.offset for tp, c in out.items()}).to_metadata()
        out = {tp: Committed(c.offset, empty) for tp, c in out.items()}
    return out


def supports_transactions(transport: Transport) -> bool:
    """Return whether *transport* offers the ``Transactional`` capability (Kafka does)."""
    return isinstance(transport, Transactional)


def skip_markers(transport: Transport, positions: dict[TopicPartition, int]) -> None:
    """Move *positions* past transaction markers and aborted records already read past.

    Any reader of a transactional target needs this, whatever its processing
    mode: a topic some other writer filled in transactions ends in a marker.
    """
    if isinstance(transport, Transactional):
        for tp, offset in positions.items():
            positions[tp] = transport.position_after(*tp, offset)


class TaskTransactions:
    """One run's transactional writer for a task. One task at a time.

    Use ``open``; close with ``aclose`` (aborts what is not committed).
    """

    def __init__(self, transport: Transport, transaction: Transaction, run: int) -> None:
        self._inner = transport
        self._transaction = transaction
        #: This run's writer number (``k`` in the module docstring).
        self.run = run
        #: A ``Transport`` whose appends go into this run's transaction (for ``TaskState``).
        self.transport = cast("Transport", _InTransaction(transport, transaction))

    @classmethod
    async def open(
        cls,
        transport: Transport,
        *,
        pipeline: str,
        stage: str,
        partition: int,
        group: str,
        fresh: dict[TopicPartition, Committed],
        member: tuple[str, int] | None = None,
    ) -> tuple[TaskTransactions, dict[TopicPartition, Committed]]:
        """Fence the task's previous run and claim a writer; return it and the group's offsets.

        Args:
            transport: A ``Transactional`` transport.
            pipeline: The pipeline name.
            stage: The stage name.
            partition: The task's partition.
            group: The stage's group.
            fresh: For every input partition, what the claim commits when the
                group has no offset for it yet (where the task will start).
            member: The group member ``(member_id, generation)``, if any.

        Returns:
            The writer, and the group's committed offsets as the claim left them.

        Raises:
            TypeError: *transport* does not support transactions.
            RebalanceInProgress: the member lost a partition meanwhile.
            ProducerFenced: other runs kept claiming writers first.
            BrokerUnavailable: the transaction coordinator did not answer.
        """
        if not isinstance(transport, Transactional):
            raise TypeError(f"{type(transport).__name__} does not support transactions")
        member_id, generation = member if member else (None, None)
        partitions = list(fresh)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            committed = await transport.committed(group, partitions)
            previous = claimed_run(committed)
            if previous >= 0:
                # Fencing aborts what the previous run left open; after it, no commit of
                # that run can land, so the offsets read again below are final.
                old = await transport.open_transaction(
                    transactional_id(pipeline, stage, partition, previous)
                )
                await old.aclose()
                committed = await transport.committed(group, partitions)
                if claimed_run(committed) != previous:
                    continue  # another run claimed meanwhile: fence that one
            run = previous + 1
            transaction = await transport.open_transaction(
                transactional_id(pipeline, stage, partition, run)
            )
            claim = with_claim({**fresh, **committed}, run)
            try:
                await transaction.commit(group, claim, member_id=member_id, generation=generation)
            except ProducerFenced:
                await transaction.aclose()
                continue  # a run that started at the same moment took this number
            except BaseException:
                await transaction.aclose()
                raise
            return cls(transport, transaction, run), claim
        fenced = ProducerFenced(-1, -1, -1)
        fenced.args = (
            f"{group}[{partition}]: {MAX_CLAIM_ATTEMPTS} runs of the task started at once; "
            "run each task in one process at a time",
        )
        raise fenced

    async def append(self, topic: str, partition: int, columns: Columns) -> None:
        """Append one output batch in the open transaction.

        Raises:
            ProducerFenced: a later run of the task took over.
        """
        await self._transaction.append(topic, partition, columns)

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Commit the open transaction together with the group's *offsets* (and the claim).

        Raises:
            RebalanceInProgress: the member lost a partition (aborted).
            ProducerFenced: a later run of the task took over.
        """
        await self._transaction.commit(
            group, with_claim(offsets, self.run), member_id=member_id, generation=generation
        )

    async def aclose(self) -> None:
        """Abort what is not committed and release the writer."""
        await self._transaction.aclose()


class _InTransaction:
    """A ``Transport`` that appends inside a transaction and does the rest through the real one.

    ``producer`` and ``sequence`` of ``append`` are ignored: the transaction,
    not sequence numbers, keeps a replay from being seen twice.
    """

    def __init__(self, transport: Transport, transaction: Transaction) -> None:
        self._transport = transport
        self._transaction = transaction

    async def append(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        *,
        producer: ProducerIdentity | None = None,
        sequence: int = -1,
    ) -> int:
        return await self._transaction.append(topic, partition, columns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
