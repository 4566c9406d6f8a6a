"""R1: SIGKILL the keyed tumbling-window job at random and at every runtime/state failpoint.

The job is ``tests/state/crash_job_child.py``'s (1,000 users, event-time
tumbling windows of sum + count + id-sum, a repartition between two stages),
run exactly-once over an embedded log. Each incarnation prints ``PROGRESS``
once its tasks processed their first records; the parent times that from the
start (the restore time), then either SIGKILLs it after a random delay or lets
an armed failpoint kill it. After the last kill a clean run finishes the job,
and its sink must equal a crash-free run's, record for record.
"""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.failpoint import NAMES
from tests.runtime.helpers import read
from tests.state.crash_job_child import USERS, events
from tests.state.test_crash_job import late_ids, produce_in_batches, results

from .harness import Child, percentile, report, soak, start_python

if TYPE_CHECKING:
    from pathlib import Path

EVENTS = 1_000_000 if soak() else 200_000
RANDOM_KILLS = 30 if soak() else 10
JOB_POINTS = [name for name in NAMES if name.startswith(("runtime.", "state."))]
#: Hits to kill at: per stored output batch for the output points, per checkpoint otherwise.
HITS = {"runtime.mid_checkpoint": (1, 3), "state.after_changelog": (1, 3)}
OUTPUT_HITS = (2, 12)
RANDOM_DELAY_S = (0.0, 0.05)

CHILD = """
import sys
import trio
from streamflow.runtime.metrics import JobMetrics
from streamflow.runtime.run import run_async
from tests.state.crash_job_child import pipeline

async def main(target, mode):
    metrics = JobMetrics("crashjob")
    async with trio.open_nursery() as nursery:
        async def watch():
            while not any(t.records_in for t in metrics.tasks()):
                await trio.sleep(0.005)
            print("PROGRESS", flush=True)
        nursery.start_soon(watch)
        print("READY", flush=True)
        await run_async(pipeline(), target, until_idle=True, processing=mode,
                        commit_interval_ms=100, metrics=metrics)
        nursery.cancel_scope.cancel()
    print("DONE", flush=True)

trio.run(main, sys.argv[1], sys.argv[2])
"""


class Incarnation:
    """One run of the job: started, timed to its first progress, then killed or finished."""

    def __init__(self, data: Path, log_path: Path, failpoint: str | None = None) -> None:
        self.started = time.monotonic()
        self.child: Child = start_python(
            CHILD, str(data), "exactly_once", log_path=log_path, failpoint=failpoint
        )
        self.child.wait_ready()
        self.restore_s: float | None = None

    def wait_progress(self) -> bool:
        """Wait for ``PROGRESS``; return False if the process ended first."""
        while True:
            line = self.child.readline(timeout=120)
            if not line:
                return False
            if line.strip() == "PROGRESS":
                self.restore_s = time.monotonic() - self.started
                return True

    def finish(self) -> int:
        """Wait for the process to end by itself (a failpoint or the job's end)."""
        while self.child.readline(timeout=120):
            pass
        code = self.child.wait(timeout=120)
        self.child.close()
        assert code in (0, -signal.SIGKILL), f"job failed ({code}):\n{self.child.tail_log()}"
        return code


def expected_hits(name: str) -> tuple[int, int]:
    """Return the range of hits to arm *name* at."""
    return HITS.get(name, OUTPUT_HITS)


@pytest.mark.timeout(300)
async def test_window_job_killed_at_random_and_at_each_failpoint_matches_a_clean_run(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    payments = events(EVENTS)
    for name in ("reference", "crashed"):
        await produce_in_batches(tmp_path / name, payments)
    clean = Incarnation(tmp_path / "reference", tmp_path / "reference.log")
    assert clean.finish() == 0
    expected = results(await read(tmp_path / "reference", "totals"))
    expected_late = late_ids(await read(tmp_path / "reference", "crashjob.late"))
    assert sum(dict(v)["n"] for *_, v in expected) == len(payments) - len(expected_late)

    plan: list[str | None] = [f"{n}:{rng.randint(*expected_hits(n))}" for n in JOB_POINTS]
    plan += [None] * RANDOM_KILLS
    rng.shuffle(plan)
    restore_s: list[float] = []
    landed: list[str] = []
    not_landed: list[str] = []
    for failpoint in plan:
        run = Incarnation(tmp_path / "crashed", tmp_path / "crashed.log", failpoint)
        progressed = run.wait_progress()
        if progressed and run.restore_s is not None:
            restore_s.append(run.restore_s)
        if failpoint is None and progressed:
            await trio.sleep(rng.uniform(*RANDOM_DELAY_S))
            run.child.kill()
            code = run.child.process.returncode
        else:
            code = run.finish()
        (landed if code == -signal.SIGKILL else not_landed).append(failpoint or "random")
    final = Incarnation(tmp_path / "crashed", tmp_path / "crashed.log")
    assert final.finish() == 0
    fired = {name.split(":")[0] for name in landed}
    assert fired >= set(JOB_POINTS), f"failpoints that never fired: {set(JOB_POINTS) - fired}"

    assert len(await read(tmp_path / "crashed", "crashjob.s1.repartition")) == len(payments)
    got = results(await read(tmp_path / "crashed", "totals"))
    got_late = late_ids(await read(tmp_path / "crashed", "crashjob.late"))
    assert got == expected  # nothing lost, nothing twice, every value equal
    assert got_late == expected_late
    report(
        "R1",
        seed,
        events=len(payments),
        keys=USERS,
        windows=len(expected),
        kills_planned=len(plan),
        kills_landed=len(landed),
        failpoint_kills=sum(name != "random" for name in landed),
        random_kills=landed.count("random"),
        not_landed=not_landed,
        lost=0,
        duplicated=0,
        restore_s_p50=round(percentile(restore_s, 50), 3),
        restore_s_p99=round(percentile(restore_s, 99), 3),
    )
