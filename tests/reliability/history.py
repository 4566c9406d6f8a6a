"""Check a history of sends, acks and reads against a queue's promises (Jepsen-style).

Every value sent is unique (``"<producer>:<seq>"``). The test records each send's
outcome, ``ok`` with the ``(partition, offset)`` the log acknowledged, ``fail``
(definitely not written) or ``info`` (unknown: timeout, broker killed), every
record a consumer polled, and finally the whole log as read back. ``check()``
returns the anomalies:

* ``lost``: acknowledged, but not in the final log;
* ``duplicated``: in the final log more than once;
* ``inconsistent``: in the final log at another place than acknowledged, or two
  acknowledgements for one place (an offset reused);
* ``unexpected``: a value in the log that nobody sent (garbage served);
* ``failed_present``: a send reported as failed whose value is in the log;
* ``backwards`` / ``skipped``: a consumer's polls of a partition went back, or
  jumped over a record that is in the final log;
* ``reordered`` (only with ``check(order=True)``): two values of one producer
  (the part before the last ``:``) stored in one partition against the order
  of their sequence numbers (the part after it).

An acknowledgement with offset -1 (a retried batch the log recognised as
stored, whose place it no longer knows) counts for ``lost`` only.

Only acknowledgements the harness *received* count for ``lost``; ``info`` sends
may appear once or not at all, never twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Anomalies:
    """What ``History.check`` found; empty lists mean a clean history."""

    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    failed_present: list[str] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Return the number of anomalies of each kind."""
        return {name: len(items) for name, items in vars(self).items()}

    @property
    def ok(self) -> bool:
        """Return whether there is no anomaly at all (``failed_present`` aside)."""
        return not any(v for k, v in self.counts().items() if k != "failed_present")

    def summary(self, limit: int = 5) -> str:
        """Return a short text naming the first few anomalies of each kind."""
        return "; ".join(
            f"{name}={len(items)} e.g. {items[:limit]}"
            for name, items in vars(self).items()
            if items
        )


class History:
    """Sends, outcomes, polls and the final log of one run. Not thread-safe."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.acked: dict[str, tuple[int, int]] = {}
        self.failed: set[str] = set()
        self.unknown: set[str] = set()
        self.polls: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
        self.final: dict[int, list[tuple[int, str]]] = {}

    def invoke(self, value: str) -> None:
        """Note that *value* is about to be sent."""
        self.sent.add(value)

    def ok(self, value: str, partition: int, offset: int) -> None:
        """Note the acknowledgement of *value* at ``(partition, offset)``."""
        self.sent.add(value)
        self.unknown.discard(value)
        self.acked[value] = (partition, offset)

    def fail(self, value: str) -> None:
        """Note that sending *value* definitely failed."""
        self.failed.add(value)

    def info(self, value: str) -> None:
        """Note that sending *value* has an unknown outcome."""
        if value not in self.acked:
            self.unknown.add(value)

    def poll(self, consumer: str, partition: int, offset: int, value: str) -> None:
        """Note that *consumer* read *value* at ``(partition, offset)``."""
        self.polls[(consumer, partition)].append((offset, value))

    def read_final(self, partition: int, records: list[tuple[int, str]]) -> None:
        """Record the whole of *partition* as read back at the end: ``(offset, value)``."""
        self.final[partition] = records

    def check(self, *, order: bool = False) -> Anomalies:
        """Return every anomaly of the history (module docstring).

        With *order*, also check that each producer's values are stored in
        sequence order within each partition.
        """
        found = Anomalies()
        where: dict[str, tuple[int, int]] = {}
        counts: Counter[str] = Counter()
        at: dict[tuple[int, int], str] = {}
        for partition, records in sorted(self.final.items()):
            for offset, value in records:
                counts[value] += 1
                where[value] = (partition, offset)
                at[(partition, offset)] = value
                if value not in self.sent:
                    found.unexpected.append(f"{value!r}@{partition}:{offset}")
        found.duplicated = sorted(v for v, n in counts.items() if n > 1)
        owners: dict[tuple[int, int], str] = {}
        for value, place in sorted(self.acked.items()):
            if value not in counts:
                found.lost.append(value)
                continue
            if place[1] < 0:
                continue
            if where[value] != place:
                found.inconsistent.append(f"{value} acked at {place}, stored at {where[value]}")
            other = owners.setdefault(place, value)
            if other != value:
                found.inconsistent.append(f"{place} acknowledged for {other} and {value}")
        found.failed_present = sorted(v for v in self.failed if v in counts)
        for (consumer, partition), seen in sorted(self.polls.items()):
            kept = sorted(o for (p, o) in at if p == partition)
            rank = {o: i for i, o in enumerate(kept)}
            last: int | None = None
            for offset, value in seen:
                if at.get((partition, offset), value) != value:
                    found.inconsistent.append(
                        f"{consumer} read {value!r} at {partition}:{offset}, log holds "
                        f"{at[(partition, offset)]!r}"
                    )
                if last is not None and offset <= last:
                    found.backwards.append(f"{consumer} {partition}: {last} -> {offset}")
                elif last is not None and last in rank and offset in rank:
                    if rank[offset] != rank[last] + 1:
                        found.skipped.append(f"{consumer} {partition}: {last} -> {offset}")
                last = offset
        if order:
            found.reordered = self._reordered()
        return found

    def _reordered(self) -> list[str]:
        out: list[str] = []
        for partition, records in sorted(self.final.items()):
            last: dict[str, tuple[int, int]] = {}
            for offset, value in records:
                producer, _, seq = str(value).rpartition(":")
                if not seq.isdigit():
                    continue
                before = last.get(producer)
                if before is not None and int(seq) <= before[0]:
                    out.append(
                        f"{producer} in {partition}: seq {seq} at {offset} after "
                        f"seq {before[0]} at {before[1]}"
                    )
                last[producer] = (int(seq), offset)
        return out
