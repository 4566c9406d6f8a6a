"""Define ``streamflow status`` and ``top``: topics, consumer groups and their lag.

Both read through the client's ``Transport``, so they work the same on a log
directory and on a broker: topic offsets and sizes from ``describe``, the
committed offsets of every group from the internal compacted topic
``__consumer_offsets`` (key ``[group, topic, partition]``, value ``[offset,
metadata]``; the newest commit per key wins), and each group's members, their
assignment, generation and state from ``describe_group``. A group's lag on a
partition is ``end_offset - committed``. Group membership lives in the process
that serves the log, so a log directory opened by ``status`` itself shows
groups as ``empty``; a broker shows the live members. ``top`` samples twice
per refresh and shows rates: records appended per second per topic, records
committed per second per group.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click
import trio

from .app import DEFAULT_DATA, main

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import RenderableType

    from streamflow.log import PartitionInfo, Transport
    from streamflow.log.transport import MemberDescription

OFFSETS_TOPIC: Final = "__consumer_offsets"
FETCH_BYTES: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """One topic: its partitions' offsets and sizes, and whether it is internal."""

    name: str
    partitions: list[PartitionInfo]
    internal: bool = False

    @property
    def end_offset(self) -> int:
        """Return the sum of the partitions' end offsets (records ever appended)."""
        return sum(p.end_offset for p in self.partitions)

    @property
    def size_bytes(self) -> int:
        """Return the bytes on disk of every partition together."""
        return sum(p.size_bytes for p in self.partitions)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A group's committed offset on one partition, and how far behind the end it is."""

    topic: str
    partition: int
    committed: int
    end_offset: int
    owner: str | None = None

    @property
    def lag(self) -> int:
        """Return the records appended but not yet committed (never negative)."""
        return max(0, self.end_offset - self.committed)


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """A consumer group (a job's stage is the group ``<pipeline>.<stage>``).

    ``state`` and ``generation`` are those of ``GroupDescription``; ``members``
    lists each member with the partitions it owns now.
    """

    name: str
    partitions: list[PartitionLag] = field(default_factory=list)
    state: str = "empty"
    generation: int = 0
    members: list[MemberDescription] = field(default_factory=list)

    @property
    def lag(self) -> int:
        """Return the total lag over the group's partitions."""
        return sum(p.lag for p in self.partitions)

    @property
    def committed(self) -> int:
        """Return the sum of the committed offsets (to compute commit rates)."""
        return sum(p.committed for p in self.partitions)


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a log target: every topic and every group with commits."""

    topics: list[TopicStatus]
    groups: list[GroupStatus]

    def to_json(self) -> dict[str, Any]:
        """Return the snapshot as plain JSON-ready data, lag included."""
        return {
            "topics": [
                {
                    "name": t.name,
                    "internal": t.internal,
                    "partitions": [dataclasses.asdict(p) for p in t.partitions],
                }
                for t in self.topics
            ],
            "groups": [
                {
                    "name": g.name,
                    "state": g.state,
                    "generation": g.generation,
                    "members": [
                        {
                            "member_id": m.member_id,
                            "topics": list(m.topics),
                            "partitions": [list(tp) for tp in m.partitions],
                        }
                        for m in g.members
                    ],
                    "lag": g.lag,
                    "partitions": [dataclasses.asdict(p) | {"lag": p.lag} for p in g.partitions],
                }
                for g in self.groups
            ],
        }


async def read_commits(transport: Transport) -> dict[tuple[str, str, int], int]:
    """Return every group's newest committed offset per ``(group, topic, partition)``."""
    from streamflow.errors import UnknownTopic

    try:
        start, end = await transport.offsets(OFFSETS_TOPIC, 0)
    except UnknownTopic:
        return {}
    found: dict[tuple[str, str, int], int] = {}
    position = start
    while position < end:
        fetched = await transport.fetch(
            {(OFFSETS_TOPIC, 0): position}, timeout=0, max_bytes=FETCH_BYTES
        )
        batches = fetched.get((OFFSETS_TOPIC, 0), [])
        if not batches:
            break
        for batch in batches:
            for key, value in zip(batch.keys, batch.values, strict=True):
                if not (isinstance(key, list) and len(key) == 3):
                    continue
                group, topic, partition = key
                if value is None:
                    found.pop((group, topic, partition), None)
                elif isinstance(value, list) and value and isinstance(value[0], int):
                    found[(group, topic, partition)] = value[0]
            position = batch.next_offset
    return found


async def collect_status(transport: Transport) -> Status:
    """Describe every topic and group, and compute every group's lag per partition."""
    topics: list[TopicStatus] = []
    ends: dict[tuple[str, int], int] = {}
    for name in await transport.topics():
        if name == OFFSETS_TOPIC:
            continue
        description = await transport.describe(name)
        internal = bool(description.config.get("internal")) or name.endswith(
            (".repartition", ".changelog")
        )
        topics.append(TopicStatus(name, list(description.partitions), internal))
        for p in description.partitions:
            ends[(name, p.partition)] = p.end_offset
    by_group: dict[str, list[PartitionLag]] = {}
    for (group, topic, partition), committed in sorted((await read_commits(transport)).items()):
        end = ends.get((topic, partition))
        if end is not None:  # a deleted topic's old commits are not lag
            by_group.setdefault(group, []).append(PartitionLag(topic, partition, committed, end))
    groups = []
    for name in sorted(set(by_group) | set(await transport.list_groups())):
        described = await transport.describe_group(name)
        owners = {tp: m.member_id for m in described.members for tp in m.partitions}
        rows = [
            dataclasses.replace(row, owner=owners.get((row.topic, row.partition)))
            for row in by_group.get(name, [])
        ]
        groups.append(
            GroupStatus(name, rows, described.state, described.generation, described.members)
        )
    return Status(topics, groups)


def format_status(status: Status) -> str:
    """Return *status* as three plain-text tables: topics, group members, group lag.

    >>> from streamflow.log import PartitionInfo
    >>> from streamflow.log.transport import MemberDescription
    >>> member = MemberDescription("g-1", ["t"], [("t", 0), ("t", 1)])
    >>> s = Status([TopicStatus("t", [PartitionInfo(0, 0, 5, 300)])],
    ...            [GroupStatus("g", [PartitionLag("t", 0, 3, 5, "g-1")], "stable", 2, [member])])
    >>> print(format_status(s))
    TOPIC  PARTITION  START_OFFSET  END_OFFSET  SIZE
    t              0             0           5  300 B
    <BLANKLINE>
    GROUP  STATE   GENERATION  MEMBER  ASSIGNMENT
    g      stable           2  g-1     t[0,1]
    <BLANKLINE>
    GROUP  TOPIC  PARTITION  COMMITTED  END_OFFSET  LAG  OWNER
    g      t              0          3           5    2  g-1
    """
    from .topics import format_bytes

    topic_rows = [("TOPIC", "PARTITION", "START_OFFSET", "END_OFFSET", "SIZE")]
    for t in status.topics:
        for p in t.partitions:
            topic_rows.append(
                (
                    t.name,
                    str(p.partition),
                    str(p.start_offset),
                    str(p.end_offset),
                    format_bytes(p.size_bytes),
                )
            )
    lines = _table(topic_rows, right={1, 2, 3}) if status.topics else ["no topics"]
    lines.append("")
    if not status.groups:
        lines.append("no consumer groups")
        return "\n".join(lines)
    member_rows = [("GROUP", "STATE", "GENERATION", "MEMBER", "ASSIGNMENT")]
    for g in status.groups:
        listed: list[MemberDescription | None] = list(g.members) or [None]
        for m in listed:
            member_rows.append(
                (
                    g.name,
                    g.state,
                    str(g.generation),
                    "-" if m is None else m.member_id,
                    "-" if m is None else format_assignment(m.partitions),
                )
            )
    lines += _table(member_rows, right={2})
    lag_rows = [("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END_OFFSET", "LAG", "OWNER")]
    for g in status.groups:
        for lag in g.partitions:
            lag_rows.append(
                (
                    g.name,
                    lag.topic,
                    str(lag.partition),
                    str(lag.committed),
                    str(lag.end_offset),
                    str(lag.lag),
                    lag.owner or "-",
                )
            )
    if len(lag_rows) > 1:
        lines.append("")
        lines += _table(lag_rows, right={2, 3, 4, 5})
    return "\n".join(lines)


def format_assignment(partitions: Sequence[tuple[str, int]]) -> str:
    """Return partitions grouped by topic, as ``topic[0,1] other[3]`` (``-`` if none).

    >>> format_assignment([("t", 1), ("t", 0), ("u", 3)])
    't[0,1] u[3]'
    """
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    if not by_topic:
        return "-"
    return " ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in by_topic.items())


def _table(rows: Sequence[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def open_target(target: str) -> Any:
    """Return an unopened client for *target*, without background cleaning for a directory."""
    from streamflow.log.client import connect

    if "://" in target:
        return connect(target)
    if not Path(target).is_dir():
        from .app import CommandError

        raise CommandError(
            f"no log directory at {target!r}; pass --broker DIR or --broker tcp://HOST:PORT"
        )
    return connect(target, cleaner=False)


def target_option(func: Any) -> Any:
    """Add ``--broker TARGET`` (default: the group's ``--data`` directory)."""
    return click.option(
        "--broker",
        "target",
        default=None,
        help="Log directory or tcp://HOST:PORT of a broker (default: --data, ./data).",
    )(func)


def resolve_target(target: str | None) -> str:
    """Return the target given, else the group's ``--data`` directory."""
    if target is not None:
        return target
    root = click.get_current_context().find_root()
    return str(root.params.get("data") or DEFAULT_DATA)


@main.command()
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def status(target: str | None, as_json: bool) -> None:
    """Print every topic (partitions, offsets, size) and every group's lag per partition."""

    async def fetch() -> Status:
        async with open_target(resolve_target(target)) as client:
            return await collect_status(client.transport)

    snapshot = trio.run(fetch)
    if as_json:
        click.echo(json.dumps(snapshot.to_json(), sort_keys=True))
    else:
        click.echo(format_status(snapshot))


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates between two snapshots: appends per topic, commits per group."""

    topics: dict[str, float]
    groups: dict[str, float]


def rates_between(before: Status, after: Status, seconds: float) -> Rates:
    """Return the append and commit rates from *before* to *after*, *seconds* apart.

    >>> from streamflow.log import PartitionInfo
    >>> a = Status([TopicStatus("t", [PartitionInfo(0, 0, 10, 1)])], [])
    >>> b = Status([TopicStatus("t", [PartitionInfo(0, 0, 30, 1)])], [])
    >>> rates_between(a, b, 2.0).topics
    {'t': 10.0}
    """
    span = max(seconds, 1e-9)
    old_topics = {t.name: t.end_offset for t in before.topics}
    old_groups = {g.name: g.committed for g in before.groups}
    return Rates(
        {
            t.name: max(0, t.end_offset - old_topics.get(t.name, t.end_offset)) / span
            for t in after.topics
        },
        {
            g.name: max(0, g.committed - old_groups.get(g.name, g.committed)) / span
            for g in after.groups
        },
    )


def render_top(target: str, snapshot: Status, rates: Rates, show_internal: bool) -> RenderableType:
    """Return the ``top`` screen: a topics table and a groups table, as rich renderables."""
    from rich.console import Group
    from rich.table import Table

    from .topics import format_bytes

    topics = Table(title=f"streamflow top: {target}", title_justify="left", expand=False)
    for header in ("topic", "partitions", "records", "in/s", "size"):
        topics.add_column(header, justify="left" if header == "topic" else "right")
    for t in snapshot.topics:
        if t.internal and not show_internal:
            continue
        topics.add_row(
            t.name,
            str(len(t.partitions)),
            str(t.end_offset),
            _rate(rates.topics.get(t.name, 0.0)),
            format_bytes(t.size_bytes),
        )
    groups = Table(expand=False)
    for header in ("group", "partitions", "committed/s", "lag", "max partition lag"):
        groups.add_column(header, justify="left" if header == "group" else "right")
    for g in snapshot.groups:
        worst = max(g.partitions, key=lambda p: p.lag, default=None)
        groups.add_row(
            g.name,
            str(len(g.partitions)),
            _rate(rates.groups.get(g.name, 0.0)),
            str(g.lag),
            "-" if worst is None else f"{worst.lag} ({worst.topic}[{worst.partition}])",
        )
    if not snapshot.groups:
        groups.add_row("(no consumer groups)", "", "", "", "")
    return Group(topics, groups)


def _rate(value: float) -> str:
    if not math.isfinite(value) or value <= 0:
        return "0"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


@main.command()
@target_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one screen (after one interval) and exit.")
@click.option("--internal", "show_internal", is_flag=True, help="Show internal topics too.")
def top(target: str | None, interval: float, once: bool, show_internal: bool) -> None:
    """Show throughput and lag of every topic and group, refreshing until Ctrl-C.

    The rates are measured over the last interval; with a log directory the
    command holds the directory open, so a job cannot run on it meanwhile
    (use a broker for a live view of a running job).
    """
    from rich.console import Console
    from rich.live import Live

    where = resolve_target(target)
    console = Console()

    async def watch() -> None:
        async with open_target(where) as client:
            transport = client.transport
            before, then = await collect_status(transport), trio.current_time()
            if once:
                await trio.sleep(interval)
                after = await collect_status(transport)
                rates = rates_between(before, after, trio.current_time() - then)
                console.print(render_top(where, after, rates, show_internal))
                return
            first = render_top(where, before, Rates({}, {}), show_internal)
            with Live(first, console=console, auto_refresh=False) as live:
                while True:
                    await trio.sleep(interval)
                    after, now = await collect_status(transport), trio.current_time()
                    rates = rates_between(before, after, now - then)
                    live.update(render_top(where, after, rates, show_internal), refresh=True)
                    before, then = after, now

    try:
        trio.run(watch)
    except KeyboardInterrupt:
        return
