"""The log: partitioned, append-only topics on disk, embedded or behind a broker."""

from __future__ import annotations

from .cleaner import run_cleaner
from .config import TopicConfig
from .directory import Log
from .partition import Partition
from .partitioner import partition_for
from .record import Headers, Message, Record, RecordBatch
from .transport import (
    Assignment,
    Columns,
    Committed,
    GroupDescription,
    MemberDescription,
    PartitionInfo,
    ProducerIdentity,
    StoredReader,
    TopicDescription,
    TopicPartition,
    Transaction,
    Transactional,
    Transport,
)

__all__ = [
    "Assignment",
    "Columns",
    "Committed",
    "GroupDescription",
    "Headers",
    "Log",
    "MemberDescription",
    "Message",
    "Partition",
    "PartitionInfo",
    "ProducerIdentity",
    "Record",
    "RecordBatch",
    "StoredReader",
    "TopicConfig",
    "TopicDescription",
    "TopicPartition",
    "Transaction",
    "Transactional",
    "Transport",
    "partition_for",
    "run_cleaner",
]
