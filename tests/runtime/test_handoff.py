"""In-process hand-off of repartition batches: same results as reading the log back."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from streamflow import Pipeline, windows
from streamflow.log import Columns, Message, ProducerIdentity
from streamflow.log.client import connect
from streamflow.pipeline import plan, resolve
from streamflow.runtime import run_async
from streamflow.runtime.handoff import MAX_ENTRIES, Handoff, hands_off
from streamflow.runtime.job import Job

from .helpers import produce, read

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def payments(n: int) -> list[Message]:
    return [
        Message(None, {"user": f"u{i % 11}", "cents": i % 97, "n": i}, timestamp=1_000 + 37 * i)
        for i in range(n)
    ]


def two_stage_window() -> Pipeline:
    p = Pipeline("win", parallelism=2)
    (
        p.source("pay", timestamp=lambda v: 5 * v["n"])
        .filter(lambda v: v["cents"] > 3)
        .key_by(lambda v: v["user"])
        .window(windows.tumbling(ms=2_000))
        .aggregate("spend", initial=lambda: 0, fold=lambda acc, v: acc + v["cents"])
        .sink("out")
    )
    return p


def two_stage_process() -> Pipeline:
    def check(ctx: Any, key: Any, value: Any) -> None:
        seen = ctx.state.get() or 0
        ctx.state.set(seen + 1)
        value["seen"] = seen  # a downstream may change what it was given
        ctx.emit(value)

    p = Pipeline("proc", parallelism=2)
    p.source("pay").peek(lambda v: None).key_by(lambda v: v["user"]).process("seen", check).sink(
        "out"
    )
    return p


def three_stages() -> Pipeline:
    p = Pipeline("three", parallelism=3)
    (
        p.source("pay")
        .key_by(lambda v: v["n"] % 5)
        .filter(lambda v: v["n"] % 4 != 0)
        .key_by(lambda v: v["user"])
        .map(lambda v: [v["n"], type(v).__name__])
        .sink("out")
    )
    return p


def one_stage() -> Pipeline:
    p = Pipeline("one")
    p.source("pay").map(lambda v: v["n"]).sink("out")
    return p


async def outputs(
    data: Path, job: Callable[[], Pipeline], caplog: pytest.LogCaptureFixture, **options: Any
) -> tuple[list[tuple[int, Any, Any, int]], int]:
    """Run *job* to the end; return its sink records (per partition, in order) and hand-offs."""
    await produce(data, "pay", payments(600))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streamflow.runtime"), trio.fail_after(60):
        await run_async(job(), data, until_idle=True, **options)
    found = re.search(r"(\d+) repartition record\(s\) handed over", caplog.text)
    out = [(r.partition, r.key, r.value, r.timestamp) for r in await read(data, "out")]
    return sorted(out, key=lambda r: r[0]), int(found.group(1)) if found else 0


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("job", [one_stage, two_stage_window, two_stage_process, three_stages])
async def test_results_match_with_and_without_handoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, job: Callable[[], Pipeline], mode: str
) -> None:
    on, taken = await outputs(tmp_path / "on", job, caplog, processing=mode)
    off, untaken = await outputs(tmp_path / "off", job, caplog, processing=mode, handoff=False)
    if job is three_stages:  # several writers per repartition partition: only per-key order
        on, off = sorted(on, key=repr), sorted(off, key=repr)
    assert on == off
    assert on
    assert untaken == 0
    if job is two_stage_window:  # one writer, nothing else to read: the reader takes them
        assert taken > 0


async def test_tuple_values_from_map_are_not_handed_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def job() -> Pipeline:
        p = Pipeline("tuples", parallelism=2)
        (
            p.source("pay")
            .map(lambda v: (v["user"], v["n"]))
            .key_by(lambda v: v[0])
            .map(lambda v: type(v).__name__)
            .sink("out")
        )
        return p

    out, taken = await outputs(tmp_path, job, caplog)
    assert taken == 0
    assert {value for _, _, value, _ in out} == {"list"}
    assert len(out) == 600


async def test_non_scalar_keys_are_not_handed_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def job() -> Pipeline:
        p = Pipeline("tuplekeys", parallelism=2)
        p.source("pay").key_by(lambda v: (v["user"], 1)).map(lambda v: v["n"]).sink("out")
        return p

    out, taken = await outputs(tmp_path, job, caplog)
    assert taken == 0
    assert {type(key) for _, key, _, _ in out} == {list}


def test_only_pass_through_stages_hand_off() -> None:
    p = Pipeline("kinds")
    src = p.source("pay")
    src.filter(bool).peek(print).key_by(len).map(str).sink("out")
    p2 = Pipeline("mapped")
    p2.source("pay").map(str).key_by(len).sink("out")
    p4 = Pipeline("branch")
    branch = p4.source("pay").filter(bool)
    branch.key_by(len).sink("out")
    branch.sink("copy")
    first, second = plan(p).stages
    assert hands_off(plan(p), first)
    assert not hands_off(plan(p), second)  # no repartition output
    for other in (p2, p4):
        assert not hands_off(plan(other), plan(other).stages[0])


async def test_duplicate_dropping_replay_is_not_handed_off(tmp_path: Path) -> None:
    async with connect(tmp_path) as client:
        t = client.transport
        await t.create_topic("r", partitions=1)
        handoff = Handoff(t, ["r"])
        writer = ProducerIdentity(7)

        def columns(n: int) -> Columns:
            return Columns(list(range(n)), [{"v": i} for i in range(n)], [5] * n)

        got = await handoff.append("r", 0, columns(3), producer=writer, sequence=0, offer=True)
        assert got == 0
        assert handoff.take({("r", 0): 0})[("r", 0)][0].values == [{"v": i} for i in range(3)]
        # The same sequence again: all of it is dropped (returns the original offset).
        got = await handoff.append("r", 0, columns(3), producer=writer, sequence=0, offer=True)
        assert got == 0
        assert handoff.take({("r", 0): 0}) == {}
        # A longer replay of sequence 0: the first three are dropped, two are stored.
        got = await handoff.append("r", 0, columns(5), producer=writer, sequence=0, offer=True)
        assert got == 3
        assert handoff.take({("r", 0): 3}) == {}
        assert (await t.offsets("r", 0))[1] == 5


async def test_handoff_is_taken_once_at_its_exact_offset(tmp_path: Path) -> None:
    async with connect(tmp_path) as client:
        t = client.transport
        await t.create_topic("r", partitions=2)
        handoff = Handoff(t, ["r"])
        tp = ("r", 0)
        for i in range(3):
            await handoff.append("r", 0, Columns([i], [i], [i]), offer=True)
        # Behind the reader: dropped; from its offset on: taken, without gaps, once.
        assert [b.offsets for b in handoff.take({tp: 1})[tp]] == [[1], [2]]
        assert handoff.take({tp: 1}) == {}
        await handoff.append("r", 0, Columns([9], [9], [9]), offer=True)
        assert handoff.take({("r", 1): 3}) == {}
        batches = handoff.take({tp: 3})[tp]
        assert [b.offsets for b in batches] == [[3]]
        assert handoff.take({tp: 3}) == {}
        # Timestamps the log sets ("now") or turns into ints, and unused offers: not kept.
        await handoff.append("r", 0, Columns([1], [1], None), offer=True)
        await handoff.append("r", 0, Columns([1, 2], [1, 2], [True, 5]), offer=True)
        await handoff.append("r", 0, Columns([1], [1], [1]), offer=False)
        assert handoff.take({tp: 4}) == {}
        assert (await t.offsets(*tp))[1] == 8


async def test_handoff_holds_a_bounded_number_of_batches(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Nobody takes: each batch past the bound waits FULL_WAIT (mock time) and is dropped.
    async with connect(tmp_path) as client:
        t = client.transport
        await t.create_topic("r", partitions=1)
        handoff = Handoff(t, ["r"])
        for i in range(MAX_ENTRIES + 5):
            await handoff.append("r", 0, Columns([i], [i], [i]), offer=True)
        batches = handoff.take({("r", 0): 0})[("r", 0)]
        assert [b.values for b in batches] == [[i] for i in range(MAX_ENTRIES)]
        # Past the kept ones the reader goes back to the log, which has all of them.
        assert (await t.offsets("r", 0))[1] == MAX_ENTRIES + 5


@pytest.mark.parametrize(
    ("options", "active"),
    [({}, True), ({"handoff": False}, False), ({"use_groups": True}, False)],
)
async def test_handoff_only_where_the_job_is_the_sole_writer(
    tmp_path: Path, options: dict[str, Any], active: bool
) -> None:
    pipeline = Pipeline("solo")
    pipeline.source("pay").key_by(len).sink("out")
    the_plan = plan(pipeline)
    async with connect(tmp_path) as client:
        job = Job(
            transport=client.transport,
            plan=the_plan,
            layout=resolve(the_plan, {"pay": 1}),
            processing="exactly_once",
            until_idle=True,
            state_dir=tmp_path / "state",
            **options,
        )
        assert (job.handoffs is not None) is active
