"""Coordinate consumer groups: membership, rebalances and partition assignment.

A group moves between two states. *Stable*: every member owns the partitions
of the current generation and heartbeats keep it alive. *Rebalancing*: begun
when a member joins, leaves or misses heartbeats for its session timeout;
heartbeats answer ``False`` so that every member gives up its partitions and
calls ``join`` again. The rebalance completes, and the generation goes up by
one, when every member has rejoined. A member that has not rejoined is dropped
when it misses heartbeats for its session timeout, or when the rebalance has
waited ``REBALANCE_TIMEOUT`` seconds for it: a member that keeps heartbeating
may take that long to finish its current batch and commit before it rejoins
(Kafka's ``max.poll.interval.ms``), so a busy member is not mistaken for a dead
one. Members that stopped heartbeating are noticed lazily, whenever another
member of the group calls in, so the coordinator needs no background task.

Commits are fenced by generation: only a member of the current generation may
commit offsets for the partitions it owns (still allowed while a rebalance is
pending, so that a member can commit in its revoke callback).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from ..errors import InvalidConfig, InvalidTopicName, RebalanceInProgress
from .naming import check_topic_name
from .transport import Assignment, GroupDescription, MemberDescription, TopicPartition

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

logger = logging.getLogger("streamflow.group")

ASSIGNORS: Final = ("range", "roundrobin")
#: Longest a rebalance waits for a member that still heartbeats to rejoin (s).
REBALANCE_TIMEOUT: Final = 60.0

Subscriptions = dict[str, list[str]]


def validate_group_name(group: object) -> str:
    """Return *group* if it is a valid group id, else raise ``InvalidTopicName``.

    Group ids follow the topic naming rule.

    >>> validate_group_name("fraud.v2")
    'fraud.v2'
    """
    try:
        return check_topic_name(group)
    except InvalidTopicName as exc:
        raise InvalidTopicName(group, "group id") from exc


def assign_range(
    subscriptions: Subscriptions, partition_counts: dict[str, int]
) -> dict[str, list[TopicPartition]]:
    """Give each member a contiguous range of every topic it subscribes to.

    Members are ordered by id; the first ``count % members`` get one extra.

    >>> assign_range({"a": ["t"], "b": ["t"]}, {"t": 3})
    {'a': [('t', 0), ('t', 1)], 'b': [('t', 2)]}
    """
    out: dict[str, list[TopicPartition]] = {m: [] for m in sorted(subscriptions)}
    for topic in sorted({t for ts in subscriptions.values() for t in ts}):
        members = sorted(m for m, ts in subscriptions.items() if topic in ts)
        count = partition_counts[topic]
        share, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            n = share + (1 if i < extra else 0)
            out[member].extend((topic, p) for p in range(start, start + n))
            start += n
    return out


def assign_round_robin(
    subscriptions: Subscriptions, partition_counts: dict[str, int]
) -> dict[str, list[TopicPartition]]:
    """Deal every partition in turn to the members subscribed to its topic.

    >>> assign_round_robin({"a": ["t"], "b": ["t"]}, {"t": 3})
    {'a': [('t', 0), ('t', 2)], 'b': [('t', 1)]}
    """
    out: dict[str, list[TopicPartition]] = {m: [] for m in sorted(subscriptions)}
    members = sorted(subscriptions)
    turn = 0
    for topic in sorted({t for ts in subscriptions.values() for t in ts}):
        for p in range(partition_counts[topic]):
            for _ in range(len(members)):
                member = members[turn % len(members)]
                turn += 1
                if topic in subscriptions[member]:
                    out[member].append((topic, p))
                    break
    return out


@dataclass(slots=True)
class _Member:
    member_id: str
    topics: list[str]
    session_timeout: float
    last_seen: float
    joined: bool = False


@dataclass(slots=True)
class _Group:
    name: str
    members: dict[str, _Member] = field(default_factory=dict)
    generation: int = 0
    assignment: dict[str, list[TopicPartition]] = field(default_factory=dict)
    rebalancing: bool = False
    deadline: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)


class GroupCoordinator:
    """Hold the membership of every group of one log. Safe from many tasks.

    Args:
        partition_count: Async function giving a topic's partition count
            (raises ``UnknownTopic``).
        assignor: ``"range"`` or ``"roundrobin"``.
    """

    def __init__(
        self,
        partition_count: Callable[[str], Awaitable[int]],
        *,
        assignor: str = "range",
    ) -> None:
        if assignor not in ASSIGNORS:
            raise InvalidConfig("assignor", assignor, " or ".join(ASSIGNORS))
        self._partition_count = partition_count
        self._assign = assign_range if assignor == "range" else assign_round_robin
        self._groups: dict[str, _Group] = {}
        self._counts: dict[str, int] = {}

    async def join(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join *group* (or rejoin it) and wait for the rebalance to complete.

        Returns at once with the current assignment when the group is stable
        and the member is already part of it with the same topics. Cancelling
        the call leaves the member joined; it is dropped once it misses its
        session timeout.
        """
        validate_group_name(group)
        if not topics:
            raise ValueError("join_group: give at least one topic")
        if session_timeout_ms <= 0:
            raise InvalidConfig("session_timeout_ms", session_timeout_ms, "a positive integer")
        for topic in topics:
            # Raises UnknownTopic before the group is touched.
            self._counts[topic] = await self._partition_count(topic)
        g = self._groups.setdefault(group, _Group(group))
        member_id = member_id or f"{group}-{secrets.token_hex(6)}"
        now = trio.current_time()
        m = g.members.get(member_id)
        topics = sorted(set(topics))
        if m is not None and not g.rebalancing and m.topics == topics and member_id in g.assignment:
            m.last_seen = now
            return Assignment(member_id, g.generation, list(g.assignment[member_id]))
        if m is None:
            m = _Member(member_id, topics, session_timeout_ms / 1000, now)
            g.members[member_id] = m
            logger.info("group %s: member %s joined", group, member_id)
        m.topics = topics
        m.session_timeout = session_timeout_ms / 1000
        m.last_seen = now
        self._start_rebalance(g, now)
        m.joined = True
        start_generation = g.generation
        while True:
            self._advance(g)
            if g.generation > start_generation and member_id in g.assignment:
                return Assignment(member_id, g.generation, list(g.assignment[member_id]))
            if member_id not in g.members or not g.rebalancing:
                # Our rebalance completed without us (we were dropped meanwhile): join again.
                g.members.setdefault(member_id, m)
                m.last_seen = trio.current_time()
                self._start_rebalance(g, m.last_seen)
                m.joined = True
                start_generation = g.generation
                continue
            with trio.move_on_at(self._next_check(g)):
                await g.done.wait()

    async def heartbeat(self, group: str, member_id: str, generation: int) -> bool:
        """Record that *member_id* is alive; return False when it must rejoin."""
        g = self._groups.get(group)
        m = g.members.get(member_id) if g is not None else None
        if g is None or m is None:
            return False
        m.last_seen = trio.current_time()
        self._advance(g)
        return not g.rebalancing and generation == g.generation and member_id in g.members

    async def leave(self, group: str, member_id: str) -> None:
        """Remove *member_id* from *group* and rebalance the rest at once."""
        g = self._groups.get(group)
        if g is None or g.members.pop(member_id, None) is None:
            return
        logger.info("group %s: member %s left", group, member_id)
        g.assignment.pop(member_id, None)
        if g.members:
            self._start_rebalance(g, trio.current_time())
            self._advance(g)
        else:
            g.rebalancing = False
            g.assignment = {}

    def check_commit(
        self, group: str, member_id: str, generation: int, partitions: Iterable[TopicPartition]
    ) -> None:
        """Raise ``RebalanceInProgress`` unless the member owns *partitions* now."""
        g = self._groups.get(group)
        if g is None or member_id not in g.members or generation != g.generation:
            raise RebalanceInProgress(
                f"group {group}: member {member_id} of generation {generation} is not "
                "part of the current generation; rejoin, then commit again"
            )
        owned = set(g.assignment.get(member_id, ()))
        foreign = sorted(tp for tp in partitions if tp not in owned)
        if foreign:
            raise RebalanceInProgress(
                f"group {group}: member {member_id} does not own {foreign} in generation "
                f"{generation}; commit only the partitions assigned to you"
            )

    def describe(self, group: str) -> GroupDescription:
        """Return *group*'s members, their partitions, its generation and state.

        Members that stopped heartbeating are dropped first, so the answer is
        current. A group this coordinator never saw is ``"dead"``.
        """
        g = self._groups.get(group)
        if g is None:
            return GroupDescription(group, "dead", 0)
        self._advance(g)
        if not g.members:
            state = "empty"
        else:
            state = "rebalancing" if g.rebalancing else "stable"
        members = [
            MemberDescription(m.member_id, list(m.topics), list(g.assignment.get(m.member_id, ())))
            for m in sorted(g.members.values(), key=lambda m: m.member_id)
        ]
        return GroupDescription(group, state, g.generation, members)

    def groups(self) -> list[str]:
        """Return the names of the groups this coordinator knows, sorted."""
        return sorted(self._groups)

    def generation(self, group: str) -> int:
        """Return the current generation of *group* (0 before its first rebalance)."""
        g = self._groups.get(group)
        return 0 if g is None else g.generation

    def _start_rebalance(self, g: _Group, now: float) -> None:
        if g.rebalancing:
            return
        g.rebalancing = True
        for member in g.members.values():
            member.joined = False
        longest = max((m.session_timeout for m in g.members.values()), default=0.0)
        g.deadline = now + max(longest, REBALANCE_TIMEOUT)
        logger.info("group %s: rebalance started (generation %d)", g.name, g.generation)

    def _advance(self, g: _Group) -> None:
        """Drop silent members and complete a rebalance whose members all rejoined."""
        now = trio.current_time()
        for member in list(g.members.values()):
            expired = now >= member.last_seen + member.session_timeout
            late = g.rebalancing and now >= g.deadline
            if not member.joined and (expired or late):
                del g.members[member.member_id]
                logger.info(
                    "group %s: member %s dropped (no heartbeat or rejoin in time)",
                    g.name,
                    member.member_id,
                )
                self._start_rebalance(g, now)
        if not g.rebalancing or not all(m.joined for m in g.members.values()):
            return
        subscriptions = {m.member_id: m.topics for m in g.members.values()}
        g.generation += 1
        g.assignment = self._assign(subscriptions, self._counts) if subscriptions else {}
        g.rebalancing = False
        for member in g.members.values():
            member.joined = False
            member.last_seen = now
        logger.info(
            "group %s: rebalanced to generation %d: %s",
            g.name,
            g.generation,
            {m: len(tps) for m, tps in g.assignment.items()},
        )
        done, g.done = g.done, trio.Event()
        done.set()

    def _next_check(self, g: _Group) -> float:
        waiting = [m.last_seen + m.session_timeout for m in g.members.values() if not m.joined]
        return min([g.deadline, *waiting])
