"""Crash test: SIGKILL a writer at random moments; every acknowledged record survives."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from streamflow.log import Log

if TYPE_CHECKING:
    from pathlib import Path

KILLS = 22

WRITER = """
import random, sys
from streamflow.log import Log
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
log = Log.open(path)
if not log.has_topic("t"):
    log.create_topic("t", fsync="always", segment_bytes=16384)
p = log.partition("t", 0)
print("READY", p.end_offset, flush=True)
while True:
    first = p.end_offset
    n = rng.randint(1, 20)
    values = [f"{i}:" + "x" * (i % 97) for i in range(first, first + n)]
    base = p.append_columns([i for i in range(first, first + n)], values)
    assert base == first
    print("ACK", base, n, flush=True)
"""


def expected(offset: int) -> str:
    return f"{offset}:" + "x" * (offset % 97)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_never_loses_acknowledged_records(tmp_path: Path) -> None:
    seed = int(os.environ.get("STREAMFLOW_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed}")
    rng = random.Random(seed)
    acked = 0  # every offset below this was acknowledged
    kills = 0
    for round_ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(seed + round_)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()
            assert ready[0] == "READY", ready
            assert int(ready[1]) >= acked
            for _ in range(rng.randint(0, 60)):
                ack = child.stdout.readline().split()
                assert ack[0] == "ACK", ack
                acked = max(acked, int(ack[1]) + int(ack[2]))
            time.sleep(rng.random() * 0.02)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
            assert child.stdout is not None
            # acknowledgements printed before the kill count too
            for line in child.stdout.read().splitlines():
                ack = line.split()
                if len(ack) == 3 and ack[0] == "ACK":
                    acked = max(acked, int(ack[1]) + int(ack[2]))
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        kills += 1
        log = Log.open(tmp_path)
        p = log.partition("t", 0)
        assert p.end_offset >= acked, f"lost acknowledged records (seed {seed})"
        offset = 0
        while offset < p.end_offset:
            for batch in p.read_batches(offset):
                assert batch.offsets == list(range(offset, offset + len(batch)))
                assert batch.keys == batch.offsets
                assert batch.values == [expected(o) for o in batch.offsets], f"seed {seed}"
                offset = batch.next_offset
        if rng.random() < 0.5:
            log.close()
        else:
            log.abandon()  # the next writer then recovers without a clean marker
    assert kills >= 20
    assert acked > 0
