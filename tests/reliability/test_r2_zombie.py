"""R2: a worker frozen past its session timeout comes back as a zombie; results stay exactly-once.

Two ``python -m streamflow.runtime`` processes (exactly-once, separate state
dirs, session timeout 1.5 s) share a keyed running-aggregate job over a broker.
Once both run partitions of both stages and the sink has output, one worker
gets SIGSTOP; the parent waits until one of its partitions that had work left
is committed further by the group (only another member can do that, so the
other worker took it over and made progress), then sends SIGCONT: the zombie
wakes up with its in-memory state, any batch it had fetched and an old group
generation. Both run until every input is committed, then get SIGTERM (the
``--until-idle`` takeover has its own test in ``tests/runtime``). The sink must then hold, for
every key, exactly one update per input event (``n`` = 1, 2, ... with no gap
and no repeat) and the right totals: anything the zombie wrote after losing
its partitions that was accepted would show as a repeat or a wrong value.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
import trio

import streamflow
from streamflow.log import Columns

from .harness import Broker, Child, child_env, report, soak

if TYPE_CHECKING:
    from pathlib import Path

ROUNDS = 5 if soak() else 1
EVENTS = 200_000
USERS = 1_000
PARTITIONS = 2
BATCH = 250
SESSION_TIMEOUT_MS = 1500
JOB = """
import time

from streamflow import Pipeline


def fold(acc, v):
    time.sleep(0.00002)  # ~2 s of work per worker: the frozen one still has some left
    return {"n": acc["n"] + 1, "cents": acc["cents"] + v["cents"], "ids": acc["ids"] + v["i"]}


pipeline = Pipeline("r2job")
(
    pipeline.source("payments")
    .key_by(lambda v: v["user"])
    .aggregate("spend", initial=lambda: {"n": 0, "cents": 0, "ids": 0}, fold=fold)
    .sink("totals")
)
"""
ASSIGNED = re.compile(r"(r2job\.s\d): member \S+ runs partitions \[([\d, ]*)\]")
GROUPS = {"r2job.s0": "payments", "r2job.s1": "r2job.s1.repartition"}


def payments(seed: int) -> list[dict[str, int]]:
    """Return EVENTS deterministic payments."""
    rng = random.Random(seed)
    return [
        {"i": i, "user": rng.randrange(USERS), "cents": rng.randint(1, 50_000)}
        for i in range(EVENTS)
    ]


async def produce(url: str, events: list[dict[str, int]]) -> None:
    """Store *events* round-robin over the partitions, BATCH records per stored batch."""
    async with streamflow.connect(url) as client:
        transport = client.transport
        await transport.create_topic("payments", partitions=PARTITIONS)
        for p in range(PARTITIONS):
            mine = events[p::PARTITIONS]
            for i in range(0, len(mine), BATCH):
                chunk = mine[i : i + BATCH]
                n = len(chunk)
                await transport.append("payments", p, Columns([None] * n, chunk, [None] * n))


async def progress(url: str) -> tuple[int, dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """Return (sink records, committed offset per input partition, end offset per input)."""
    async with streamflow.connect(url) as client:
        t = client.transport
        topics = await t.topics()
        sink = 0
        if "totals" in topics:
            sink = sum(p.end_offset for p in (await t.describe("totals")).partitions)
        done: dict[tuple[str, int], int] = {}
        ends: dict[tuple[str, int], int] = {}
        for group, topic in GROUPS.items():
            if topic not in topics:
                continue
            parts = [(topic, p.partition) for p in (await t.describe(topic)).partitions]
            for tp in parts:
                ends[tp] = (await t.offsets(*tp))[1]
            for tp, c in (await t.committed(group, parts)).items():
                done[tp] = c.offset
        return sink, done, ends


async def read_sink(url: str) -> list[tuple[Any, dict[str, int]]]:
    """Return every ``(key, value)`` in the sink."""
    out: list[tuple[Any, dict[str, int]]] = []
    async with streamflow.connect(url) as client:
        t = client.transport
        for p in (await t.describe("totals")).partitions:
            position, end = await t.offsets("totals", p.partition)
            while position < end:
                found = await t.fetch({("totals", p.partition): position}, timeout=0)
                for batch in found[("totals", p.partition)]:
                    out.extend(zip(batch.keys, batch.values, strict=True))
                    position = batch.next_offset
    return out


def start_worker(tmp_path: Path, job: Path, url: str, name: str) -> Child:
    """Start one worker process of the job."""
    args = [job.as_posix(), url, "--processing", "exactly_once"]
    args += ["--session-timeout-ms", str(SESSION_TIMEOUT_MS), "--commit-interval-ms", "100"]
    args += ["--state-dir", (tmp_path / f"state-{name}").as_posix()]
    return Child(
        [sys.executable, "-m", "streamflow.runtime", *args],
        log_path=tmp_path / f"worker-{name}.log",
        env=child_env(STREAMFLOW_LOG_LEVEL="INFO"),
    )


def check_sink(
    sink: list[tuple[Any, dict[str, int]]], events: list[dict[str, int]]
) -> tuple[int, int]:
    """Assert one update per event per key with the right totals; return (lost, repeated)."""
    expected: dict[int, dict[str, int]] = defaultdict(lambda: {"n": 0, "cents": 0, "ids": 0})
    for e in events:
        acc = expected[e["user"]]
        acc["n"] += 1
        acc["cents"] += e["cents"]
        acc["ids"] += e["i"]
    seen: dict[int, list[int]] = defaultdict(list)
    final: dict[int, dict[str, int]] = {}
    for key, value in sink:
        seen[key].append(value["n"])
        if value["n"] == expected[key]["n"]:
            final[key] = value
    repeated = sum(len(ns) - len(set(ns)) for ns in seen.values())
    lost = sum(expected[k]["n"] - len(set(seen[k])) for k in expected)
    assert (lost, repeated) == (0, 0), f"{lost} updates lost, {repeated} repeated"
    assert all(sorted(seen[k]) == list(range(1, expected[k]["n"] + 1)) for k in expected)
    assert final == dict(expected)
    return lost, repeated


def assignments(child: Child) -> dict[str, list[int]]:
    """Return each group's newest partition assignment from a worker's log."""
    found: dict[str, list[int]] = {}
    for line in child.log_path.read_text(errors="replace").splitlines():
        match = ASSIGNED.search(line)
        if match:
            found[match[1]] = [int(p) for p in match[2].replace(",", " ").split()]
    return found


async def wait_assigned(*children: Child) -> None:
    """Wait until every child's log shows an assignment in every group."""
    with trio.fail_after(120):
        while True:
            if all(len(assignments(c)) == len(GROUPS) for c in children):
                return
            await trio.sleep(0.02)


def committed_past(left: dict[tuple[str, int], int]) -> Any:
    """Return a ``progress`` predicate: some partition of *left* is committed past its offset.

    Only another member can commit a frozen member's partitions, so this
    means they were taken over and the new owner made progress.
    """

    def taken_over(sink: int, now: dict[Any, int], ends: dict[Any, int]) -> bool:
        return any(now.get(tp, 0) > offset for tp, offset in left.items())

    return taken_over


async def wait_until(predicate: Any, url: str, timeout: float) -> Any:
    """Poll ``progress`` until *predicate* holds on it; return the last figures."""
    with trio.fail_after(timeout):
        while True:
            figures = await progress(url)
            if predicate(*figures):
                return figures
            await trio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_worker_frozen_past_its_session_timeout_cannot_spoil_exactly_once(
    tmp_path: Path, seed: int
) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    takeover_s: list[float] = []
    zombie_codes: list[int] = []
    at_resume: list[int] = []
    refused: list[int] = []
    for round_ in range(ROUNDS):
        base = tmp_path / f"round-{round_}"
        base.mkdir()
        events = payments(seed + round_)
        broker = Broker(base / "log")
        broker.start()
        try:
            await produce(broker.url, events)
            zombie = start_worker(base, job, broker.url, "zombie")
            other = start_worker(base, job, broker.url, "other")
            try:
                for child in (zombie, other):
                    assert child.readline().startswith("RUNNING")
                # Freeze the zombie once both workers run partitions of both stages and
                # output flows, early enough that the other still has work of its own.
                await wait_assigned(zombie, other)
                await wait_until(lambda sink, done, ends: sink > 0, broker.url, 120)
                held = assignments(zombie)
                zombie.pause()
                paused = time.monotonic()
                assert any(held.values()), "the zombie held no partition when it was frozen"
                _, done, ends = await progress(broker.url)
                mine = {(GROUPS[group], p) for group, ps in held.items() for p in ps}
                left = {tp: done.get(tp, 0) for tp in mine if done.get(tp, 0) < ends.get(tp, 0)}
                assert left, "the zombie had no work left when it was frozen"
                await wait_until(committed_past(left), broker.url, 120)
                takeover_s.append(time.monotonic() - paused)
                sink_at_resume, _, _ = await progress(broker.url)
                zombie.resume()
                at_resume.append(sink_at_resume)

                def finished(sink: int, now: dict[Any, int], ends: dict[Any, int]) -> bool:
                    complete = len(now) == len(ends) and all(now[tp] >= e for tp, e in ends.items())
                    return sink >= EVENTS and complete

                await wait_until(finished, broker.url, 120)
                for child in (other, zombie):
                    code = await trio.to_thread.run_sync(child.terminate)
                    assert code == 0, child.tail_log()
                zombie_codes.append(code)
                log = zombie.log_path.read_text(errors="replace")
                refused.append(log.count("is not part of the current generation"))
            finally:
                if zombie.alive():
                    zombie.resume()
                zombie.kill()
                other.kill()
            sink = await read_sink(broker.url)
            check_sink(sink, events)
        finally:
            broker.kill()
    report(
        "R2",
        seed,
        rounds=ROUNDS,
        events_per_round=EVENTS,
        keys=USERS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        takeover_s=[round(s, 2) for s in takeover_s],
        zombie_exit_codes=zombie_codes,
        sink_updates_at_resume=at_resume,
        zombie_commits_refused=refused,
        lost=0,
        duplicated=0,
        wrong_values=0,
    )
