"""Two ``streamflow run --broker kafka://...`` processes share a job through Kafka groups."""

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
