"""Group coordination: assignment strategies, rebalances, session timeouts, fencing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from streamflow.errors import InvalidTopicName, RebalanceInProgress, UnknownTopic
from streamflow.log.group import (
    REBALANCE_TIMEOUT,
    GroupCoordinator,
    assign_range,
    assign_round_robin,
    validate_group_name,
)

if TYPE_CHECKING:
    from streamflow.log.transport import Assignment

COUNTS = {"t": 6, "u": 3}


async def _count(topic: str) -> int:
    try:
        return COUNTS[topic]
    except KeyError:
        raise UnknownTopic(topic) from None


def _coordinator() -> GroupCoordinator:
    return GroupCoordinator(_count)


@given(
    members=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
    partitions=st.integers(1, 40),
    strategy=st.sampled_from([assign_range, assign_round_robin]),
)
def test_every_partition_has_exactly_one_owner_and_shares_differ_by_one(
    members: list[str], partitions: int, strategy: object
) -> None:
    assert callable(strategy)
    assignment = strategy({m: ["t"] for m in members}, {"t": partitions})
    owned = [tp for tps in assignment.values() for tp in tps]
    assert sorted(owned) == [("t", p) for p in range(partitions)]
    sizes = [len(tps) for tps in assignment.values()]
    assert max(sizes) - min(sizes) <= 1


def test_assignment_respects_subscriptions() -> None:
    subs = {"a": ["t"], "b": ["t", "u"]}
    for strategy in (assign_range, assign_round_robin):
        assignment = strategy(subs, COUNTS)
        assert all(topic == "t" for topic, _ in assignment["a"])
        assert sorted(tp for tp in assignment["b"] if tp[0] == "u") == [("u", p) for p in range(3)]


def test_group_names_follow_the_topic_rule() -> None:
    assert validate_group_name("g-1") == "g-1"
    for bad in ("", "..", "a/b", "x" * 201, "a\x00b"):
        with pytest.raises(InvalidTopicName):
            validate_group_name(bad)


async def _join_all(
    coordinator: GroupCoordinator, ids: list[str], topics: list[str], session_ms: int = 10_000
) -> dict[str, Assignment]:
    """Run members (join, heartbeat, rejoin when told) until they agree, then stop them."""
    latest: dict[str, Assignment] = {}
    agreed = trio.Event()

    async def member(member_id: str) -> None:
        while True:
            got = await coordinator.join(
                "g", topics, member_id=member_id, session_timeout_ms=session_ms
            )
            latest[member_id] = got
            if len(latest) == len(ids) and {a.generation for a in latest.values()} == {
                coordinator.generation("g")
            }:
                agreed.set()
            alive = True
            while alive:
                await trio.sleep(session_ms / 3000)
                alive = await coordinator.heartbeat("g", member_id, got.generation)

    async with trio.open_nursery() as nursery:
        for member_id in ids:
            nursery.start_soon(member, member_id)
        await agreed.wait()
        nursery.cancel_scope.cancel()
    return latest


async def test_members_joining_together_share_the_partitions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(60):
        first = await coordinator.join("g", ["t"], member_id="a")
        assert first.partitions == [("t", p) for p in range(6)]
        # b's join starts a rebalance; a learns of it from its heartbeat and rejoins.
        assert await coordinator.heartbeat("g", "a", first.generation)
        async with trio.open_nursery() as nursery:
            results: dict[str, Assignment] = {}

            async def join_b() -> None:
                results["b"] = await coordinator.join("g", ["t"], member_id="b")

            nursery.start_soon(join_b)
            await trio.sleep(0.1)
            assert not await coordinator.heartbeat("g", "a", first.generation)
            results["a"] = await coordinator.join("g", ["t"], member_id="a")
    a, b = results["a"], results["b"]
    assert a.generation == b.generation == first.generation + 1
    assert sorted(a.partitions + b.partitions) == [("t", p) for p in range(6)]
    assert set(a.partitions).isdisjoint(b.partitions)


async def test_silent_member_is_dropped_after_its_session_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(120):
        joined = await _join_all(coordinator, ["a", "b"], ["t"], session_ms=3_000)
        gen = joined["a"].generation
        # Only a keeps heartbeating; b went silent.
        beats = 0
        while await coordinator.heartbeat("g", "a", gen):
            beats += 1
            await trio.sleep(1.0)
        assert 2 <= beats <= 4
        again = await coordinator.join("g", ["t"], member_id="a", session_timeout_ms=3_000)
    assert again.generation == gen + 1
    assert again.partitions == [("t", p) for p in range(6)]


async def test_join_waits_for_a_silent_member_only_until_its_session_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(120):
        await _join_all(coordinator, ["a", "b"], ["t"], session_ms=5_000)
        start = trio.current_time()
        # c joins; a and b never come back, so c must wait out their sessions.
        c = await coordinator.join("g", ["t"], member_id="c", session_timeout_ms=5_000)
        waited = trio.current_time() - start
    assert c.partitions == [("t", p) for p in range(6)]
    assert 4.0 <= waited <= 6.0


async def test_leave_moves_partitions_at_once(autojump_clock: trio.testing.MockClock) -> None:
    coordinator = _coordinator()
    with trio.fail_after(60):
        joined = await _join_all(coordinator, ["a", "b"], ["t"])
        await coordinator.leave("g", "b")
        assert not await coordinator.heartbeat("g", "a", joined["a"].generation)
        start = trio.current_time()
        a = await coordinator.join("g", ["t"], member_id="a")
    assert trio.current_time() == start
    assert a.partitions == [("t", p) for p in range(6)]


async def test_commit_is_fenced_by_generation_and_ownership(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(60):
        joined = await _join_all(coordinator, ["a", "b"], ["t"])
    a, b = joined["a"], joined["b"]
    coordinator.check_commit("g", "a", a.generation, a.partitions)
    with pytest.raises(RebalanceInProgress):
        coordinator.check_commit("g", "a", a.generation, b.partitions[:1])
    with pytest.raises(RebalanceInProgress):
        coordinator.check_commit("g", "a", a.generation - 1, a.partitions)
    with pytest.raises(RebalanceInProgress):
        coordinator.check_commit("g", "nobody", a.generation, [])
    # A rebalance that has begun but not completed still accepts the old owner's
    # commits (so a member can commit in its revoke callback) ...
    await coordinator.leave("g", "b")
    coordinator.check_commit("g", "a", a.generation, a.partitions)
    # ... and refuses them once the new generation exists.
    with trio.fail_after(60):
        await coordinator.join("g", ["t"], member_id="a")
    with pytest.raises(RebalanceInProgress):
        coordinator.check_commit("g", "a", a.generation, a.partitions)


async def test_join_of_unknown_topic_fails_without_touching_the_group() -> None:
    coordinator = _coordinator()
    with pytest.raises(UnknownTopic):
        await coordinator.join("g", ["missing"], member_id="a")
    assert coordinator.generation("g") == 0


async def test_rejoin_when_stable_returns_the_current_assignment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(60):
        first = await coordinator.join("g", ["t"], member_id="a")
        again = await coordinator.join("g", ["t"], member_id="a")
    assert again == first


async def test_a_busy_member_that_heartbeats_is_waited_for_beyond_its_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(120):
        joined = await _join_all(coordinator, ["a", "b"], ["t"], session_ms=1_500)
        gen = joined["a"].generation
        async with trio.open_nursery() as nursery:
            got: dict[str, Assignment] = {}

            async def join_c() -> None:
                got["c"] = await coordinator.join(
                    "g", ["t"], member_id="c", session_timeout_ms=1_500
                )

            nursery.start_soon(join_c)
            await trio.sleep(0.1)
            # a and b finish a batch that outlasts their session (10 s here), heartbeating.
            for _ in range(20):
                assert not await coordinator.heartbeat("g", "a", gen)
                assert not await coordinator.heartbeat("g", "b", gen)
                assert coordinator.describe("g").state == "rebalancing"
                await trio.sleep(0.5)
            # Their commits of the old generation are still accepted meanwhile.
            coordinator.check_commit("g", "a", gen, joined["a"].partitions)

            async def rejoin(member_id: str) -> None:
                got[member_id] = await coordinator.join(
                    "g", ["t"], member_id=member_id, session_timeout_ms=1_500
                )

            nursery.start_soon(rejoin, "a")
            nursery.start_soon(rejoin, "b")
    assert {a.generation for a in got.values()} == {gen + 1}
    assert sorted(tp for a in got.values() for tp in a.partitions) == [("t", p) for p in range(6)]
    assert all(len(a.partitions) == 2 for a in got.values())


async def test_a_member_that_heartbeats_but_never_rejoins_is_dropped_at_the_rebalance_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    with trio.fail_after(600):
        joined = await _join_all(coordinator, ["a"], ["t"], session_ms=1_500)
        gen = joined["a"].generation
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            got: dict[str, Assignment] = {}

            async def join_c() -> None:
                got["c"] = await coordinator.join(
                    "g", ["t"], member_id="c", session_timeout_ms=1_500
                )

            async def stuck_a() -> None:
                while await coordinator.heartbeat("g", "a", gen) is False:
                    if "c" in got:
                        return
                    await trio.sleep(0.5)

            nursery.start_soon(join_c)
            await trio.sleep(0.1)
            nursery.start_soon(stuck_a)
        waited = trio.current_time() - start
    assert REBALANCE_TIMEOUT <= waited <= REBALANCE_TIMEOUT + 2
    assert got["c"].partitions == [("t", p) for p in range(6)]
    assert [m.member_id for m in coordinator.describe("g").members] == ["c"]


async def test_describe_reports_members_assignment_generation_and_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coordinator = _coordinator()
    assert coordinator.describe("g").state == "dead"
    with trio.fail_after(60):
        joined = await _join_all(coordinator, ["a", "b"], ["t", "u"])
    desc = coordinator.describe("g")
    assert desc.state == "stable"
    assert desc.generation == joined["a"].generation
    assert {m.member_id: m.partitions for m in desc.members} == {
        member_id: a.partitions for member_id, a in joined.items()
    }
    assert all(m.topics == ["t", "u"] for m in desc.members)
    assert coordinator.groups() == ["g"]
    await coordinator.leave("g", "a")
    assert coordinator.describe("g").state == "rebalancing"
    await coordinator.leave("g", "b")
    assert (coordinator.describe("g").state, coordinator.describe("g").members) == ("empty", [])
