"""Committed offsets and consumer groups of KafkaTransport, and the client API on top of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.errors import RebalanceInProgress
from streamflow.log import Assignment, Columns, Committed
from streamflow.log.consumer import Consumer
from streamflow.log.producer import Producer

from .conftest import SESSION_TIMEOUT_MS

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamflow.log.kafka_transport import KafkaTransport

pytestmark = pytest.mark.kafka


async def test_commit_and_committed_round_trip_metadata(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    group = f"{name}.g"
    await kafka.create_topic(name, partitions=3)
    checkpoint = {"checkpoint": 3, "offsets": {"t": [1, 2]}, "blob": b"\x00\xff"}
    with trio.fail_after(60):
        await kafka.commit(group, {(name, 0): Committed(5, checkpoint), (name, 2): Committed(9)})
        found = await kafka.committed(group, [(name, 0), (name, 1), (name, 2)])
        assert found == {(name, 0): Committed(5, checkpoint), (name, 2): Committed(9, None)}
        await kafka.commit(group, {(name, 0): Committed(6, "plain text")})
        assert await kafka.committed(group, [(name, 0)]) == {(name, 0): Committed(6, "plain text")}
        assert await kafka.committed(f"{group}.other", [(name, 0)]) == {}


async def heartbeat_until_rebalance(kafka: KafkaTransport, group: str, a: Assignment) -> None:
    """Heartbeat like a consumer does until the group asks the member to rejoin."""
    while True:
        if not await kafka.heartbeat(group, a.member_id, a.generation):
            return
        await trio.sleep(0.1)


async def test_group_members_share_partitions_and_rebalance(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    group = f"{name}.g"
    await kafka.create_topic(name, partitions=4)
    everything = [(name, p) for p in range(4)]
    with trio.fail_after(90):
        first = await kafka.join_group(group, [name], session_timeout_ms=SESSION_TIMEOUT_MS)
        assert first.partitions == everything
        assert await kafka.heartbeat(group, first.member_id, first.generation)
        await kafka.commit(
            group, {(name, 0): Committed(1)}, member_id=first.member_id, generation=first.generation
        )

        # A second member joins: the first one is told to rejoin, and they split the topic.
        joined: list[Assignment] = []

        async def join_second() -> None:
            joined.append(
                await kafka.join_group(group, [name], session_timeout_ms=SESSION_TIMEOUT_MS)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join_second)
            await heartbeat_until_rebalance(kafka, group, first)
            again = await kafka.join_group(
                group, [name], member_id=first.member_id, session_timeout_ms=SESSION_TIMEOUT_MS
            )
        [second] = joined
        assert again.member_id == first.member_id
        assert again.generation > first.generation
        assert sorted(again.partitions + second.partitions) == everything
        assert again.partitions
        assert second.partitions

        # A commit of the old generation is fenced.
        with pytest.raises(RebalanceInProgress):
            await kafka.commit(
                group,
                {(name, 0): Committed(2)},
                member_id=first.member_id,
                generation=first.generation,
            )
        owned = again.partitions[0]
        await kafka.commit(
            group, {owned: Committed(3)}, member_id=again.member_id, generation=again.generation
        )
        assert (await kafka.committed(group, [owned]))[owned].offset == 3

        # When the second member leaves, the first gets every partition back.
        await kafka.leave_group(group, second.member_id)
        await heartbeat_until_rebalance(kafka, group, again)
        last = await kafka.join_group(
            group, [name], member_id=first.member_id, session_timeout_ms=SESSION_TIMEOUT_MS
        )
        assert last.partitions == everything
        await kafka.leave_group(group, first.member_id)


async def test_producer_and_group_consumer_work_on_kafka(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    name = new_topic()
    group = f"{name}.g"
    await kafka.create_topic(name, partitions=2)
    values = [{"n": i} for i in range(50)]
    with trio.fail_after(90):
        async with Producer(kafka) as producer:
            sent = await producer.send_many(name, values, keys=[i % 7 for i in range(50)])
        assert sorted(m.offset for m in sent if m.partition == 0) == list(
            range(sum(1 for m in sent if m.partition == 0))
        )
        got: list[dict[str, int]] = []
        async with Consumer(
            kafka, name, group=group, session_timeout_ms=SESSION_TIMEOUT_MS
        ) as consumer:
            while len(got) < len(values):
                got.extend(r.value for r in await consumer.poll(timeout=1.0))
            await consumer.commit()
            committed = await consumer.committed()
        assert sorted(got, key=lambda v: v["n"]) == values
        ends = {(name, p): (await kafka.offsets(name, p))[1] for p in range(2)}
        assert committed == ends

        # A new member of the group starts at the committed offsets: nothing left to read.
        await kafka.append(name, 0, Columns(keys=[None], values=["late"]))
        async with Consumer(
            kafka, name, group=group, session_timeout_ms=SESSION_TIMEOUT_MS
        ) as consumer:
            late: list[object] = []
            while not late:
                late.extend(r.value for r in await consumer.poll(timeout=1.0))
        assert late == ["late"]
