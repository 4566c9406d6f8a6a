"""Validate a topic's settings: ``TopicConfig``.

A topic's settings are fixed when it is created and stored next to its
partitions as ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from streamflow.errors import InvalidConfig

DAY_MS: Final = 24 * 3600 * 1000
MIN_SEGMENT_BYTES: Final = 4096
MAX_SEGMENT_BYTES: Final = (1 << 31) - 1
MAX_PARTITIONS: Final = 10_000
CLEANUP_POLICIES: Final = ("delete", "compact", "compact,delete")
FSYNC_POLICIES: Final = ("always", "interval", "never")


def _int(setting: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidConfig(setting, value, f"an integer >= {low}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidConfig(setting, value, f"an integer {bound}")
    return value


def _optional(setting: str, value: object, low: int) -> int | None:
    # None or -1 (Kafka's spelling) mean "no limit"
    if value is None or value == -1:
        return None
    return _int(setting, value, low)


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """The settings of one topic (DESIGN §1); constructing one validates it.

    ``retention_ms`` and ``retention_bytes`` of None mean "no limit". Internal
    topics (repartition topics) are never trimmed by time.

    Raises:
        InvalidConfig: naming the first setting with a value streamflow cannot use.
    """

    partitions: int = 1
    retention_ms: int | None = 7 * DAY_MS
    retention_bytes: int | None = None
    segment_bytes: int = 64 << 20
    segment_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    delete_retention_ms: int = DAY_MS
    fsync: str = "interval"
    flush_ms: int = 1000
    max_record_bytes: int = 1 << 20
    internal: bool = False

    def __post_init__(self) -> None:
        _int("partitions", self.partitions, 1, MAX_PARTITIONS)
        object.__setattr__(self, "retention_ms", _optional("retention_ms", self.retention_ms, 0))
        object.__setattr__(
            self, "retention_bytes", _optional("retention_bytes", self.retention_bytes, 1)
        )
        _int("segment_bytes", self.segment_bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
        _int("segment_ms", self.segment_ms, 1)
        policy = self.cleanup_policy
        if isinstance(policy, str):
            policy = ",".join(sorted(p.strip() for p in policy.split(",")))
        if policy not in CLEANUP_POLICIES:
            raise InvalidConfig(
                "cleanup_policy", self.cleanup_policy, "'delete', 'compact' or 'compact,delete'"
            )
        object.__setattr__(self, "cleanup_policy", policy)
        _int("delete_retention_ms", self.delete_retention_ms, 0)
        if self.fsync not in FSYNC_POLICIES:
            raise InvalidConfig("fsync", self.fsync, "'always', 'interval' or 'never'")
        _int("flush_ms", self.flush_ms, 0)
        _int("max_record_bytes", self.max_record_bytes, 1, MAX_SEGMENT_BYTES)
        if not isinstance(self.internal, bool):
            raise InvalidConfig("internal", self.internal, "True or False")

    @property
    def compacted(self) -> bool:
        """Return whether the cleanup policy includes compaction."""
        return "compact" in self.cleanup_policy

    @property
    def deletes(self) -> bool:
        """Return whether the cleanup policy includes retention (deleting old segments)."""
        return "delete" in self.cleanup_policy

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (what ``describe`` and ``config.json`` hold).

        >>> TopicConfig(partitions=2).to_dict()["partitions"]
        2
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TopicConfig:
        """Build a config from keyword settings, rejecting names it does not know.

        Raises:
            InvalidConfig: for an unknown setting or a bad value.

        >>> TopicConfig.from_settings({"cleanup_policy": "delete,compact"}).cleanup_policy
        'compact,delete'
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for name in settings:
            if name not in known:
                raise InvalidConfig(name, settings[name], f"one of the settings {sorted(known)}")
        return cls(**settings)
