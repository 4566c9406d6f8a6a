"""Define the async operations every log target offers: the ``Transport`` protocol.

An embedded directory and a broker connection both implement ``Transport``;
``Producer``, ``Consumer`` and the pipeline runtime are written once on top of
it, so they behave the same on either target. Every call works on whole
batches (one thread hop or one round trip per batch, never per record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .record import Headers, RecordBatch
    from .segment import StoredRun

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """Offsets and size of one partition."""

    partition: int
    start_offset: int
    end_offset: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic's settings and partitions, as ``describe`` returns them."""

    name: str
    config: dict[str, Any]
    partitions: list[PartitionInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    """Who appends, for idempotence: the log drops records it already has.

    Within one ``(producer_id, partition)`` every record carries a sequence
    number; an append whose records have sequence numbers at or below the
    highest one the partition has stored from that producer is dropped (the
    part above is appended). An append with an older ``epoch`` than the
    partition has seen raises ``ProducerFenced``.
    """

    producer_id: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Columns:
    """Records to append, as parallel columns (timestamps in ms; ``None`` = now)."""

    keys: list[Any]
    values: list[Any]
    timestamps: list[int | None] | None = None
    headers: list[Headers | None] | None = None

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed group offset and the metadata stored with it."""

    offset: int
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A group member's view after a (re)join: its generation and partitions."""

    member_id: str
    generation: int
    partitions: list[TopicPartition]


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """One member of a group: what it subscribes to and what it owns now."""

    member_id: str
    topics: list[str]
    partitions: list[TopicPartition]


#: Group states: members own partitions; members are rejoining; no members
#: (only committed offsets); unknown to the target.
GROUP_STATES: Final = ("stable", "rebalancing", "empty", "dead")


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A consumer group as ``describe_group`` returns it.

    ``state`` is one of ``GROUP_STATES``; ``generation`` is 0 before the first
    rebalance. During a rebalance ``partitions`` are those of the last
    completed generation.
    """

    group: str
    state: str
    generation: int
    members: list[MemberDescription] = field(default_factory=list)


class Transport(Protocol):
    """Async access to one log target (an embedded directory or a broker).

    Safe from many tasks. Every method raises ``UnknownTopic`` for a missing
    topic or partition and ``BrokerUnavailable`` when a remote target is gone.
    """

    async def create_topic(self, name: str, **config: Any) -> None:
        """Create *name*; raise ``TopicExists`` if present, ``InvalidConfig`` on bad settings."""
        ...

    async def delete_topic(self, name: str) -> None:
        """Delete *name* and its data."""
        ...

    async def topics(self) -> list[str]:
        """List the topic names, sorted."""
        ...

    async def describe(self, name: str) -> TopicDescription:
        """Return the settings and per-partition offsets of *name*."""
        ...

    async def append(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        *,
        producer: ProducerIdentity | None = None,
        sequence: int = -1,
    ) -> int:
        """Append *columns* as one batch; return the offset of its first record.

        Returns once the records are visible to readers, and fsynced first when
        the topic's ``fsync`` is ``"always"``. With *producer*, record i has
        sequence number ``sequence + i`` (see ``ProducerIdentity``); if every
        record is a duplicate, nothing is written and the offset the first record
        was originally stored at is returned, or -1 when that is no longer known.
        """
        ...

    async def fetch(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read batches at the given offsets, waiting up to *timeout* s for any.

        Returns as soon as at least one partition has records (long poll), or an
        empty dict at the timeout. Batches are trimmed so that every record has
        an offset at or after the asked one. Raises ``OffsetOutOfRange``.
        """
        ...

    async def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """Return ``(start_offset, end_offset)`` of a partition."""
        ...

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Store committed offsets for *group* (durably, in an internal topic).

        With *member_id* and *generation*, raise ``RebalanceInProgress`` when the
        member is no longer the owner of a partition in that generation.
        """
        ...

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group*; partitions without one are left out."""
        ...

    async def join_group(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join (or rejoin) *group*; return once the group has a new assignment."""
        ...

    async def heartbeat(self, group: str, member_id: str, generation: int) -> bool:
        """Keep the membership alive; return False when the member must rejoin."""
        ...

    async def leave_group(self, group: str, member_id: str) -> None:
        """Leave *group* so that its partitions move at once."""
        ...

    async def describe_group(self, group: str) -> GroupDescription:
        """Return the members of *group*, their partitions, its generation and state.

        A group nobody joined and nothing was committed for is ``"dead"``.
        """
        ...

    async def list_groups(self) -> list[str]:
        """List the groups with members or committed offsets, sorted."""
        ...

    async def aclose(self) -> None:
        """Release the target (close the log or the connection)."""
        ...


class Transaction(Protocol):
    """One transactional writer: appends and group offsets become visible together or never.

    One task at a time. A transaction starts with the first ``append`` (or
    ``commit``) after the previous ``commit``; readers that read committed
    records only (all of streamflow's) see none of its records until
    ``commit`` returns, and never see them if it is aborted, by ``abort`` or
    by a newer writer with the same transactional id (a restarted task)
    fencing this one.
    """

    async def append(self, topic: str, partition: int, columns: Columns) -> int:
        """Append *columns* inside the open transaction; return its first record's offset.

        Raises:
            ProducerFenced: a newer writer with the same transactional id took over.
        """
        ...

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Commit *offsets* for *group* in the transaction, then commit the transaction.

        Raises:
            RebalanceInProgress: the member no longer owns a partition; the
                transaction is aborted.
            ProducerFenced: a newer writer with the same transactional id took over.
        """
        ...

    async def abort(self) -> None:
        """Abort the open transaction, if any: its records are never seen."""
        ...

    async def aclose(self) -> None:
        """Abort what is open and release the writer."""
        ...


@runtime_checkable
class Transactional(Protocol):
    """A ``Transport`` capability: transactional writers and readers that skip markers.

    Implemented by the Kafka transport, where a crashed writer's replay cannot
    be deduplicated by sequence numbers. A transaction's commit or abort marker
    takes an offset of its own, so a reader that has read everything can sit
    below ``end_offset``; ``position_after`` says how far such a reader has
    in fact got.
    """

    async def open_transaction(self, transactional_id: str) -> Transaction:
        """Return the writer of *transactional_id*, fencing any older instance of it.

        The older instance's open transaction is aborted, and its later
        appends and commits fail with ``ProducerFenced``.
        """
        ...

    def position_after(self, topic: str, partition: int, offset: int) -> int:
        """Return where a reader at *offset* is once it skips markers and aborted records.

        Returns *offset* when nothing is known to follow it but records (or
        nothing at all has been read there).
        """
        ...


@runtime_checkable
class StoredReader(Protocol):
    """A ``Transport`` capability: fetch batches as stored, decode them later.

    Implemented by the embedded log. A reader that fetches ahead on a worker
    thread takes the bytes there (the disk read and wait run without the GIL)
    and decodes them on its own thread once it needs them. The decode holds
    the GIL from start to end, so on the worker thread it would only take
    turns with the caller's own work, and the two threads' turns cost more
    than the decode itself.
    """

    async def fetch_stored(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[StoredRun]]:
        """Read what ``fetch`` would, as the batch bytes stored; nothing is checked yet."""
        ...

    def decode_stored(
        self, topic: str, partition: int, offset: int, runs: list[StoredRun]
    ) -> list[RecordBatch]:
        """Check and decode *runs*, read at *offset*; return what ``fetch`` would have.

        Raises:
            CorruptBatch: a batch fails its checks; it names the segment file.
        """
        ...
