"""Define every error streamflow raises on purpose.

Each class is named for its condition and carries the data a caller needs.
This module imports nothing from streamflow, so every layer can use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class StreamflowError(Exception):
    """Base class for every error streamflow raises on purpose."""


class InvalidTopicName(StreamflowError, ValueError):
    """A topic (or group) name breaks the naming rule ``[A-Za-z0-9._-]{1,200}``."""

    def __init__(self, name: object, reason: str = "") -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"invalid name {name!r}{why}: use 1 to 200 characters from "
            "A-Z a-z 0-9 . _ -, and not '.' or '..'"
        )
        self.name = name


class InvalidConfig(StreamflowError, ValueError):
    """A setting has a value streamflow cannot use."""

    def __init__(self, setting: str, value: object, expected: str) -> None:
        super().__init__(f"{setting}={value!r} is not valid: expected {expected}")
        self.setting = setting
        self.value = value


class TopicExists(StreamflowError):
    """``create_topic`` was asked for a topic that already exists."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists")
        self.topic = topic


class UnknownTopic(StreamflowError, KeyError):
    """A topic, or a partition of a topic, does not exist."""

    def __init__(self, topic: str, partition: int | None = None) -> None:
        if partition is None:
            msg = f"topic {topic!r} does not exist; create it first"
        else:
            msg = f"topic {topic!r} has no partition {partition}"
        super().__init__(msg)
        self.topic = topic
        self.partition = partition

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return str(self.args[0])


class OffsetOutOfRange(StreamflowError):
    """A read asked for an offset outside ``[start_offset, end_offset]``."""

    def __init__(
        self, topic: str, partition: int, offset: int, start_offset: int, end_offset: int
    ) -> None:
        super().__init__(
            f"{topic}[{partition}]: offset {offset} is outside the kept range "
            f"[{start_offset}, {end_offset}]; seek to a kept offset"
        )
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset


class CorruptBatch(StreamflowError):
    """A batch in the middle of a segment failed its checks; nothing is skipped."""

    def __init__(self, path: Path, position: int, reason: str = "bad CRC") -> None:
        super().__init__(
            f"{path}: {reason} at byte {position}; the records from here on stay "
            "unreadable until the file is restored"
        )
        self.path = path
        self.position = position
        self.reason = reason


class RecordTooLarge(StreamflowError):
    """An encoded record (or batch) is larger than the topic allows."""

    def __init__(self, size: int, limit: int, topic: str | None = None) -> None:
        where = f" for topic {topic!r}" if topic else ""
        super().__init__(f"record of {size} bytes is larger than max_record_bytes={limit}{where}")
        self.size = size
        self.limit = limit
        self.topic = topic


class FrameTooLarge(StreamflowError):
    """A wire frame announced a length above the connection's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class NotSerializable(StreamflowError, TypeError):
    """A key, value or header cannot be encoded with msgpack."""

    def __init__(self, value: object, what: str = "value") -> None:
        kind = type(value).__name__
        super().__init__(
            f"{what} of type {kind} cannot be encoded with msgpack; use dict, list, "
            "str, bytes, int, float, bool or None"
        )
        self.type_name = kind
        self.what = what


class ProtocolError(StreamflowError):
    """A peer sent a frame that does not follow the wire protocol."""


class BrokerUnavailable(StreamflowError):
    """The broker could not be reached, or the connection to it broke."""

    def __init__(self, address: str, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(f"broker {address} is unavailable{why}")
        self.address = address


class AuthenticationFailed(StreamflowError):
    """The broker refused the connection's token."""


class LogLocked(StreamflowError):
    """Another process holds the log directory open."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"{path} is already open in another process ({holder}); share a log "
            "between processes through `streamflow broker`"
        )
        self.path = path
        self.holder = holder


class LogClosed(StreamflowError):
    """The log (or a partition of it) was closed, or taken offline after an I/O error."""


class DuplicateSequence(StreamflowError):
    """An idempotent append repeated sequence numbers the log already holds."""

    def __init__(self, producer_id: int, sequence: int, last_sequence: int) -> None:
        super().__init__(
            f"producer {producer_id}: sequence {sequence} was already written "
            f"(last sequence {last_sequence})"
        )
        self.producer_id = producer_id
        self.sequence = sequence
        self.last_sequence = last_sequence


class ProducerFenced(StreamflowError):
    """A newer instance of the same producer (a higher epoch) has taken over."""

    def __init__(self, producer_id: int, epoch: int, current_epoch: int) -> None:
        super().__init__(
            f"producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}; "
            "this instance must stop writing"
        )
        self.producer_id = producer_id
        self.epoch = epoch
        self.current_epoch = current_epoch


class RebalanceInProgress(StreamflowError):
    """The group is rebalancing; rejoin and retry the commit."""


class UnknownMember(StreamflowError):
    """A group member is not (or no longer) part of the group."""


class StateStoreError(StreamflowError):
    """A state store cannot be opened, read or written."""


class PipelineError(StreamflowError):
    """A pipeline is built or used wrongly; the message names the operator."""


class OperatorError(StreamflowError):
    """A user function raised while processing a record."""

    def __init__(
        self, operator: str, topic: str, partition: int, offset: int, error: BaseException
    ) -> None:
        super().__init__(
            f"operator {operator} failed on {topic}[{partition}] at offset {offset}: "
            f"{type(error).__name__}: {error}"
        )
        self.operator = operator
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.error = error


class StorageError(StreamflowError):
    """A disk write failed (disk full, I/O error); the write was not acknowledged."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(
            f"{what} failed: {error.strerror or error} (errno {error.errno}); nothing was "
            "acknowledged: free disk space or fix the device, then retry"
        )
        self.what = what
        self.errno = error.errno


class PartitionOffline(LogClosed):
    """A partition stopped taking writes after a failed fsync; reopen the log to recover."""

    def __init__(self, label: str, error: OSError) -> None:
        super().__init__(
            f"{label} is offline: an fsync failed ({error.strerror or error}, errno "
            f"{error.errno}), so data written since the last good fsync may be lost; "
            "fix the disk and reopen the log (restart the broker) to recover"
        )
        self.label = label
        self.errno = error.errno
