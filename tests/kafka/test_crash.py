"""SIGKILL an exactly-once window job on Kafka again and again; its sink must match a clean run.

The job (``crash_child.py``) runs in a subprocess against the test cluster and
is killed at each runtime failpoint (``streamflow.failpoint``: after
processing, between the appends of one batch, after the appends, between the
Kafka commit and the LMDB checkpoint, between the changelog append and the
commit), each on a seeded random hit, and at random moments from outside; then
it runs to the end. Its window results must equal, record for record, those of
a crash-free run of the same job on the built-in log: nothing lost, nothing
twice. Every run uses the same ``group.instance.id`` (Kafka static
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
    url: str, prefix: str, state: Path, *, failpoint: str | None = None, kill_after: float = 0
) -> int:
    """Run the job once (killed at *failpoint* or after *kill_after* s); return its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), GROUP_INSTANCE_ENV: f"{prefix}-worker"}
    env.pop("STREAMFLOW_FAILPOINT", None)
    if failpoint is not None:
        env["STREAMFLOW_FAILPOINT"] = failpoint
    command = [sys.executable, "-m", "tests.kafka.crash_child", url, prefix, str(state)]
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


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_exactly_once_job_on_kafka_killed_repeatedly_matches_a_crash_free_run(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("STREAMFLOW_SEED", "7")))
    prefix = new_topic()
    payments = crash_child.events()
    source = f"{prefix}-payments"
    await produce(kafka_url, source, payments, partitions=1)
    await produce(tmp_path / "log", source, payments, partitions=1)
    with trio.fail_after(RUN_TIMEOUT):
        await run_async(
            crash_child.pipeline(prefix),
            tmp_path / "log",
            until_idle=True,
            processing="exactly_once",
            commit_interval_ms=100,
        )
    expected = results(await read(tmp_path / "log", f"{prefix}-totals"))
    expected_late = sorted(
        r.value["i"] for r in await read(tmp_path / "log", f"{prefix}-crash.late")
    )
    assert expected_late  # the job does send some records to .late
    assert sum(dict(v)["n"] for *_, v in expected) == len(payments) - len(expected_late)

    failpoints = [f"{name}:{rng.randint(*hits)}" for name, hits in KILL_POINTS.items()]
    rng.shuffle(failpoints)
    delays = [rng.uniform(*RANDOM_KILL_AFTER) for _ in range(RANDOM_KILLS)]
    state = tmp_path / "state"
    started = time.monotonic()
    for delay in delays:  # first, while most of the work is left
        code = await trio.to_thread.run_sync(
            partial(run_child, kafka_url, prefix, state, kill_after=delay)
        )
        assert code == -signal.SIGKILL, f"the kill after {delay:.2f} s came after the job ended"
    for point in failpoints:
        code = await trio.to_thread.run_sync(
            partial(run_child, kafka_url, prefix, state, failpoint=point)
        )
        assert code == -signal.SIGKILL, f"{point} did not fire: the job finished first"
    assert await trio.to_thread.run_sync(run_child, kafka_url, prefix, state) == 0
    print(
        f"{RANDOM_KILLS + len(failpoints)} kills ({', '.join(failpoints)}, and after "
        f"{', '.join(f'{d:.2f}' for d in delays)} s) in {time.monotonic() - started:.1f} s"
    )

    # The repartition topic's committed records hold every payment once.
    repartition = await read(kafka_url, f"{prefix}-crash.s1.repartition")
    assert sorted(r.value["i"] for r in repartition) == list(range(len(payments)))
    got = results(await read(kafka_url, f"{prefix}-totals"))
    assert got == expected  # nothing lost, nothing twice
    got_late = sorted(r.value["i"] for r in await read(kafka_url, f"{prefix}-crash.late"))
    assert got_late == expected_late
