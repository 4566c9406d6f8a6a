"""Kafka transactions through the transport: all-or-nothing appends and offsets, fencing."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.errors import ProducerFenced, RebalanceInProgress
from streamflow.log import Columns, Committed
from streamflow.log.transport import Transactional
from streamflow.runtime.transactions import TaskTransactions, claimed_run

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamflow.log import RecordBatch
    from streamflow.log.kafka_transport import KafkaTransport

pytestmark = pytest.mark.kafka

WAIT = 30


def columns(values: list[int]) -> Columns:
    return Columns([v for v in values], list(values))


async def read_all(kafka: KafkaTransport, topic: str) -> tuple[list[int], int]:
    """Return every committed value of partition 0 and the reader's position after them."""
    tp = (topic, 0)
    position = 0
    values: list[int] = []
    _, end = await kafka.offsets(topic, 0)
    while True:
        found: dict[tuple[str, int], list[RecordBatch]] = await kafka.fetch(
            {tp: position}, timeout=0.0
        )
        if not found:
            return values, kafka.position_after(topic, 0, position)
        for batch in found[tp]:
            values += batch.values
            position = batch.next_offset
        if position >= end:
            return values, position


async def test_kafka_transport_is_transactional(kafka: KafkaTransport) -> None:
    assert isinstance(kafka, Transactional)


async def test_records_and_offsets_of_a_transaction_appear_together_at_commit(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic, group = new_topic(), new_topic()
    await kafka.create_topic(topic, partitions=1)
    with trio.fail_after(WAIT):
        txn = await kafka.open_transaction(f"{topic}.writer")
        try:
            assert await txn.append(topic, 0, columns([1, 2, 3])) == 0
            await txn.append(topic, 0, columns([4]))
            # open: readers see nothing, the group has no offset yet
            assert await kafka.fetch({(topic, 0): 0}, timeout=0.2) == {}
            assert await kafka.committed(group, [(topic, 0)]) == {}
            await txn.commit(group, {(topic, 0): Committed(4, {"checkpoint": 7})})
        finally:
            await txn.aclose()
        values, position = await read_all(kafka, topic)
        assert values == [1, 2, 3, 4]
        _, end = await kafka.offsets(topic, 0)
        assert end == 5  # four records and the commit marker
        assert position == end  # the reader is past the marker
        committed = await kafka.committed(group, [(topic, 0)])
    assert committed == {(topic, 0): Committed(4, {"checkpoint": 7})}


async def test_aborted_records_are_never_read(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic, group = new_topic(), new_topic()
    await kafka.create_topic(topic, partitions=1)
    with trio.fail_after(WAIT):
        txn = await kafka.open_transaction(f"{topic}.writer")
        try:
            await txn.append(topic, 0, columns([1, 2]))
            await txn.commit(group, {(topic, 0): Committed(1)})
            await txn.append(topic, 0, columns([-1, -2, -3]))
            await txn.abort()
            # an aborted tail: a reader at its start finds nothing and moves past it
            tail = 3
            assert await kafka.fetch({(topic, 0): tail}, timeout=0.0) == {}
            _, end = await kafka.offsets(topic, 0)
            assert kafka.position_after(topic, 0, tail) == end
            await txn.append(topic, 0, columns([5]))
            await txn.commit(group, {(topic, 0): Committed(2)})
        finally:
            await txn.aclose()
        values, _ = await read_all(kafka, topic)
        committed = await kafka.committed(group, [(topic, 0)])
    assert values == [1, 2, 5]
    assert committed[(topic, 0)].offset == 2


async def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic, group = new_topic(), new_topic()
    await kafka.create_topic(topic, partitions=1)
    with trio.fail_after(WAIT):
        zombie = await kafka.open_transaction(f"{topic}.writer")
        await zombie.append(topic, 0, columns([-1, -2]))
        successor = await kafka.open_transaction(f"{topic}.writer")
        try:
            with pytest.raises(ProducerFenced, match="taken over"):
                await zombie.commit(group, {(topic, 0): Committed(9)})
            with pytest.raises(ProducerFenced):
                await zombie.append(topic, 0, columns([-3]))
            await successor.append(topic, 0, columns([1]))
            await successor.commit(group, {(topic, 0): Committed(1)})
        finally:
            await zombie.aclose()
            await successor.aclose()
        values, _ = await read_all(kafka, topic)
        committed = await kafka.committed(group, [(topic, 0)])
    assert values == [1]
    assert committed[(topic, 0)].offset == 1


async def test_a_member_of_an_old_generation_cannot_commit_in_a_transaction(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic, group = new_topic(), new_topic()
    await kafka.create_topic(topic, partitions=1)
    with trio.fail_after(WAIT):
        assignment = await kafka.join_group(group, [topic], session_timeout_ms=6000)
        txn = await kafka.open_transaction(f"{topic}.writer")
        try:
            await txn.append(topic, 0, columns([-1]))
            with pytest.raises(RebalanceInProgress):
                await txn.commit(
                    group,
                    {(topic, 0): Committed(1)},
                    member_id=assignment.member_id,
                    generation=assignment.generation + 1,
                )
            # the refused commit aborted the transaction; the member can go on
            await txn.append(topic, 0, columns([1]))
            await txn.commit(
                group,
                {(topic, 0): Committed(1)},
                member_id=assignment.member_id,
                generation=assignment.generation,
            )
        finally:
            await txn.aclose()
            await kafka.leave_group(group, assignment.member_id)
        values, _ = await read_all(kafka, topic)
        committed = await kafka.committed(group, [(topic, 0)])
    assert values == [1]
    assert committed[(topic, 0)].offset == 1


async def test_each_run_of_a_task_fences_the_run_before_and_claims_a_new_writer(
    kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    source, out, group = new_topic(), new_topic(), new_topic()
    await kafka.create_topic(source, partitions=1)
    await kafka.create_topic(out, partitions=1)
    fresh = {(source, 0): Committed(0)}
    task = partial(TaskTransactions.open, kafka, pipeline="p", stage="s0", partition=0, group=group)
    with trio.fail_after(WAIT):
        first, committed = await task(fresh=fresh)
        assert (first.run, claimed_run(committed)) == (0, 0)
        await first.append(out, 0, columns([-1]))  # left open by a run that "crashes"
        second, committed = await task(fresh=fresh)
        try:
            assert (second.run, claimed_run(committed)) == (1, 1)
            assert committed[(source, 0)].offset == 0  # the claim moved no offset
            with pytest.raises(ProducerFenced):
                await first.commit(group, {(source, 0): Committed(1)})
            await second.append(out, 0, columns([1]))
            await second.commit(group, {(source, 0): Committed(1)})
        finally:
            await first.aclose()
            await second.aclose()
        values, _ = await read_all(kafka, out)
        committed = await kafka.committed(group, [(source, 0)])
    assert values == [1]
    assert committed == {(source, 0): Committed(1, {"txn": 1})}
