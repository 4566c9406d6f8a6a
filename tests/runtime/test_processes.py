from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.errors import UnknownTopic
from streamflow.log.client import connect

from .helpers import committed, produce, read

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

JOB = textwrap.dedent(
    """
    import time
    from streamflow import Pipeline

    def slow_double(v):
        time.sleep(0.0005)  # keep the job busy long enough to be killed mid-way
        return v * 2

    pipeline = Pipeline("shared")
    pipeline.source("in").map(slow_double).key_by(lambda v: v % 7).sink("out")
    """
)


def spawn(*args: str, pipe: bool = True) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE if pipe else subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    proc = spawn("-m", "streamflow.log.broker", "--data", str(tmp_path / "log"), "--port", "0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        yield f"tcp://127.0.0.1:{int(line.split()[1])}"
    finally:
        stop(proc)


async def wait_for(target: str, topic: str, count: int, timeout: float) -> set[int]:
    with trio.fail_after(timeout):
        while True:
            try:
                values = {r.value for r in await read(target, topic)}
            except UnknownTopic:  # the workers have not created it yet
                values = set()
            if len(values) >= count:
                return values
            await trio.sleep(0.2)


async def test_two_workers_share_a_job_and_survive_a_sigkill(broker: str, tmp_path: Path) -> None:
    n = 4000
    await produce(broker, "in", list(range(n)), partitions=4)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    worker = [
        "-m",
        "streamflow.runtime",
        str(job),
        broker,
        "--commit-interval-ms",
        "100",
        "--session-timeout-ms",
        "1500",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    first, second = spawn(*worker, pipe=False), spawn(*worker, pipe=False)
    try:
        await wait_for(broker, "out", n // 10, timeout=60)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        values = await wait_for(broker, "out", n, timeout=90)
        assert values == {v * 2 for v in range(n)}
        second.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(second.wait) == 0
    finally:
        stop(first)
        stop(second)
    done = await committed(broker, "shared.s0", "in")
    assert done == {p: n // 4 for p in range(4)}


async def test_sigterm_drains_and_commits(tmp_path: Path) -> None:
    target = tmp_path / "log"
    await produce(target, "in", list(range(300)), partitions=2)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    proc = spawn("-m", "streamflow.runtime", str(job), str(target))
    try:
        assert proc.stdout is not None
        assert (await trio.to_thread.run_sync(proc.stdout.readline)).startswith("RUNNING")
        await trio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await trio.to_thread.run_sync(proc.wait)
        assert code == 0
    finally:
        stop(proc)
    out = await read(target, "out")
    stage0 = await committed(target, "shared.s0", "in")
    # Everything committed was written; nothing committed was lost.
    assert sum(stage0.values()) <= len(await read(target, "shared.s1.repartition"))
    assert len(out) <= 300


WINDOW_JOB = textwrap.dedent(
    """
    import time
    from streamflow import Pipeline, windows

    def slow(v):
        # One source partition (round-robin: v % 4 == 3) is slow, so one process
        # still writes the repartition topic long after the other is idle.
        time.sleep(0.004 if v % 4 == 3 else 0.0)
        return v

    pipeline = Pipeline("idle")
    (pipeline.source("in", timestamp=lambda v: v * 10)
        .map(slow)
        .key_by(lambda v: v % 7)
        # Grace past the end of the input: windows close only when the run ends,
        # so a stage that finishes early shows up as short counts.
        .window(windows.tumbling(seconds=10), grace_ms=100_000)
        .count("per-window")
        .sink("out"))
    """
)


async def test_until_idle_waits_for_upstream_tasks_of_every_process(
    broker: str, tmp_path: Path
) -> None:
    n = 3000
    await produce(broker, "in", list(range(n)), partitions=4)
    job = tmp_path / "job.py"
    job.write_text(WINDOW_JOB)
    worker = [
        "-m",
        "streamflow.runtime",
        str(job),
        broker,
        "--until-idle",
        "--commit-interval-ms",
        "100",
        "--session-timeout-ms",
        "3000",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    procs = [spawn(*worker, pipe=False), spawn(*worker, pipe=False)]
    try:
        with trio.fail_after(120):
            codes = [await trio.to_thread.run_sync(p.wait) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert codes == [0, 0]
    expected: dict[tuple[int, int], int] = {}
    for v in range(n):
        window = (v * 10) // 10_000 * 10_000
        expected[(v % 7, window)] = expected.get((v % 7, window), 0) + 1
    got = {(r.value["key"], r.value["start"]): r.value["value"] for r in await read(broker, "out")}
    assert got == expected


PEER_JOB = WINDOW_JOB.replace(
    "time.sleep(0.004 if v % 4 == 3 else 0.0)", "time.sleep(float(os.environ['SLOW_S']))"
).replace("import time", "import os, time")


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not await condition():  # noqa: ASYNC110 (the condition lives in another process)
            await trio.sleep(0.1)


async def test_until_idle_takes_over_the_partitions_of_a_peer_killed_after_its_own_share(
    broker: str, tmp_path: Path
) -> None:
    # The fast worker drains its share of stage s0 long before the slow one; the slow one is
    # then killed. The fast one must stay in s0's group, take the orphaned partitions over
    # and finish the whole job on its own.
    n = 2000
    for first in range(0, n, 100):  # small stored batches: a busy task yields between them
        await produce(broker, "in", list(range(first, first + 100)), partitions=4)
    job = tmp_path / "job.py"
    job.write_text(PEER_JOB)
    logs = ExitStack()

    def worker(name: str, slow_s: float) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "streamflow.runtime", str(job), broker, "--until-idle"]
        command += ["--commit-interval-ms", "100", "--session-timeout-ms", "3000"]
        command += ["--state-dir", str(tmp_path / f"state-{name}")]
        log = logs.enter_context((tmp_path / f"{name}.log").open("w"))
        env = {**os.environ, "SLOW_S": str(slow_s)}
        return subprocess.Popen(command, env=env, stdout=log, stderr=log, text=True)

    async def owners(counts: list[int]) -> bool:
        async with connect(broker) as client:
            group = await client.transport.describe_group("idle.s0")
        return group.state == "stable" and [len(m.partitions) for m in group.members] == counts

    async def done(at_least: int) -> bool:
        offsets = (await committed(broker, "idle.s0", "in")).values()
        return sum(o == n // 4 for o in offsets) >= at_least

    with logs:
        slow = worker("slow", 0.01)
        fast = None
        try:
            await until(lambda: owners([4]))  # the slow worker owns all four partitions
            fast = worker("fast", 0.0)
            await until(lambda: owners([2, 2]))  # the group splits them between the two
            await until(lambda: done(2))  # and the fast worker drains its half
            os.kill(slow.pid, signal.SIGKILL)
            assert not await done(4), "the slow worker had finished: nothing was orphaned"
            with trio.fail_after(120):
                code = await trio.to_thread.run_sync(fast.wait)
            assert code == 0
        finally:
            stop(slow)
            if fast is not None:
                stop(fast)
    expected: dict[tuple[int, int], int] = {}
    for v in range(n):
        window = (v * 10) // 10_000 * 10_000
        expected[(v % 7, window)] = expected.get((v % 7, window), 0) + 1
    out = await read(broker, "out")
    assert {(r.value["key"], r.value["start"]): r.value["value"] for r in out} == expected
    assert len(out) == len(expected)
