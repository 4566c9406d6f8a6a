"""R3: SIGKILL the broker mid-append, at random and at every broker/log failpoint.

Four idempotent producer processes send unique values ``"<producer>:<seq>"``
to a 4-partition topic (``fsync="always"``, small segments, so rolls, index
and snapshot writes happen), one of them also churns a compacted topic with
size retention (so the cleaner's retention and compaction steps run), and a
reader process polls the topic throughout. Each broker incarnation is either
started with one failpoint armed at a random hit (it kills itself there) or
SIGKILLed by the test after a random number of new acknowledgements. A kill
that lands during recovery (a failpoint hit before ``READY``) is counted and
the broker is started again.

At the end the whole topic is read back and the Jepsen-style checker must find
no lost acknowledged value, no duplicate, no value at another offset than
acknowledged, no offset acknowledged twice (or read with another value
before a kill: offsets never reused), nothing unexpected, each producer's
values in order per partition, and no backwards or skipped reads.
(``tests/log/test_broker_kill.py`` covers the same promise with one producer
process and keyed sends; this is the many-producer, every-failpoint version.)
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow
from streamflow.failpoint import NAMES

from .harness import (
    Broker,
    Child,
    count_acks,
    load_polls,
    load_sends,
    percentile,
    read_topic,
    report,
    soak,
    start_producer,
    start_reader,
)
from .history import History

if TYPE_CHECKING:
    from pathlib import Path

KILLS = 200 if soak() else 20
PRODUCERS = 4
PARTITIONS = 4
#: Failpoints a broker passes through while it serves appends and cleans.
POINTS = [n for n in NAMES if n.startswith(("broker.", "log."))]
#: Highest hit to arm each point at (roll-time points fire far less often).
MAX_HIT = {"broker.after_append": 60, "log.after_write": 60, "log.after_fsync": 60}
#: Acknowledgements between a (re)start and a random kill.
RANDOM_KILL_ACKS = (100, 1500)
#: Seconds a failpoint may take to fire before the test kills the broker itself.
FAILPOINT_PATIENCE = 20.0


def plan_kills(rng: random.Random, kills: int) -> list[str | None]:
    """Return one entry per broker incarnation: ``"name:hit"`` to arm, or None (random kill).

    Every point is armed at least once (half the kills go to failpoints in
    the soak tier); the first incarnation is a random kill, as it serves the
    setup.
    """
    armed = max(len(POINTS), kills // 2)
    plan: list[str | None] = []
    for i in range(armed):
        name = POINTS[i % len(POINTS)]
        plan.append(f"{name}:{rng.randint(1, MAX_HIT.get(name, 3))}")
    plan += [None] * max(1, kills - armed)
    rng.shuffle(plan)
    plan.remove(None)
    return [None, *plan]


class Run:
    """The processes of one R3 run and the counts of what happened."""

    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.tmp = tmp_path
        self.rng = rng
        self.broker = Broker(tmp_path / "data")
        self.stop = tmp_path / "stop"
        self.producers: list[Child] = []
        self.reader: Child | None = None
        self.ack_positions = [0] * PRODUCERS
        self.acked = 0
        self.fired: dict[str, int] = {}
        self.not_fired: dict[str, int] = {}
        self.random_kills = 0
        self.recovery_kills = 0

    def sends_path(self, i: int) -> Path:
        """Return producer *i*'s sends file."""
        return self.tmp / f"sends-{i}.jsonl"

    def count_new_acks(self) -> int:
        """Return how many acknowledgements arrived since the last call."""
        new = 0
        for i in range(PRODUCERS):
            n, self.ack_positions[i] = count_acks(self.sends_path(i), self.ack_positions[i])
            new += n
        self.acked += new
        return new

    def start_broker(self, failpoint: str | None) -> None:
        """Start the broker; a failpoint that fires during recovery is a kill too."""
        while True:
            try:
                self.broker.start(failpoint)
                return
            except RuntimeError:
                assert self.broker.child is not None
                assert self.broker.child.process.wait() == -9, self.broker.child.tail_log()
                self.broker.child.close()
                self.recovery_kills += 1
                failpoint = None

    def live_children(self) -> list[Child]:
        """Return the client processes still running; fail if one died."""
        for child in [*self.producers, *filter(None, [self.reader])]:
            code = child.process.poll()
            assert code in (None, 0), f"client pid {child.pid} exited {code}:\n{child.tail_log()}"
        return [c for c in self.producers if c.alive()]

    def one_incarnation(self, failpoint: str | None) -> None:
        """Run the broker until its failpoint fires or enough acks arrive, then kill it."""
        self.count_new_acks()
        goal = self.rng.randint(*RANDOM_KILL_ACKS)
        seen = 0
        started = time.monotonic()
        while True:
            self.live_children()
            seen += self.count_new_acks()
            assert self.broker.child is not None
            if not self.broker.child.alive():
                code = self.broker.child.process.wait()
                assert code == -9, f"broker exited {code}:\n{self.broker.child.tail_log()}"
                self.broker.child.close()
                assert failpoint is not None
                name = failpoint.rpartition(":")[0]
                self.fired[name] = self.fired.get(name, 0) + 1
                return
            waited = time.monotonic() - started
            if failpoint is None and seen >= goal:
                self.random_kills += 1
                self.broker.kill()
                return
            if failpoint is not None and waited > FAILPOINT_PATIENCE:
                name = failpoint.rpartition(":")[0]
                self.not_fired[name] = self.not_fired.get(name, 0) + 1
                self.random_kills += 1
                self.broker.kill()
                return
            assert waited < 120, "no progress for 120 s"
            time.sleep(0.02)


async def create_topics(url: str) -> None:
    """Create the checked topic and the churn topic."""
    async with streamflow.connect(url) as client:
        await client.create_topic(
            "events", partitions=PARTITIONS, fsync="always", segment_bytes=16384
        )
        await client.create_topic(
            "churn",
            partitions=1,
            segment_bytes=4096,
            cleanup_policy="compact,delete",
            retention_bytes=16384,
            delete_retention_ms=0,
        )


@pytest.mark.timeout(1800 if soak() else 300)
def test_broker_kills_lose_and_duplicate_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    run = Run(tmp_path, rng)
    plan = plan_kills(rng, KILLS)
    run.start_broker(None)
    trio.run(create_topics, run.broker.url)
    run.reader = start_reader(
        run.broker.url,
        "events",
        tmp_path / "polls.jsonl",
        log_path=tmp_path / "reader.log",
        stop_path=run.stop,
    )
    run.reader.wait_ready()
    for i in range(PRODUCERS):
        child = start_producer(
            run.broker.url,
            "events",
            f"p{i}",
            run.sends_path(i),
            log_path=tmp_path / f"producer-{i}.log",
            stop_path=run.stop,
            tasks=2,
            chunk=50,
            churn_topic="churn" if i == 0 else None,
        )
        child.wait_ready()
        run.producers.append(child)
    try:
        for i, failpoint in enumerate(plan):
            if i:
                run.start_broker(failpoint)
            run.one_incarnation(failpoint)
        run.start_broker(None)
        run.count_new_acks()
        goal = run.acked + 500
        while run.acked < goal:
            run.live_children()
            run.count_new_acks()
            time.sleep(0.05)
        run.stop.write_text("stop")
        for child in run.producers:
            assert child.readline(120).strip() == "DONE", child.tail_log()
            assert child.wait(60) == 0
        assert run.reader.readline(180).strip() == "DONE", run.reader.tail_log()
        assert run.reader.wait(60) == 0
        final = trio.run(read_topic, run.broker.url, "events")
    finally:
        for child in [*run.producers, run.reader]:
            child.kill()
        run.broker.kill()

    history = History()
    acked = sum(load_sends(history, run.sends_path(i)) for i in range(PRODUCERS))
    polled = load_polls(history, "reader", tmp_path / "polls.jsonl")
    for partition, records in final.items():
        history.read_final(partition, records)
    found = history.check(order=True)
    recovery_ms = [s * 1000 for s in run.broker.recovery_seconds[1:]]
    stored = sum(len(r) for r in final.values())
    report(
        "R3",
        seed,
        kills=len(plan) + run.recovery_kills,
        failpoint_kills=sum(run.fired.values()),
        random_kills=run.random_kills,
        recovery_kills=run.recovery_kills,
        fired=run.fired,
        not_fired=run.not_fired,
        acked=acked,
        unknown=len(history.unknown),
        stored=stored,
        polled=polled,
        lost=len(found.lost),
        duplicated=len(found.duplicated),
        inconsistent=len(found.inconsistent),
        unexpected=len(found.unexpected),
        reordered=len(found.reordered),
        backwards=len(found.backwards),
        skipped=len(found.skipped),
        recovery_p50_ms=round(percentile(recovery_ms, 50), 1),
        recovery_p99_ms=round(percentile(recovery_ms, 99), 1),
    )
    assert found.ok, found.summary()
    assert acked > 0
    assert polled > 0
    assert sum(run.fired.values()) >= len(POINTS) // 2, (run.fired, run.not_fired)


def test_checker_flags_every_kind_of_broken_history() -> None:
    history = History()
    for value in ("a.0:0", "a.0:1", "a.0:2", "b.0:0", "b.0:1"):
        history.invoke(value)
    history.ok("a.0:0", 0, 0)
    history.ok("a.0:1", 0, 1)
    history.ok("a.0:2", 0, 1)  # offset 1 acknowledged twice
    history.ok("b.0:0", 0, -1)  # a recognised retry: place unknown, must still be stored
    history.ok("b.0:1", 0, 9)  # never stored
    history.poll("c", 0, 1, "zzz")  # read a value the log does not hold there
    history.poll("c", 0, 0, "a.0:0")  # then went backwards
    history.read_final(0, [(0, "a.0:1"), (1, "a.0:0"), (2, "a.0:0"), (3, "b.0:0"), (4, "?")])
    found = history.check(order=True)
    assert found.lost == ["a.0:2", "b.0:1"]
    assert found.duplicated == ["a.0:0"]
    assert found.unexpected == ["'?'@0:4"]
    assert found.reordered == [
        "a.0 in 0: seq 0 at 1 after seq 1 at 0",
        "a.0 in 0: seq 0 at 2 after seq 0 at 1",
    ]
    assert found.backwards == ["c 0: 1 -> 0"]
    assert len(found.inconsistent) == 4
    assert not found.ok
