"""KafkaTransport against a real Kafka-protocol broker: topics, appends, fetches, offsets."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

import msgpack
import pytest
import trio

from streamflow.errors import (
    InvalidConfig,
    InvalidTopicName,
    OffsetOutOfRange,
    TopicExists,
    UnknownTopic,
)
from streamflow.log import Columns, ProducerIdentity, RecordBatch, partition_for
from streamflow.log.producer import Producer

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamflow.log.kafka_transport import KafkaTransport

pytestmark = pytest.mark.kafka


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def only_batch(found: dict[tuple[str, int], list[RecordBatch]], tp: tuple[str, int]) -> RecordBatch:
    assert list(found) == [tp]
    [batch] = found[tp]
    return batch


async def test_create_describe_and_delete_topic(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(
        name,
        partitions=3,
        retention_ms=3_600_000,
        cleanup_policy="delete,compact",
        segment_bytes=1 << 20,
        delete_retention_ms=1000,
        max_record_bytes=500_000,
        fsync="always",
    )
    assert name in await kafka.topics()
    description = await kafka.describe(name)
    assert description.name == name
    assert [(p.partition, p.start_offset, p.end_offset) for p in description.partitions] == [
        (0, 0, 0),
        (1, 0, 0),
        (2, 0, 0),
    ]
    config = description.config
    assert config["partitions"] == 3
    assert config["retention_ms"] == 3_600_000
    assert config["cleanup_policy"] == "compact,delete"
    assert config["segment_bytes"] == 1 << 20
    assert config["delete_retention_ms"] == 1000
    assert config["max_record_bytes"] == 500_000
    assert "fsync" not in config
    with pytest.raises(TopicExists):
        await kafka.create_topic(name, partitions=1)
    await kafka.delete_topic(name)
    assert name not in await kafka.topics()
    with pytest.raises(UnknownTopic):
        await kafka.describe(name)
    with pytest.raises(UnknownTopic):
        await kafka.delete_topic(name)


async def test_internal_topic_is_never_trimmed_by_time(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1, retention_ms=1000, internal=True)
    assert (await kafka.describe(name)).config["retention_ms"] is None


async def test_bad_topic_names_and_settings_are_refused(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    with pytest.raises(InvalidTopicName):
        await kafka.create_topic("a/b")
    with pytest.raises(InvalidConfig):
        await kafka.create_topic(new_topic(), partitions=0)
    with pytest.raises(InvalidConfig):
        await kafka.create_topic(new_topic(), cleanup_policy="forever")
    with pytest.raises(UnknownTopic):
        await kafka.offsets(new_topic(), 0)


async def test_append_then_fetch_round_trips_records(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=2)
    stamp = now_ms()
    first = await kafka.append(
        name,
        1,
        Columns(
            keys=[1, "user-7", None, b"raw"],
            values=[{"amount": 9.5, "tags": ["a", "b"]}, None, [1, 2, 3], "text"],
            timestamps=[stamp - 3, stamp - 2, stamp - 1, stamp],
            headers=[{"trace": "t1", "n": 7}, None, {"bytes": b"\x00\x01"}, None],
        ),
    )
    assert first == 0
    second = await kafka.append(name, 1, Columns(keys=[None], values=[True]))
    assert second == 4
    assert await kafka.offsets(name, 1) == (0, 5)
    assert await kafka.offsets(name, 0) == (0, 0)

    with trio.fail_after(30):
        found = await kafka.fetch({(name, 1): 0}, timeout=5.0)
    batch = only_batch(found, (name, 1))
    assert batch.offsets[:4] == [0, 1, 2, 3]
    assert batch.keys[:4] == [1, "user-7", None, b"raw"]
    assert batch.values[:4] == [{"amount": 9.5, "tags": ["a", "b"]}, None, [1, 2, 3], "text"]
    assert batch.timestamps[:4] == [stamp - 3, stamp - 2, stamp - 1, stamp]
    assert batch.headers is not None
    assert batch.headers[:4] == [{"trace": "t1", "n": 7}, None, {"bytes": b"\x00\x01"}, None]
    if len(batch) < 5:  # the second append may arrive in a later fetch
        with trio.fail_after(30):
            more = await kafka.fetch({(name, 1): batch.next_offset}, timeout=5.0)
        batch = only_batch(more, (name, 1))
    assert batch.offsets[-1] == 4
    assert batch.values[-1] is True
    assert abs(batch.timestamps[-1] - now_ms()) < 600_000  # None means "now"

    with trio.fail_after(30):
        tail = await kafka.fetch({(name, 1): 2}, timeout=5.0)
    assert only_batch(tail, (name, 1)).offsets[0] == 2


async def test_fetch_at_end_is_empty_and_outside_the_range_raises(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1)
    await kafka.append(name, 0, Columns(keys=[None, None], values=[1, 2]))
    with trio.fail_after(30):
        assert await kafka.fetch({(name, 0): 2}, timeout=0.3) == {}
        with pytest.raises(OffsetOutOfRange) as info:
            await kafka.fetch({(name, 0): 7}, timeout=0.3)
        assert (info.value.offset, info.value.start_offset, info.value.end_offset) == (7, 0, 2)
        with pytest.raises(UnknownTopic):
            await kafka.fetch({(name, 1): 0}, timeout=0.3)
        with pytest.raises(UnknownTopic):
            await kafka.fetch({(new_topic(), 0): 0}, timeout=0.3)
        # timeout=0 still returns records that are stored
        assert only_batch(await kafka.fetch({(name, 0): 0}, timeout=0), (name, 0)).values == [1, 2]


async def test_fetch_long_poll_wakes_on_a_new_record(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1)
    found: dict[tuple[str, int], list[RecordBatch]] = {}
    started = trio.Event()

    async def wait_for_record() -> None:
        started.set()
        found.update(await kafka.fetch({(name, 0): 0}, timeout=60.0))

    # The fetch would wait 60 s; the test fails after 30 unless the append wakes it.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_record)
            await started.wait()
            await trio.sleep(0.5)
            await kafka.append(name, 0, Columns(keys=["k"], values=["woke"]))
    assert only_batch(found, (name, 0)).values == ["woke"]


async def test_keyed_records_land_where_partition_for_puts_them(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    from confluent_kafka import KafkaError, Message
    from confluent_kafka import Producer as KafkaProducer

    name = new_topic()
    await kafka.create_topic(name, partitions=5)
    keys: list[object] = ["user-1", "user-2", 7, 123_456_789, b"\x00bytes", "", ["a", 1]]

    # A plain Kafka producer with Kafka's default partitioner, fed the msgpack key bytes...
    landed: dict[int, int] = {}
    producer = KafkaProducer({"bootstrap.servers": kafka.bootstrap, "partitioner": "murmur2"})

    def report(i: int, error: KafkaError | None, message: Message) -> None:
        assert error is None
        partition = message.partition()
        assert partition is not None
        landed[i] = partition

    def produce_all() -> None:
        for i, key in enumerate(keys):
            packed = msgpack.packb(key, use_bin_type=True)
            producer.produce(name, value=b"v", key=packed, on_delivery=partial(report, i))
        producer.flush(30)

    await trio.to_thread.run_sync(produce_all)
    expected = {i: partition_for(key, 5) for i, key in enumerate(keys)}
    assert landed == expected

    # ...and streamflow's producer over this transport agree with partition_for.
    async with Producer(kafka) as ours:
        sent = [await ours.send(name, {"i": i}, key=key) for i, key in enumerate(keys)]
    assert {i: meta.partition for i, meta in enumerate(sent)} == expected


async def test_repeated_sequence_numbers_are_appended_once(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1)
    me = ProducerIdentity(42)
    batch_ab = Columns([None, None], ["a", "b"])
    assert await kafka.append(name, 0, batch_ab, producer=me, sequence=0) == 0
    assert await kafka.append(name, 0, batch_ab, producer=me, sequence=0) == 0
    # a resend that overlaps: only the new record is written
    assert (
        await kafka.append(name, 0, Columns([None] * 3, ["b", "c", "d"]), producer=me, sequence=1)
        == 1
    )
    with trio.fail_after(30):
        batch = only_batch(await kafka.fetch({(name, 0): 0}, timeout=5.0), (name, 0))
    assert batch.values == ["a", "b", "c", "d"]
    assert await kafka.offsets(name, 0) == (0, 4)


async def test_cancelling_a_long_fetch_returns_promptly(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1)
    with trio.fail_after(30):  # the fetch itself would wait 600 s
        with trio.move_on_after(0.5) as scope:
            await kafka.fetch({(name, 0): 0}, timeout=600.0)
    assert scope.cancelled_caught
    # the transport stays usable after a cancelled fetch
    await kafka.append(name, 0, Columns(keys=[None], values=["after"]))
    with trio.fail_after(30):
        found = await kafka.fetch({(name, 0): 0}, timeout=5.0)
    assert only_batch(found, (name, 0)).values == ["after"]


async def test_unknown_librdkafka_setting_is_invalid_config(kafka_url: str) -> None:
    from streamflow.log.kafka import open_kafka_transport

    with pytest.raises(InvalidConfig, match="no_such_setting"):
        await open_kafka_transport(kafka_url, no_such_setting=1)


async def test_compacted_topic_needs_keys_and_takes_tombstones(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    await kafka.create_topic(name, partitions=1, cleanup_policy="compact")
    with trio.fail_after(60):
        with pytest.raises(ValueError, match="needs a key"):
            await kafka.append(name, 0, Columns(keys=[None], values=[1]))
        assert await kafka.append(name, 0, Columns(keys=["k", "k"], values=[1, None])) == 0
        batch = only_batch(await kafka.fetch({(name, 0): 0}, timeout=5.0), (name, 0))
    assert (batch.keys, batch.values) == (["k", "k"], [1, None])
