"""Produce to and read from a log directory in runtime tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamflow.log import Columns, Committed, Message, Record
from streamflow.log.client import connect
from streamflow.log.partitioner import partition_for
from streamflow.testing import read_topic

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


async def produce(
    target: str | Path, topic: str, messages: Sequence[Any], partitions: int = 1
) -> None:
    """Create *topic* if needed and append *messages* (values or Messages)."""
    async with connect(target) as client:
        t = client.transport
        if topic not in await t.topics():
            await t.create_topic(topic, partitions=partitions)
        count = len((await t.describe(topic)).partitions)
        by_partition: dict[int, list[Message]] = {}
        for i, m in enumerate(messages):
            msg = m if isinstance(m, Message) else Message(None, m)
            p = i % count if msg.key is None else partition_for(msg.key, count)
            by_partition.setdefault(p, []).append(msg)
        for p, msgs in by_partition.items():
            await t.append(
                topic,
                p,
                Columns(
                    [m.key for m in msgs], [m.value for m in msgs], [m.timestamp for m in msgs]
                ),
            )


async def read(target: str | Path, topic: str) -> list[Record]:
    async with connect(target) as client:
        return await read_topic(client.transport, topic)


async def committed(target: str | Path, group: str, topic: str) -> dict[int, int]:
    async with connect(target) as client:
        t = client.transport
        n = len((await t.describe(topic)).partitions)
        got = await t.committed(group, [(topic, p) for p in range(n)])
        return {p: c.offset for (_, p), c in got.items()}


async def rewind(target: str | Path, group: str, topic: str, offset: int) -> None:
    async with connect(target) as client:
        t = client.transport
        n = len((await t.describe(topic)).partitions)
        await t.commit(group, {(topic, p): Committed(offset) for p in range(n)})
