"""R6: SIGKILL at each roll, index, snapshot, retention and compaction failpoint.

A child process writes keyed records (value = its offset) across many rolls,
compacts, then applies size retention, with ``STREAMFLOW_FAILPOINT=name:n``
armed so it kills itself with SIGKILL in the middle of that step. The parent
then opens the log and checks: it opens; every record's value is its offset
(offsets unchanged, order kept); compaction never removed the newest record of
a key; no temporary file is left; a second writer can go on.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

from streamflow.failpoint import NAMES
from streamflow.log import Log, Message

from .harness import percentile, report, soak, start_python

if TYPE_CHECKING:
    from pathlib import Path

HITS = range(1, 11) if soak() else (1, 2, 4)
LOG_POINTS = [name for name in NAMES if name.startswith("log.")]
RECORDS = 600
KEYS = 25

CHILD = """
import sys
from streamflow.log import Log, Message
path, phase = sys.argv[1], sys.argv[2]
log = Log.open(path)
if not log.has_topic("t"):
    log.create_topic("t", segment_bytes=4096, fsync="always", cleanup_policy="compact,delete",
                     retention_bytes=16384, delete_retention_ms=0)
p = log.partition("t", 0)
print("READY", flush=True)
while p.end_offset < {records}:
    i = p.end_offset
    p.append([Message(key=i % {keys}, value=i)])
if phase == "clean":
    log.compact("t", now_ms=1 << 50)
    log.enforce_retention(1 << 50)
log.close()
print("DONE", flush=True)
""".replace("{records}", str(RECORDS)).replace("{keys}", str(KEYS))


def check(directory: Path) -> int:
    """Open the log and check it; return how many records it keeps."""
    with Log.open(directory) as log:
        assert not list(directory.rglob("*.tmp")), "recovery left a temporary file behind"
        p = log.partition("t", 0)
        records = p.read(p.start_offset, 100_000)
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets))
        assert all(r.value == r.offset and r.key == r.offset % KEYS for r in records)
        end = p.end_offset
        # compaction keeps the newest record of every key; size retention then
        # removes whole old segments whatever their keys (as Kafka's
        # "compact,delete" does), so the claim holds from start_offset on
        newest = {o % KEYS: o for o in range(p.start_offset, end)}
        assert set(newest.values()) <= set(offsets)
        assert p.append([Message(key=end % KEYS, value=end)]) == end
    return len(records)


@pytest.mark.timeout(600)
def test_crash_at_each_cleaning_failpoint_leaves_a_consistent_log(
    tmp_path: Path, seed: int
) -> None:
    fired = not_reached = 0
    recovery_ms: list[float] = []
    for name in LOG_POINTS:
        for hit in HITS:
            data = tmp_path / f"{name}-{hit}"
            phase = "clean" if "compaction" in name or "retention" in name else "write"
            if phase == "clean":
                # write everything first, without the failpoint
                child = start_python(CHILD, str(data), "write", log_path=tmp_path / "child.log")
                child.wait_ready()
                assert child.wait() == 0
                child.close()
            child = start_python(
                CHILD, str(data), phase, log_path=tmp_path / "child.log", failpoint=f"{name}:{hit}"
            )
            child.wait_ready()
            code = child.wait()
            child.close()
            if code == -signal.SIGKILL:
                fired += 1
            else:
                assert code == 0, child.tail_log()
                not_reached += 1
            started = time.perf_counter()
            check(data)
            recovery_ms.append((time.perf_counter() - started) * 1000)
    assert fired >= len(LOG_POINTS), "every failpoint fires at least once"
    report(
        "R6",
        seed,
        failpoints=len(LOG_POINTS),
        hits_per_failpoint=len(HITS),
        kills=fired,
        not_reached=not_reached,
        inconsistent=0,
        leftover_tmp=0,
        recovery_ms_p50=round(percentile(recovery_ms, 50), 2),
        recovery_ms_p99=round(percentile(recovery_ms, 99), 2),
    )
