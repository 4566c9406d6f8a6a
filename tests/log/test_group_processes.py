"""Three consumer processes in one group; one is SIGKILLed and the others take over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow
from streamflow.log.offsets import OFFSETS_TOPIC

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BrokerProcess

PARTITIONS = 6
PER_PARTITION = 300
SESSION_TIMEOUT_MS = 3_000
#: Extra time allowed for the takeover on a loaded 2-core machine.
MARGIN = 12.0

CONSUMER = """
import sys, time, trio, streamflow
from streamflow.errors import RebalanceInProgress

async def main(url, topic, out_path):
    out = open(out_path, "a", buffering=1)
    consumer = None

    async def on_assign(partitions):
        out.write("ASSIGN %f %s\\n" % (time.time(), " ".join(str(p) for _, p in partitions)))

    async def on_revoke(partitions):
        try:
            await consumer.commit()
        except RebalanceInProgress:
            pass
        out.write("REVOKE\\n")

    async with streamflow.connect(url) as client:
        async with client.consumer(
            topic, group="workers", session_timeout_ms={session}, heartbeat_interval_ms=300,
            on_assign=on_assign, on_revoke=on_revoke,
        ) as c:
            consumer = c
            while True:
                records = await c.poll(max_records=10, timeout=0.5)
                if not records:
                    continue
                await trio.sleep(0.1)  # the work
                for r in records:
                    out.write("REC %f %d %d\\n" % (time.time(), r.partition, r.offset))
                try:
                    await c.commit()
                except RebalanceInProgress:
                    pass

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
""".replace("{session}", str(SESSION_TIMEOUT_MS))


class Member:
    def __init__(self, script: Path, url: str, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(script), url, "jobs", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        text = self.out.read_text()
        # A killed member may leave a half-written last line: parse whole lines only.
        return [line.split() for line in text.split("\n")[:-1] if line]

    def assigned_at(self, partition: int, since: float) -> float | None:
        for fields in self.lines():
            if fields[0] == "ASSIGN" and float(fields[1]) > since:
                if str(partition) in fields[2:]:
                    return float(fields[1])
        return None

    def assigned(self) -> set[int]:
        current: set[int] = set()
        for fields in self.lines():
            if fields[0] == "ASSIGN":
                current = {int(p) for p in fields[2:]}
        return current

    def processed(self) -> list[tuple[float, int, int]]:
        return [
            (float(f[1]), int(f[2]), int(f[3]))
            for f in self.lines()
            if f[0] == "REC" and len(f) == 4
        ]


def _wait(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_partitions_of_a_killed_member_are_taken_over(
    tmp_path: Path, broker_factory: type[BrokerProcess]
) -> None:
    broker = broker_factory(tmp_path / "data")
    broker.start()

    async def fill() -> None:
        with trio.fail_after(60):
            async with streamflow.connect(broker.url) as client:
                await client.create_topic("jobs", partitions=PARTITIONS)
                async with client.producer() as producer:
                    await producer.send_many("jobs", [0] * (PARTITIONS * PER_PARTITION))
                desc = await client.describe("jobs")
                assert sum(x.end_offset for x in desc.partitions) == PARTITIONS * PER_PARTITION

    trio.run(fill)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    members = [Member(script, broker.url, tmp_path / f"member-{i}.txt") for i in range(3)]
    try:
        _wait(
            lambda: (
                all(len(m.assigned()) == 2 for m in members)
                and all(len(m.processed()) >= 20 for m in members)
            ),
            60,
            "three members with two partitions each, all processing",
        )
        victim, survivors = members[0], members[1:]
        lost = victim.assigned()
        os.kill(victim.process.pid, signal.SIGKILL)
        assert victim.process.wait(timeout=30) == -signal.SIGKILL
        killed_at = time.time()

        def taken_over() -> bool:
            seen = {p for m in survivors for t, p, _ in m.processed() if t > killed_at}
            return lost <= seen

        _wait(taken_over, SESSION_TIMEOUT_MS / 1000 + MARGIN, "the survivors to take over")
        first_records = {
            p: min(t for m in survivors for t, q, _ in m.processed() if q == p and t > killed_at)
            for p in lost
        }
        took = max(first_records.values()) - killed_at
        assigned = [
            at for m in survivors for p in lost if (at := m.assigned_at(p, killed_at)) is not None
        ]
        reassigned = max(assigned) - killed_at

        def all_processed() -> bool:
            done = {(p, o) for m in members for _, p, o in m.processed()}
            return len(done) == PARTITIONS * PER_PARTITION

        _wait(all_processed, 90, "every record to be processed")
    finally:
        for m in members:
            if m.process.poll() is None:
                m.process.kill()
            m.process.wait()
            if m.process.stderr is not None:
                m.process.stderr.close()

    commits: dict[int, list[int]] = {}

    async def read_commits() -> None:
        with trio.fail_after(60):
            async with streamflow.connect(broker.url) as client:
                _, end = await client.transport.offsets(OFFSETS_TOPIC, 0)
                offset = 0
                while offset < end:
                    found = await client.transport.fetch({(OFFSETS_TOPIC, 0): offset}, timeout=1)
                    for batch in found.get((OFFSETS_TOPIC, 0), []):
                        for key, value in zip(batch.keys, batch.values, strict=True):
                            group, _topic, partition = key
                            if group == "workers":
                                commits.setdefault(partition, []).append(value[0])
                        offset = batch.next_offset

    trio.run(read_commits)
    assert sorted(commits) == list(range(PARTITIONS))
    for partition, offsets in commits.items():
        assert offsets == sorted(offsets), f"partition {partition} committed backwards"
    assert reassigned <= took <= SESSION_TIMEOUT_MS / 1000 + MARGIN
    print(
        f"partitions {sorted(lost)} reassigned after {reassigned:.2f} s, first record "
        f"processed after {took:.2f} s (session timeout {SESSION_TIMEOUT_MS} ms)"
    )
