"""R4: power loss (SimDisk) per fsync policy; what survives matches what was promised.

One log directory lives through many power losses. Between two losses the test
appends batches while a manual clock advances and ``sync_due`` runs as the
broker's cleaner would. After each loss the log must open (0 recovery
crashes) and hold a gap-free prefix of what was appended, with every record
exactly as written (0 corrupt served), and:

* ``always``: every acknowledged record;
* ``interval``: every record appended at least ``flush_ms`` before the loss;
* ``never``: at least everything in rolled (closed) segments.

A third of the losses reorder the volatile writes (holes in the unsynced
region) instead of keeping a prefix of them.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest

from streamflow.log import Log, Message

from .harness import percentile, report, soak
from .simdisk import SimDisk

if TYPE_CHECKING:
    from pathlib import Path

CRASHES = 3000 if soak() else int(__import__("os").environ.get("R4_CRASHES", 1000))
#: Each epoch starts a fresh directory, so recovery time does not grow with the run.
EPOCH = 40
FLUSH_MS = 200


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_power_loss_keeps_the_promised_prefix(tmp_path: Path, seed: int, policy: str) -> None:
    rng = random.Random(seed)
    disk = SimDisk(seed)
    now = [1_000_000]
    expected: list[tuple[str, int]] = []  # (value, time appended), by offset
    rolled_end = 0  # offsets below this sit in closed segments
    figures = {"lost_acked": 0, "lost_outside_window": 0, "corrupt_served": 0}
    lost_total = appended = 0
    recovery_ms: list[float] = []
    log: Log | None = None
    for trial in range(CRASHES):
        if trial % EPOCH == 0:
            if log is not None:
                log.close()
            directory = tmp_path / f"epoch-{trial // EPOCH}"
            log = Log.open(directory, clock=lambda: now[0], files=disk)
            log.create_topic(
                "t", segment_bytes=4096, fsync=policy, flush_ms=FLUSH_MS, retention_ms=None
            )
            expected.clear()
            rolled_end = 0
        assert log is not None
        p = log.partition("t", 0)
        for i in range(rng.randint(0, 25)):
            now[0] += rng.randint(0, FLUSH_MS)
            log.sync_due()
            values = [
                f"{trial}/{i}/{j}" + "x" * rng.randint(0, 90) for j in range(rng.randint(1, 6))
            ]
            first = p.append([Message(key=None, value=v) for v in values])
            assert first == len(expected)
            expected.extend((v, now[0]) for v in values)
            appended += len(values)
            if rng.random() < 0.05:
                p.roll()
                rolled_end = len(expected)
        if p.segment_count > 1:
            rolled_end = max(rolled_end, p._bases[-1])
        log.abandon()
        disk.reorder = trial % 3 == 2
        disk.crash()
        started = time.perf_counter()
        log = Log.open(directory, clock=lambda: now[0], files=disk)
        recovery_ms.append((time.perf_counter() - started) * 1000)
        p = log.partition("t", 0)
        kept: list[str] = []
        offset = 0
        while offset < p.end_offset:
            records = p.read(offset, 5000)
            kept.extend(r.value for r in records)
            offset = records[-1].offset + 1
        assert p.start_offset == 0
        for i, value in enumerate(kept):
            if i >= len(expected) or value != expected[i][0]:
                figures["corrupt_served"] += 1
        lost = expected[len(kept) :]
        lost_total += len(lost)
        if policy == "always":
            figures["lost_acked"] += len(lost)
        elif policy == "interval":
            figures["lost_outside_window"] += sum(1 for _, t in lost if t <= now[0] - FLUSH_MS)
        else:
            figures["lost_outside_window"] += max(0, rolled_end - len(kept))
        assert figures == {"lost_acked": 0, "lost_outside_window": 0, "corrupt_served": 0}, (
            f"trial {trial}: kept {len(kept)} of {len(expected)}: {figures}"
        )
        del expected[len(kept) :]
        rolled_end = min(rolled_end, len(expected))
    assert log is not None
    log.close()
    report(
        f"R4-{policy}",
        seed,
        crashes=CRASHES,
        records_appended=appended,
        unsynced_records_lost=lost_total,
        recovery_failures=0,
        recovery_ms_p50=round(percentile(recovery_ms, 50), 2),
        recovery_ms_p99=round(percentile(recovery_ms, 99), 2),
        **figures,
    )
