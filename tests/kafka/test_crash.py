"""SIGKILL a window job on Kafka again and again; its results must match a clean run's.

The job (``crash_child.py``) runs in a subprocess against the test cluster and
is killed at each runtime failpoint (``streamflow.failpoint``: after
processing, between the appends of one batch, after the appends, between the
Kafka commit and the LMDB checkpoint, between the changelog append and the
commit), each on a seeded random hit, and at random moments from outside; then
it runs to the end. Its window results must equal, record for record, those of
a crash-free run of the same job on the built-in log: nothing lost, nothing
twice (under at-least-once a result may repeat, but no record is counted
twice). Every run uses the same ``group.instance.id`` (Kafka static
membership), so a restart takes the killed worker's partitions at once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from streamflow.log.kafka_transport import GROUP_INSTANCE_ENV
from streamflow.runtime import run_async
from tests.runtime.helpers import produce, read

from . import crash_child

if TYPE_CHECKING:
    from collections.abc import Callable

    from streamflow import Record

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parents[2]
#: Failpoint -> the range of hits to kill at (once per output batch, or per checkpoint).
KILL_POINTS: dict[str, tuple[int, int]] = {
    "runtime.before_output": (1, 5),
    "runtime.mid_output": (1, 5),
    "runtime.after_output": (1, 5),
    "runtime.mid_checkpoint": (1, 2),
    "state.after_changelog": (1, 2),
}
#: Kills from outside, each at a random moment of a run (seconds after its start).
RANDOM_KILLS = 2
RANDOM_KILL_AFTER = (0.6, 1.5)
RUN_TIMEOUT = 60


def run_child(
    url: str,
    prefix: str,
    state: Path,
    processing: str,
    *,
    failpoint: str | None = None,
    kill_after: float = 0,
) -> int:
    """Run the job once (killed at *failpoint* or after *kill_after* s); return its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), GROUP_INSTANCE_ENV: f"{prefix}-worker"}
    env.pop("STREAMFLOW_FAILPOINT", None)
    if failpoint is not None:
        env["STREAMFLOW_FAILPOINT"] = failpoint
    command = [sys.executable, "-m", "tests.kafka.crash_child", url, prefix, str(state), processing]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        if kill_after:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        assert b"DONE" in out
    elif proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"job failed ({proc.returncode}): {err.decode()[-3000:]}")
    return proc.returncode


def results(records: list[Record]) -> list[tuple[Any, ...]]:
    return sorted(
        (r.key, r.value["start"], r.value["end"], tuple(sorted(r.value["value"].items())))
        for r in records
    )


async def crash_free_results(
    prefix: str, log: Path, payments: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Run the job on the built-in log without a crash; return its window results."""
    await produce(log, f"{prefix}-payments", payments, partitions=1)
    with trio.fail_after(RUN_TIMEOUT):
        await run_async(
            crash_child.pipeline(prefix),
            log,
            until_idle=True,
            processing="exactly_once",
            commit_interval_ms=100,
        )
    expected = results(await read(log, f"{prefix}-totals"))
    late = sorted(r.value["i"] for r in await read(log, f"{prefix}-crash.late"))
    assert late  # the job does send some records to .late
    assert sum(dict(v)["n"] for *_, v in expected) == len(payments) - len(late)
    return expected


async def kill_repeatedly(url: str, prefix: str, state: Path, processing: str) -> None:
    """Kill the job at every failpoint and at random moments, then let it finish."""
    rng = random.Random(int(os.environ.get("STREAMFLOW_SEED", "7")))
    failpoints = [f"{name}:{rng.randint(*hits)}" for name, hits in KILL_POINTS.items()]
    rng.shuffle(failpoints)
    delays = [rng.uniform(*RANDOM_KILL_AFTER) for _ in range(RANDOM_KILLS)]
    started = time.monotonic()
    for delay in delays:  # first, while most of the work is left
        code = await trio.to_thread.run_sync(
            partial(run_child, url, prefix, state, processing, kill_after=delay)
        )
        assert code == -signal.SIGKILL, f"the kill after {delay:.2f} s came after the job ended"
    for point in failpoints:
        code = await trio.to_thread.run_sync(
            partial(run_child, url, prefix, state, processing, failpoint=point)
        )
        assert code == -signal.SIGKILL, f"{point} did not fire: the job finished first"
    assert await trio.to_thread.run_sync(run_child, url, prefix, state, processing) == 0
    print(
        f"{RANDOM_KILLS + len(failpoints)} kills ({', '.join(failpoints)}, and after "
        f"{', '.join(f'{d:.2f}' for d in delays)} s) in {time.monotonic() - started:.1f} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("processing", ["exactly_once", "at_least_once"])
async def test_job_on_kafka_killed_repeatedly_counts_every_record_once(
    processing: str, kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    """Exactly-once: the sink equals a crash-free run's. At-least-once: results may repeat.

    In both modes the first stage, which feeds a repartition topic, writes in
    transactions: a kill after its append and before its commit
    (``runtime.after_output``) would otherwise leave records that the restart
    appends again, and the window stage would fold them twice.
    """
    prefix = new_topic()
    payments = crash_child.events()
    expected = await crash_free_results(prefix, tmp_path / "log", payments)
    await produce(kafka_url, f"{prefix}-payments", payments, partitions=1)
    await kill_repeatedly(kafka_url, prefix, tmp_path / "state", processing)
    repartition = await read(kafka_url, f"{prefix}-crash.s1.repartition")
    assert sorted(r.value["i"] for r in repartition) == list(range(len(payments)))
    got = results(await read(kafka_url, f"{prefix}-totals"))
    if processing == "at_least_once":
        assert sorted(set(got)) == expected  # repeats allowed, every window exact
        return
    assert got == expected  # nothing lost, nothing twice
    assert sorted(r.value["i"] for r in await read(kafka_url, f"{prefix}-crash.late")) == sorted(
        r.value["i"] for r in await read(tmp_path / "log", f"{prefix}-crash.late")
    )
