"""Two ``streamflow run --broker kafka://...`` processes share a job through Kafka groups.

Both workers running to the end (``--until-idle``) runs on every cluster. Losing
one of them (SIGTERM, SIGKILL) needs a real Kafka cluster: see the skip reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.errors import UnknownTopic
from tests.runtime.helpers import committed, produce, read

from .noida import BOOTSTRAP_ENV

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.kafka

JOB = textwrap.dedent(
    """
    import time
    from streamflow import Pipeline

    def slow_double(v):
        time.sleep(0.001)  # keep the job busy long enough to be killed mid-way
        return v * 2

    pipeline = Pipeline("{prefix}-shared")
    pipeline.source("{prefix}-in").map(slow_double).key_by(lambda v: v % 7).sink("{prefix}-out")
    """
)


async def wait_for(target: str, topic: str, count: int, timeout: float) -> set[int]:
    """Poll *topic* until it holds *count* distinct values; return them."""
    with trio.fail_after(timeout):
        while True:
            try:
                values = {r.value for r in await read(target, topic)}
            except UnknownTopic:  # the workers have not created it yet
                values = set()
            if len(values) >= count:
                return values
            await trio.sleep(0.3)


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start *command* in its own session, its stderr going to *log*."""
    with log.open("wb") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL *proc* unless it already ended, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_two_workers_share_a_job_and_survive_losing_one(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path, how: signal.Signals
) -> None:
    if not os.environ.get(BOOTSTRAP_ENV):
        pytest.skip(
            "noida-db never expires the session of a killed member (no rebalance 70 s after "
            "a SIGKILL with session.timeout.ms=6000), and a group whose member left while "
            "the job's other group rebalanced stayed in a rebalance loop; set "
            f"{BOOTSTRAP_ENV} to a Kafka cluster"
        )
    prefix = new_topic()
    n = 4_000
    await produce(kafka_url, f"{prefix}-in", list(range(n)), partitions=4)
    job = tmp_path / "job.py"
    job.write_text(JOB.format(prefix=prefix))
    command = [sys.executable, "-m", "streamflow.cli", "run", str(job), "--broker", kafka_url]
    workers = [
        spawn([*command, "--state-dir", str(tmp_path / f"state{i}")], tmp_path / f"worker{i}.log")
        for i in range(2)
    ]
    first, second = workers
    try:
        await wait_for(kafka_url, f"{prefix}-out", n // 10, timeout=60)
        os.kill(first.pid, how)
        # SIGTERM: the worker commits and leaves the group; SIGKILL: its session expires.
        assert await trio.to_thread.run_sync(first.wait) in (0, -signal.SIGKILL)
        # The survivor takes the partitions of the worker that is gone.
        values = await wait_for(kafka_url, f"{prefix}-out", n, timeout=90)
        assert values == {v * 2 for v in range(n)}
        second.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(second.wait) == 0
    finally:
        for worker in workers:
            stop(worker)
    done = await committed(kafka_url, f"{prefix}-shared.s0", f"{prefix}-in")
    assert done == {p: n // 4 for p in range(4)}


async def wait_for_shared(target: str, group: str, timeout: float) -> list[list[int]]:
    """Poll *group* until two members own partitions; return each member's partitions."""
    from streamflow.log.client import connect

    with trio.fail_after(timeout):
        async with connect(target) as client:
            while True:
                try:
                    desc = await client.transport.describe_group(group)
                except UnknownTopic:
                    desc = None
                owned = [sorted(p for _, p in m.partitions) for m in desc.members] if desc else []
                if len([o for o in owned if o]) >= 2:
                    return owned
                await trio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_two_workers_share_a_job_through_a_kafka_group(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    n = 4_000
    await produce(kafka_url, f"{prefix}-in", list(range(n)), partitions=4)
    job = tmp_path / "job.py"
    job.write_text(JOB.format(prefix=prefix))
    command = [sys.executable, "-m", "streamflow.cli", "run", str(job), "--broker", kafka_url]
    workers = [
        spawn(
            [*command, "--until-idle", "--state-dir", str(tmp_path / f"state{i}")],
            tmp_path / f"worker{i}.log",
        )
        for i in range(2)
    ]
    try:
        # Both workers are members of the first stage's group, each owning partitions.
        owned = await wait_for_shared(kafka_url, f"{prefix}-shared.s0", timeout=60)
        assert sorted(p for o in owned for p in o) == [0, 1, 2, 3]
        for worker in workers:
            assert await trio.to_thread.run_sync(worker.wait) == 0
    finally:
        for worker in workers:
            stop(worker)
    values = await wait_for(kafka_url, f"{prefix}-out", n, timeout=10)
    assert values == {v * 2 for v in range(n)}
    assert len(await read(kafka_url, f"{prefix}-out")) == n  # nothing twice
    done = await committed(kafka_url, f"{prefix}-shared.s0", f"{prefix}-in")
    assert done == {p: n // 4 for p in range(4)}
