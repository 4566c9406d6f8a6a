"""Map streamflow's group calls (join, heartbeat, leave, commit) onto Kafka consumer groups.

A member is one confluent-kafka ``Consumer`` subscribed to the member's
topics. It never delivers records: its ``on_assign`` callback assigns and at
once pauses the partitions, and records are read through the transport's
``fetch`` instead. The mapping:

- ``join_group`` creates the member's consumer (or reuses it on a rejoin) and
  polls it until the group coordinator gives it partitions.
- ``heartbeat`` polls the consumer once: librdkafka sends Kafka's heartbeats
  from its own thread, and the poll serves the rebalance callbacks. It
  answers ``False`` once the member's partitions were revoked or reassigned.
- ``generation`` is Kafka's generation id, read from the consumer's group
  metadata (librdkafka's ``CGMDv2`` encoding); where that cannot be read, it
  counts the assignments the member received. Commits check it first, and
  the coordinator fences stale ones itself.
- ``leave_group`` closes the consumer, which sends Kafka's LeaveGroup.
- commits of a member go through its consumer; other commits and
  ``committed`` through one non-member consumer per group id.
- with an ``instance_id``, members are Kafka static members
  (``group.instance.id``): a process restarted with the same id takes its
  predecessor's place, and partitions, at once, instead of waiting for the
  dead member's session to expire (and the old member is fenced).

Safe from many tasks: each consumer is used by one worker thread at a time
(a ``trio.Lock`` per consumer).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KafkaPartition

from ..errors import InvalidConfig, RebalanceInProgress
from .group import validate_group_name
from .kafka_client import MAX_WAIT, REQUEST_TIMEOUT, logger, new_consumer, translate
from .kafka_codec import decode_metadata, encode_metadata
from .transport import Assignment, Committed, TopicPartition

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from confluent_kafka import Consumer

ASSIGNORS: Final = {"range": "range", "roundrobin": "roundrobin"}
#: Kafka's default ``group.min.session.timeout.ms``: a cluster refuses shorter sessions,
#: and librdkafka then retries the join forever without reporting an error.
MIN_SESSION_TIMEOUT_MS: Final = 6_000


#: librdkafka's serialised group metadata starts with this, then the generation id
#: (a native-endian int32), the group id, the member id, ...
_METADATA_MAGIC: Final = b"CGMDv2:"


def _kafka_generation(consumer: Consumer) -> int | None:
    """Return the generation id of the consumer's group membership, if readable."""
    try:
        data = consumer.consumer_group_metadata()
    except Exception:  # not a member, or an older librdkafka
        return None
    if not isinstance(data, bytes) or not data.startswith(_METADATA_MAGIC):
        return None
    if len(data) < len(_METADATA_MAGIC) + 4:
        return None
    generation: int = struct.unpack_from("=i", data, len(_METADATA_MAGIC))[0]
    return generation


@dataclass(slots=True, eq=False)
class _Member:
    """One group member's consumer and what its rebalance callbacks last reported."""

    member_id: str
    group: str
    topics: list[str]
    consumer: Consumer
    generation: int = 0
    partitions: list[TopicPartition] | None = None
    owned: list[TopicPartition] = field(default_factory=list)
    lock: trio.Lock = field(default_factory=trio.Lock)

    def on_assign(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        # Runs in the worker thread inside poll(); pausing keeps records out of
        # this consumer (the transport's fetch reads them).
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)
        kafka_generation = _kafka_generation(consumer)
        if kafka_generation is not None and kafka_generation > self.generation:
            self.generation = kafka_generation
        else:
            self.generation += 1
        self.partitions = sorted((p.topic, p.partition) for p in partitions)
        self.owned = list(self.partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        self.partitions = None


@dataclass(slots=True, eq=False)
class _Plain:
    consumer: Consumer
    lock: trio.Lock = field(default_factory=trio.Lock)


class KafkaGroups:
    """Hold this process's Kafka group members and offset clients. Safe from many tasks.

    Args:
        bootstrap: The cluster's ``bootstrap.servers`` (named in errors).
        settings: librdkafka settings shared by every consumer.
        check_topic: Async function raising ``UnknownTopic`` for a missing topic.
        assignor: ``"range"`` or ``"roundrobin"``.
        instance_id: This process's ``group.instance.id`` (static membership),
            the same in every group it joins; unique per process of a job.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: Mapping[str, Any],
        check_topic: Callable[[str], Awaitable[int]],
        *,
        assignor: str = "range",
        instance_id: str | None = None,
    ) -> None:
        if assignor not in ASSIGNORS:
            raise InvalidConfig("assignor", assignor, " or ".join(ASSIGNORS))
        self._bootstrap = bootstrap
        self._settings = dict(settings)
        self._check_topic = check_topic
        self._strategy = ASSIGNORS[assignor]
        self._instance_id = instance_id
        self._members: dict[str, _Member] = {}
        self._plain: dict[str, _Plain] = {}

    async def join(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join (or rejoin) *group*; return once the coordinator assigned partitions.

        Returns at once when the member is known and holds an assignment that
        it has not reported yet or still holds. Cancelling leaves the member
        joined (``leave`` removes it). A *session_timeout_ms* below
        ``MIN_SESSION_TIMEOUT_MS`` is raised to it (Kafka refuses shorter ones).
        """
        validate_group_name(group)
        if not topics:
            raise ValueError("join_group: give at least one topic")
        if not isinstance(session_timeout_ms, int) or session_timeout_ms <= 0:
            raise InvalidConfig("session_timeout_ms", session_timeout_ms, "a positive integer")
        for topic in topics:
            await self._check_topic(topic)
        topics = sorted(set(topics))
        if session_timeout_ms < MIN_SESSION_TIMEOUT_MS:
            logger.info(
                "group %s: session timeout %d ms raised to %d ms, Kafka's default minimum",
                group,
                session_timeout_ms,
                MIN_SESSION_TIMEOUT_MS,
            )
            session_timeout_ms = MIN_SESSION_TIMEOUT_MS
        member = self._members.get(member_id) if member_id is not None else None
        if member is not None and (member.group != group or member.topics != topics):
            await self.leave(member.group, member.member_id)
            member = None
        if member is None:
            member_id = member_id or f"{group}-{secrets.token_hex(6)}"
            membership: dict[str, Any] = {
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(1, session_timeout_ms // 3),
                "partition.assignment.strategy": self._strategy,
            }
            if self._instance_id:
                membership["group.instance.id"] = self._instance_id
            consumer = new_consumer(self._settings, group, **membership)
            member = _Member(member_id, group, topics, consumer)
            consumer.subscribe(topics, on_assign=member.on_assign, on_revoke=member.on_revoke)
            self._members[member_id] = member
        while True:
            async with member.lock:
                if member.partitions is None:
                    await trio.to_thread.run_sync(member.consumer.poll, MAX_WAIT)
                if member.partitions is not None:
                    return Assignment(member.member_id, member.generation, list(member.partitions))
            await trio.lowlevel.checkpoint()

    async def heartbeat(self, group: str, member_id: str, generation: int) -> bool:
        """Serve the member's callbacks; return False when it must rejoin."""
        member = self._members.get(member_id)
        if member is None or member.group != group:
            return False
        async with member.lock:
            await trio.to_thread.run_sync(member.consumer.poll, 0)
        return member.partitions is not None and member.generation == generation

    async def leave(self, group: str, member_id: str) -> None:
        """Close the member's consumer so that its partitions move at once."""
        member = self._members.get(member_id)
        if member is None or member.group != group:
            return
        del self._members[member_id]
        async with member.lock:
            with trio.move_on_after(REQUEST_TIMEOUT, shield=True):
                await trio.to_thread.run_sync(member.consumer.close)

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Commit *offsets* for *group*, through the member when one is named.

        Raises:
            RebalanceInProgress: the member is unknown here, of another
                generation, or does not own a partition (also when Kafka fences
                the commit).
        """
        validate_group_name(group)
        if not offsets:
            return
        kafka_offsets = [
            KafkaPartition(t, p, c.offset, metadata=encode_metadata(c.metadata))
            for (t, p), c in sorted(offsets.items())
        ]
        if member_id is not None and generation is not None:
            member = self._owner(group, list(offsets), member_id, generation)
            consumer, lock = member.consumer, member.lock
        else:
            plain = self._plain_consumer(group)
            consumer, lock = plain.consumer, plain.lock

        def work() -> None:
            consumer.commit(offsets=kafka_offsets, asynchronous=False)

        async with lock:
            try:
                await trio.to_thread.run_sync(work)
            except KafkaException as exc:
                raise translate(exc, self._bootstrap) from exc

    def group_metadata(
        self,
        group: str,
        partitions: list[TopicPartition],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> object:
        """Return the group metadata a transactional offset commit for *group* needs.

        With *member_id* and *generation*: the member's (its generation and id,
        so the coordinator refuses the commit once the group moved on); else
        the group id alone. Does not block.

        Raises:
            RebalanceInProgress: as ``commit`` for a member that no longer owns
                *partitions* in *generation*.
        """
        validate_group_name(group)
        if member_id is not None and generation is not None:
            consumer = self._owner(group, partitions, member_id, generation).consumer
        else:
            consumer = self._plain_consumer(group).consumer
        return consumer.consumer_group_metadata()

    def _owner(
        self, group: str, partitions: list[TopicPartition], member_id: str, generation: int
    ) -> _Member:
        """Return the member, checking that it owns *partitions* in *generation*."""
        member = self._members.get(member_id)
        if member is None or member.group != group or member.generation != generation:
            raise RebalanceInProgress(
                f"group {group}: member {member_id} of generation {generation} is not "
                "part of the current generation; rejoin, then commit again"
            )
        foreign = sorted(tp for tp in partitions if tp not in member.owned)
        if foreign:
            raise RebalanceInProgress(
                f"group {group}: member {member_id} does not own {foreign} in generation "
                f"{generation}; commit only the partitions assigned to you"
            )
        return member

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group*; partitions without one are left out."""
        validate_group_name(group)
        if not partitions:
            return {}
        plain = self._plain_consumer(group)
        asked = [KafkaPartition(t, p) for t, p in partitions]

        def work() -> list[KafkaPartition]:
            return plain.consumer.committed(asked, timeout=REQUEST_TIMEOUT)

        async with plain.lock:
            try:
                found = await trio.to_thread.run_sync(work)
            except KafkaException as exc:
                raise translate(exc, self._bootstrap) from exc
        out: dict[TopicPartition, Committed] = {}
        for tp in found:
            if tp.error is None and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = Committed(tp.offset, decode_metadata(tp.metadata))
        return out

    async def aclose(self) -> None:
        """Leave every group and close every consumer (shielded, bounded)."""
        for member in list(self._members.values()):
            await self.leave(member.group, member.member_id)
        plain, self._plain = list(self._plain.values()), {}
        for p in plain:
            async with p.lock:
                with trio.move_on_after(REQUEST_TIMEOUT, shield=True):
                    await trio.to_thread.run_sync(p.consumer.close)

    def _plain_consumer(self, group: str) -> _Plain:
        plain = self._plain.get(group)
        if plain is None:
            plain = self._plain[group] = _Plain(new_consumer(self._settings, group))
        return plain
