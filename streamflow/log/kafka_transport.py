"""Serve the ``Transport`` protocol from an Apache Kafka–compatible cluster: ``KafkaTransport``.

Built on confluent-kafka (librdkafka). Topics are managed with one
``AdminClient``; appends go through one idempotent ``Producer`` (each append
produces its whole batch, then waits for the delivery reports, in one worker
thread call); fetches use a small pool of group-less, ``assign()``-based
consumers, one per concurrent fetch, that keep their assignment between calls
so that librdkafka's prefetching carries on while positions advance as
expected. Groups and committed offsets: ``kafka_group``. Encodings:
``kafka_codec``. Transactions (the ``Transactional`` capability, for
exactly-once jobs): ``kafka_txn``. Differences from the built-in log:
``docs/kafka.md``.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from ..errors import InvalidConfig, ProducerFenced, RecordTooLarge, UnknownTopic
from .kafka_client import (
    MAX_WAIT,
    REQUEST_TIMEOUT,
    logger,
    new_consumer,
    translate,
    watermarks,
)
from .kafka_codec import (
    client_settings,
    encode,
    encode_headers,
    kafka_topic_settings,
    streamflow_topic_settings,
)
from .kafka_fetch import FetchPool
from .kafka_group import KafkaGroups
from .kafka_txn import KafkaTransaction
from .naming import check_topic_name
from .transport import (
    Columns,
    GroupDescription,
    MemberDescription,
    PartitionInfo,
    TopicDescription,
)

if TYPE_CHECKING:
    from confluent_kafka import Message

    from .record import RecordBatch
    from .transport import Assignment, Committed, ProducerIdentity, TopicPartition

#: Producer identities remembered for deduplication.
MAX_PRODUCERS: Final = 100_000
#: How long librdkafka retries a record before its append fails (as ``Producer``'s default).
DELIVERY_TIMEOUT_MS: Final = 120_000
#: Environment variable naming this process's ``group.instance.id`` (static membership).
GROUP_INSTANCE_ENV: Final = "STREAMFLOW_KAFKA_GROUP_INSTANCE_ID"
#: How often ``delete_topic`` checks that the topic is gone (s).
DELETE_CHECK_INTERVAL: Final = 0.1


#: Kafka's group states, as ``GroupDescription.state`` names them.
_GROUP_STATES: Final = {
    "STABLE": "stable",
    "PREPARING_REBALANCING": "rebalancing",
    "COMPLETING_REBALANCING": "rebalancing",
    "EMPTY": "empty",
    "DEAD": "dead",
}


@dataclass(slots=True)
class _Sequence:
    """The last batch one producer appended to one partition (for deduplication)."""

    epoch: int
    first_sequence: int
    last_sequence: int
    first_offset: int


@dataclass(slots=True, eq=False)
class _Delivery:
    """Delivery reports of one append, filled in by librdkafka's callbacks."""

    pending: int
    offsets: list[int]
    error: KafkaError | None = None

    def report(self, index: int, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.error = self.error or error
        else:
            offset = message.offset()
            self.offsets[index] = -1 if offset is None else offset
        self.pending -= 1


class KafkaTransport:
    """A ``Transport`` on a Kafka cluster. Safe from many tasks.

    Args:
        bootstrap: ``bootstrap.servers``, e.g. ``"host1:9092,host2:9092"``.
        assignor: Group assignment strategy, ``"range"`` or ``"roundrobin"``.
        group_instance_id: Kafka static membership for this process's group
            members (``group.instance.id``; default: the environment variable
            ``STREAMFLOW_KAFKA_GROUP_INSTANCE_ID``): a restarted process with
            the same id takes its partitions back at once. Unique per process.
        replication_factor: Replicas of each new topic (-1: the cluster's default).
        producer_config: librdkafka settings for the producer only.
        consumer_config: librdkafka settings for the consumers only.
        **config: librdkafka settings for every client (SASL, TLS, timeouts);
            ``_`` in a name stands for ``.`` (``security_protocol="SASL_SSL"``).

    Creating it does not block; ``open`` checks that the cluster answers.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        assignor: str = "range",
        group_instance_id: str | None = None,
        replication_factor: int = -1,
        producer_config: dict[str, Any] | None = None,
        consumer_config: dict[str, Any] | None = None,
        **config: Any,
    ) -> None:
        self.bootstrap = bootstrap
        common = {**client_settings(config), "bootstrap.servers": bootstrap, "logger": logger}
        self._replication_factor = replication_factor
        self._producer_settings = {
            "enable.idempotence": True,
            "linger.ms": 1,
            "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
            **common,
            **client_settings(producer_config or {}),
        }
        try:
            self._admin = AdminClient(dict(common))
            self._producer = Producer(self._producer_settings)
            # a consumer is made here only to check the consumer settings early
            new_consumer({**common, **client_settings(consumer_config or {})}, "check").close()
        except KafkaException as exc:
            raise InvalidConfig(
                "Kafka settings", config, f"settings librdkafka accepts ({exc.args[0].str()})"
            ) from exc
        self._consumer_settings = {**common, **client_settings(consumer_config or {})}
        self.groups = KafkaGroups(
            bootstrap,
            self._consumer_settings,
            self._partition_count,
            assignor=assignor,
            instance_id=group_instance_id or os.environ.get(GROUP_INSTANCE_ENV) or None,
        )
        self._counts: dict[str, int] = {}
        self._fetches = FetchPool(self.bootstrap, self._consumer_settings, self._admin)
        self._append_locks: defaultdict[TopicPartition, trio.Lock] = defaultdict(trio.Lock)
        self._sequences: dict[tuple[int, str, int], _Sequence] = {}
        self._closed = False

    async def open(self) -> None:
        """Check that the cluster answers (and learn its topics).

        Raises:
            BrokerUnavailable: no broker answered within the request timeout.
        """
        await self._refresh_topics()

    # -- topics -----------------------------------------------------------------------

    async def create_topic(self, name: str, **config: Any) -> None:
        """Create topic *name*; our settings are mapped to Kafka's (``kafka_codec``).

        Raises:
            InvalidTopicName: the name breaks the naming rule.
            InvalidConfig: a setting is unusable, here or for the cluster.
            TopicExists: the topic is already there.
        """
        check_topic_name(name)
        partitions, settings = kafka_topic_settings(config)
        new = NewTopic(name, partitions, self._replication_factor, config=settings)

        def work() -> None:
            future = self._admin.create_topics([new], request_timeout=REQUEST_TIMEOUT)[name]
            future.result()

        try:
            await trio.to_thread.run_sync(work)
        except KafkaException as exc:
            raise translate(exc, self.bootstrap, topic=name, settings=config) from exc
        self._counts[name] = partitions
        logger.info("topic %s created on %s (%s)", name, self.bootstrap, settings or "defaults")

    async def delete_topic(self, name: str) -> None:
        """Delete topic *name* and its records; return once the cluster no longer lists it.

        Raises:
            UnknownTopic: the topic does not exist.
        """
        check_topic_name(name)

        def work() -> None:
            future = self._admin.delete_topics([name], request_timeout=REQUEST_TIMEOUT)[name]
            future.result()

        try:
            await trio.to_thread.run_sync(work)
        except KafkaException as exc:
            raise translate(exc, self.bootstrap, topic=name) from exc
        finally:
            self._counts.pop(name, None)
        # Kafka deletes in the background: return once the metadata agrees.
        with trio.move_on_after(REQUEST_TIMEOUT):
            while name in await self._refresh_topics():
                self._counts.pop(name, None)
                await trio.sleep(DELETE_CHECK_INTERVAL)
        self._counts.pop(name, None)

    async def topics(self) -> list[str]:
        """List the topic names, sorted (Kafka's internal ``__*`` topics left out)."""
        return sorted(await self._refresh_topics())

    async def describe(self, name: str) -> TopicDescription:
        """Return the settings (under our names) and per-partition offsets of *name*.

        ``size_bytes`` is -1: Kafka does not report a partition's size to clients.
        """
        count = await self._partition_count(name)
        resource = ConfigResource("topic", name)
        wanted = [KafkaPartition(name, p) for p in range(count)]

        def work() -> tuple[dict[str, str], dict[int, tuple[int, int]]]:
            found = self._admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT)
            configs = {k: str(v.value) for k, v in found[resource].result().items()}
            return configs, watermarks(self._admin, wanted)

        try:
            configs, marks = await trio.to_thread.run_sync(work)
        except KafkaException as exc:
            raise translate(exc, self.bootstrap, topic=name) from exc
        infos = [PartitionInfo(p, *marks[p], size_bytes=-1) for p in range(count)]
        return TopicDescription(name, streamflow_topic_settings(configs, count), infos)

    async def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """Return ``(start_offset, end_offset)`` of a partition."""
        await self._check_partition(topic, partition)
        try:
            marks = await trio.to_thread.run_sync(
                watermarks, self._admin, [KafkaPartition(topic, partition)]
            )
        except KafkaException as exc:
            raise translate(exc, self.bootstrap, topic=topic, partition=partition) from exc
        return marks[partition]

    async def _refresh_topics(self) -> list[str]:
        def work() -> dict[str, int]:
            metadata = self._admin.list_topics(timeout=REQUEST_TIMEOUT)
            return {
                name: len(t.partitions)
                for name, t in metadata.topics.items()
                if t.error is None and not name.startswith("__")
            }

        try:
            counts = await trio.to_thread.run_sync(work)
        except KafkaException as exc:
            raise translate(exc, self.bootstrap) from exc
        # merged, not replaced: metadata may lag behind a topic created here a moment ago
        self._counts.update(counts)
        return list(counts)

    async def _partition_count(self, topic: str) -> int:
        """Return the partition count of *topic* (cached; refreshed on a miss)."""
        count = self._counts.get(topic)
        if count is None:
            check_topic_name(topic)
            await self._refresh_topics()
            count = self._counts.get(topic)
            if count is None:
                raise UnknownTopic(topic)
        return count

    async def _check_partition(self, topic: str, partition: int) -> None:
        count = await self._partition_count(topic)
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise UnknownTopic(topic, None)
        if not 0 <= partition < count:
            await self._refresh_topics()  # the topic may have grown
            if not 0 <= partition < self._counts.get(topic, 0):
                raise UnknownTopic(topic, partition)

    # -- appends ----------------------------------------------------------------------

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

        Returns once the cluster acknowledged every record (``acks=all``). With
        *producer*, a batch whose sequence numbers this transport has already
        appended for that producer and partition is dropped (see docs/kafka.md:
        this memory lasts as long as the transport; Kafka's idempotent producer
        covers librdkafka's own retries).

        Raises:
            UnknownTopic: no such topic or partition.
            NotSerializable: a key, value or header cannot be encoded.
            RecordTooLarge: the cluster refused a record's size.
            ProducerFenced: an older epoch of *producer* appended.
            BrokerUnavailable: the cluster did not acknowledge in time.
        """
        await self._check_partition(topic, partition)
        n = len(columns)
        if n == 0:
            _, end = await self.offsets(topic, partition)
            return end
        tp = (topic, partition)
        async with self._append_locks[tp]:
            skip = 0
            seen = None
            if producer is not None and sequence >= 0:
                seen = self._sequences.get((producer.producer_id, topic, partition))
                if seen is not None:
                    if producer.epoch < seen.epoch:
                        raise ProducerFenced(producer.producer_id, producer.epoch, seen.epoch)
                    skip = max(0, min(n, seen.last_sequence + 1 - sequence))
            if skip == n:
                assert seen is not None
                if seen.first_sequence <= sequence:
                    return seen.first_offset + (sequence - seen.first_sequence)
                return -1
            first = await self._produce(topic, partition, columns, skip, self._producer)
            if producer is not None and sequence >= 0:
                if len(self._sequences) >= MAX_PRODUCERS:
                    self._sequences.clear()
                self._sequences[(producer.producer_id, topic, partition)] = _Sequence(
                    producer.epoch, sequence + skip, sequence + n - 1, first
                )
            if skip:
                assert seen is not None
                if seen.first_sequence <= sequence:
                    return seen.first_offset + (sequence - seen.first_sequence)
                return -1
            return first

    async def open_transaction(self, transactional_id: str) -> KafkaTransaction:
        """Return a transactional writer for *transactional_id*, fencing older instances of it.

        A new librdkafka producer with ``transactional.id`` set runs
        ``init_transactions``: the cluster aborts the transaction an older
        instance left open, and rejects that instance from then on.

        Raises:
            BrokerUnavailable: the transaction coordinator did not answer.
        """
        transaction = KafkaTransaction(self, self._producer_settings, transactional_id)
        try:
            await transaction.open()
        except BaseException:
            await transaction.aclose()
            raise
        return transaction

    def position_after(self, topic: str, partition: int, offset: int) -> int:
        """Return where a reader at *offset* is once it skips markers and aborted records.

        Known from this transport's fetches: when a fetch at *offset* found no
        record but moved past transaction markers (or aborted records), the
        position it reached; else *offset*.
        """
        return self._fetches.position_after((topic, partition), offset)

    async def produce_batch(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        skip: int = 0,
        *,
        producer: Producer | None = None,
    ) -> int:
        """Produce records ``skip:`` of *columns*; return the first offset once all are delivered.

        With *producer* (a transactional one), the records go through it
        instead of the transport's own producer.
        """
        await self._check_partition(topic, partition)
        return await self._produce(topic, partition, columns, skip, producer or self._producer)

    async def _produce(
        self, topic: str, partition: int, columns: Columns, skip: int, producer: Producer
    ) -> int:
        """Produce records ``skip:`` of *columns* and wait for every delivery report."""
        n = len(columns)
        keys = [encode(k, "key") for k in columns.keys[skip:]]
        values = [encode(v) for v in columns.values[skip:]]
        stamps = columns.timestamps[skip:] if columns.timestamps is not None else None
        headers = (
            [encode_headers(h) for h in columns.headers[skip:]]
            if columns.headers is not None
            else None
        )
        delivery = _Delivery(n - skip, [-1] * (n - skip))

        def start() -> None:
            for i in range(n - skip):
                stamp = stamps[i] if stamps is not None else None
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=values[i],
                            key=keys[i],
                            partition=partition,
                            timestamp=stamp or 0,
                            headers=headers[i] if headers is not None else None,
                            on_delivery=partial(delivery.report, i),
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)  # librdkafka's queue is full: let it drain
            wait()

        def wait() -> None:
            deadline = time.monotonic() + MAX_WAIT
            while delivery.pending > 0 and time.monotonic() < deadline:
                producer.poll(0.05)

        try:
            await trio.to_thread.run_sync(start)
            while delivery.pending > 0:
                await trio.to_thread.run_sync(wait)
        except KafkaException as exc:
            raise translate(exc, self.bootstrap, topic=topic, partition=partition) from exc
        if delivery.error is not None:
            if delivery.error.code() == KafkaError.INVALID_RECORD:
                raise ValueError(
                    f"{topic}[{partition}]: the Kafka cluster refused the batch "
                    f"({delivery.error.str()}); on a compacted topic every record needs a key"
                )
            error = translate(delivery.error, self.bootstrap, topic=topic, partition=partition)
            if isinstance(error, RecordTooLarge):
                size = max(len(v or b"") + len(k or b"") for k, v in zip(keys, values, strict=True))
                error = RecordTooLarge(size, await self._max_record_bytes(topic), topic)
            raise error from KafkaException(delivery.error)
        return delivery.offsets[0]

    async def _max_record_bytes(self, topic: str) -> int:
        try:
            return int((await self.describe(topic)).config.get("max_record_bytes", -1))
        except Exception:  # only for the error message
            return -1

    # -- fetches ----------------------------------------------------------------------

    async def fetch(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read records at *positions*, waiting up to *timeout* s for any (long poll).

        Each partition's records come back as one ``RecordBatch``. A call with a
        short timeout that finds nothing checks the partitions' watermarks, and
        waits for records that are there (so ``timeout=0`` still returns records
        already stored).

        Raises:
            UnknownTopic: no such topic or partition.
            OffsetOutOfRange: a position is outside ``[start_offset, end_offset]``.
        """
        for topic, partition in positions:
            await self._check_partition(topic, partition)
        if not positions:
            await trio.sleep(max(0.0, timeout))
            return {}
        return await self._fetches.fetch(positions, max_bytes=max_bytes, timeout=timeout)

    # -- groups -----------------------------------------------------------------------

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Store committed offsets (and their metadata) in the group's Kafka offsets."""
        await self.groups.commit(group, offsets, member_id=member_id, generation=generation)

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group*; partitions without one are left out."""
        return await self.groups.committed(group, partitions)

    async def join_group(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join (or rejoin) Kafka consumer group *group*; see ``kafka_group``."""
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
        """Describe Kafka consumer group *group* (``AdminClient.describe_consumer_groups``).

        Kafka does not report the generation through the admin API; it is 0.
        """

        def work() -> GroupDescription:
            found = self._admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT)
            desc = found[group].result()
            state = _GROUP_STATES.get(getattr(desc.state, "name", ""), "dead")
            members = [
                MemberDescription(
                    m.member_id,
                    sorted({tp.topic for tp in m.assignment.topic_partitions}),
                    sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions),
                )
                for m in desc.members
            ]
            return GroupDescription(group, state, 0, members)

        return await trio.to_thread.run_sync(work)

    async def list_groups(self) -> list[str]:
        """List the Kafka consumer groups (``AdminClient.list_consumer_groups``), sorted."""

        def work() -> list[str]:
            listed = self._admin.list_consumer_groups(request_timeout=REQUEST_TIMEOUT).result()
            return sorted(g.group_id for g in listed.valid)

        return await trio.to_thread.run_sync(work)

    async def aclose(self) -> None:
        """Flush the producer, leave the groups and close every client (shielded, bounded)."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(5, shield=True):
            await self.groups.aclose()
            await trio.to_thread.run_sync(self._producer.flush, 5.0)
            await self._fetches.aclose()
