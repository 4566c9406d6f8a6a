"""The log: partitioned, append-only topics on disk, embedded or behind a broker."""

from __future__ import annotations

from .record import Headers, Message, Record, RecordBatch
from .transport import (
    Assignment,
    Columns,
    Committed,
    PartitionInfo,
    ProducerIdentity,
    TopicDescription,
    TopicPartition,
    Transport,
)

__all__ = [
    "Assignment",
    "Columns",
    "Committed",
    "Headers",
    "Message",
    "PartitionInfo",
    "ProducerIdentity",
    "Record",
    "RecordBatch",
    "TopicDescription",
    "TopicPartition",
    "Transport",
]
