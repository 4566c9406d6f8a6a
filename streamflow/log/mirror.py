"""Copy topics from one log target to another, record for record: ``mirror``.

Works between any two targets (an embedded directory, a broker, a Kafka
cluster), in either direction. Each source partition is copied into the
destination partition with the same number, keeping every record's key,
value, timestamp and headers; offsets in the destination are its own (they
match the source's when the destination partition starts empty and the
source has no gaps).

Re-running a mirror does not duplicate records on the built-in log: every
append carries a ``ProducerIdentity`` derived from the topic and partition
and the source offset as its sequence number, so the destination drops what
it already holds. (On Kafka that memory lasts only as long as the
destination's transport: see docs/kafka.md.)
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ..errors import InvalidConfig, UnknownTopic
from .config import TopicConfig
from .transport import Columns, ProducerIdentity, Transport

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .record import RecordBatch
    from .transport import TopicPartition

logger = logging.getLogger("streamflow.mirror")

#: Bytes read per fetch.
FETCH_BYTES: Final = 1 << 20
#: How long a tailing mirror (``until_idle=False``) waits per fetch (s).
TAIL_TIMEOUT: Final = 1.0
_SETTINGS: Final = frozenset(TopicConfig.__dataclass_fields__) - {"partitions"}


class HasTransport(Protocol):
    """Anything with a ``transport`` (a ``Client`` from ``streamflow.connect``)."""

    @property
    def transport(self) -> Transport:
        """The target's ``Transport``."""
        ...


def mirror_producer(topic: str, partition: int) -> ProducerIdentity:
    """Return the producer identity a mirror appends to ``topic[partition]`` with.

    Stable across processes, so that a re-run is deduplicated.

    >>> mirror_producer("t", 0) == mirror_producer("t", 0)
    True
    >>> mirror_producer("t", 0) == mirror_producer("t", 1)
    False
    """
    digest = hashlib.blake2b(f"streamflow.mirror\0{topic}\0{partition}".encode(), digest_size=8)
    return ProducerIdentity(int.from_bytes(digest.digest(), "big") >> 1)


async def mirror(
    src_client: HasTransport | Transport,
    dst_client: HasTransport | Transport,
    topics: Iterable[str],
    *,
    from_beginning: bool = True,
    until_idle: bool = True,
) -> dict[str, int]:
    """Copy *topics* from *src_client* to *dst_client*; return the records copied per topic.

    A topic missing in the destination is created with the source's
    partition count and settings (those the destination understands).

    Args:
        src_client: Source ``Client`` (or ``Transport``).
        dst_client: Destination ``Client`` (or ``Transport``).
        topics: Topic names to copy.
        from_beginning: Start at each partition's first kept record; else at
            its end (copy only what arrives from now on).
        until_idle: Return once every partition is caught up; else keep
            copying until cancelled.

    Raises:
        UnknownTopic: a topic does not exist in the source.
        InvalidConfig: a destination topic has fewer partitions than its source.
    """
    src = _transport_of(src_client)
    dst = _transport_of(dst_client)
    names = list(dict.fromkeys(topics))
    if not names:
        raise ValueError("mirror: name at least one topic")
    copied = dict.fromkeys(names, 0)

    async def copy(topic: str) -> None:
        copied[topic] = await _mirror_topic(src, dst, topic, from_beginning, until_idle)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(copy, name)
    return copied


def _transport_of(target: HasTransport | Transport) -> Transport:
    found = getattr(target, "transport", None)
    return found if found is not None else target  # type: ignore[return-value]


async def _prepare(src: Transport, dst: Transport, topic: str) -> int:
    """Create *topic* in *dst* like in *src* when missing; return its partition count."""
    description = await src.describe(topic)
    count = len(description.partitions)
    try:
        found = len((await dst.describe(topic)).partitions)
    except UnknownTopic:
        settings: dict[str, Any] = {k: v for k, v in description.config.items() if k in _SETTINGS}
        await dst.create_topic(topic, partitions=count, **settings)
        logger.info("mirror: created %s with %d partitions", topic, count)
        return count
    if found < count:
        raise InvalidConfig(
            f"partitions of {topic!r} in the destination",
            found,
            f"at least {count}, as in the source; delete it or add partitions",
        )
    return count


async def _mirror_topic(
    src: Transport, dst: Transport, topic: str, from_beginning: bool, until_idle: bool
) -> int:
    count = await _prepare(src, dst, topic)
    positions: dict[TopicPartition, int] = {}
    for p in range(count):
        start, end = await src.offsets(topic, p)
        positions[(topic, p)] = start if from_beginning else end
    copied = 0
    while positions:
        fetched = await src.fetch(
            positions, max_bytes=FETCH_BYTES, timeout=0.0 if until_idle else TAIL_TIMEOUT
        )
        if not fetched and until_idle:
            break  # every partition is caught up
        for tp, batches in fetched.items():
            for batch in batches:
                if len(batch):
                    await _append(dst, tp, batch)
                    copied += len(batch)
                    positions[tp] = batch.next_offset
    logger.info("mirror: copied %d records of %s", copied, topic)
    return copied


async def _append(dst: Transport, tp: TopicPartition, batch: RecordBatch) -> None:
    topic, partition = tp
    stamps: list[int | None] = list(batch.timestamps)
    columns = Columns(list(batch.keys), list(batch.values), stamps, batch.headers)
    # Source offsets as sequence numbers: increasing, so a re-run is dropped.
    await dst.append(
        topic,
        partition,
        columns,
        producer=mirror_producer(topic, partition),
        sequence=batch.offsets[0],
    )
