"""Build confluent-kafka clients and translate their errors into streamflow's.

Shared by ``kafka_transport`` (topics, appends, fetches) and ``kafka_group``
(consumer groups and committed offsets). Every blocking call on these clients
runs in a worker thread, and a thread hop never waits longer than
``MAX_WAIT`` seconds, so cancelling a trio task that waits on Kafka takes
effect within that time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException
from confluent_kafka.admin._listoffsets import OffsetSpec

from ..errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    InvalidConfig,
    RebalanceInProgress,
    RecordTooLarge,
    StreamflowError,
    TopicExists,
    UnknownTopic,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from confluent_kafka import TopicPartition as KafkaPartition
    from confluent_kafka.admin import AdminClient

logger = logging.getLogger("streamflow.kafka")

#: Longest a single worker-thread call waits on librdkafka (seconds).
MAX_WAIT: Final = 0.25
#: Timeout of one admin or metadata request (seconds).
REQUEST_TIMEOUT: Final = 30.0

_UNAVAILABLE: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
_UNKNOWN: Final = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)
_REBALANCE: Final = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)
_DENIED: Final = frozenset(
    {
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)
_BAD_SETTINGS: Final = frozenset(
    {
        KafkaError.INVALID_CONFIG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_REPLICATION_FACTOR,
    }
)
_TOO_LARGE: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def translate(
    error: KafkaError | KafkaException,
    bootstrap: str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> StreamflowError:
    """Return the streamflow error for a Kafka error (raise it ``from`` the original).

    Args:
        error: The ``KafkaError`` (or the ``KafkaException`` wrapping one).
        bootstrap: The cluster's ``bootstrap.servers``, named in unavailability errors.
        topic: The topic the request was about, if any.
        partition: The partition the request was about, if any.
        settings: The topic settings of a ``create_topic`` call, if any.
    """
    if isinstance(error, KafkaException):
        inner = error.args[0] if error.args else None
        if not isinstance(inner, KafkaError):
            return BrokerUnavailable(bootstrap, str(error))
        error = inner
    code = error.code()
    text = error.str()
    if code in _UNKNOWN and topic is not None:
        return UnknownTopic(topic, partition)
    if code == KafkaError.TOPIC_ALREADY_EXISTS and topic is not None:
        return TopicExists(topic)
    if code in _REBALANCE:
        return RebalanceInProgress(f"the Kafka group is rebalancing ({text}); rejoin, then retry")
    if code in _DENIED:
        return AuthenticationFailed(
            f"the Kafka cluster {bootstrap} refused access ({text}); check the SASL/TLS "
            "settings and the ACLs"
        )
    if code in _BAD_SETTINGS:
        return InvalidConfig(
            "topic settings", dict(settings or {}), f"settings the Kafka cluster accepts ({text})"
        )
    if code in _TOO_LARGE:
        return RecordTooLarge(-1, -1, topic)
    if code == KafkaError.OFFSET_METADATA_TOO_LARGE:
        return InvalidConfig(
            "commit metadata", "...", f"smaller metadata (the cluster refused it: {text})"
        )
    return BrokerUnavailable(bootstrap, f"{error.name()}: {text}")


def is_unavailable(error: KafkaError) -> bool:
    """Return whether *error* means the cluster (or the group coordinator) is out of reach."""
    return error.code() in _UNAVAILABLE


def new_consumer(
    settings: Mapping[str, Any],
    group: str,
    defaults: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Consumer:
    """Create a consumer that never commits on its own and never creates topics.

    *defaults* apply unless *settings* (the user's) say otherwise; *extra*
    always applies. Does not block (librdkafka connects in its background threads).
    """
    config: dict[str, Any] = {
        **(defaults or {}),
        **settings,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "allow.auto.create.topics": False,
        "enable.partition.eof": False,
        "logger": logger,
        **extra,
    }
    return Consumer(config)


def watermarks(admin: AdminClient, partitions: list[KafkaPartition]) -> dict[int, tuple[int, int]]:
    """Return ``{partition: (start, end)}`` of partitions of one topic. Blocking.

    The end is the last stable offset (``read_committed``), what consumers see.

    Raises:
        KafkaException: the cluster did not answer, or a partition is unknown.
    """
    options: dict[str, Any] = {
        "request_timeout": REQUEST_TIMEOUT,
        "isolation_level": IsolationLevel.READ_COMMITTED,
    }
    earliest = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    starts = admin.list_offsets({tp: earliest for tp in partitions}, **options)
    ends = admin.list_offsets({tp: latest for tp in partitions}, **options)
    first = {tp.partition: f.result().offset for tp, f in starts.items()}
    return {tp.partition: (first[tp.partition], f.result().offset) for tp, f in ends.items()}
