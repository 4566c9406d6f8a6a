"""A keyed tumbling-window job (exactly-once unless told), run (and killed) by test_crash.py.

Usage: python -m tests.kafka.crash_child TARGET PREFIX STATE_DIR [PROCESSING]

TARGET is a ``kafka://`` URL or a log directory (the crash-free reference).
Fetches are capped at ``FETCH_RECORDS`` records, so the job goes through many
fetch / process / append / commit rounds that a kill can land in.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any, Literal

import streamflow
from streamflow import Pipeline, windows

USERS = 100
EVENTS = 20_000
FETCH_RECORDS = 100
#: Sleep per source record (s): about 3 s of work for the first stage in all.
PACE_S = 0.00015
#: An hour ago, on a minute boundary: Kafka deletes records older than retention.ms at once.
T0_MS = (int(time.time() * 1000) // 60_000 - 60) * 60_000


def events(n: int = EVENTS, seed: int = 42, t0_ms: int = T0_MS) -> list[dict[str, Any]]:
    """Return n deterministic payments: user, amount in cents, event time (a little disorder)."""
    rng = random.Random(seed)
    out = []
    ts = t0_ms
    for i in range(n):
        ts += rng.randint(0, 20)
        # some records arrive up to 2 s late (within grace), a few far too late
        late = rng.randint(0, 2_000) if rng.random() < 0.01 else 0
        if rng.random() < 0.001:
            late = 120_000
        out.append(
            {"i": i, "user": rng.randrange(USERS), "cents": rng.randint(1, 50_000), "ts": ts - late}
        )
    return out


def fold(acc: dict[str, int], v: dict[str, Any]) -> dict[str, int]:
    """Fold one payment into a window's count, total and id sum."""
    return {"n": acc["n"] + 1, "cents": acc["cents"] + v["cents"], "ids": acc["ids"] + v["i"]}


def paced(v: dict[str, Any]) -> dict[str, Any]:
    """Return *v* after a short sleep, so that a run lasts long enough to be killed mid-way."""
    time.sleep(PACE_S)
    return v


def pipeline(prefix: str) -> Pipeline:
    """Pace, key by user, 60 s tumbling windows with 5 s grace, sink the window results.

    One source partition feeds two repartition partitions, so each of those
    has one writer and the order the window stage reads (and so lateness) is
    the same in every run (docs/guarantees.md).
    """
    p = Pipeline(f"{prefix}-crash", parallelism=2)
    (
        p.source(f"{prefix}-payments", timestamp=lambda v: v["ts"])
        .map(paced)
        .key_by(lambda v: v["user"])
        .window(windows.tumbling(seconds=60), grace_ms=5_000)
        .aggregate("spend", initial=lambda: {"n": 0, "cents": 0, "ids": 0}, fold=fold)
        .sink(f"{prefix}-totals")
    )
    return p


if __name__ == "__main__":
    target, prefix, state_dir = sys.argv[1:4]
    processing: Literal["at_least_once", "exactly_once"] = (
        "at_least_once" if sys.argv[4:] == ["at_least_once"] else "exactly_once"
    )
    if target.startswith("kafka://"):
        from streamflow.log import kafka_fetch

        kafka_fetch.MAX_FETCH_RECORDS = FETCH_RECORDS  # type: ignore[misc]  # a test knob
    streamflow.run(
        pipeline(prefix),
        target,
        until_idle=True,
        processing=processing,
        commit_interval_ms=100,
        state_dir=state_dir,
        session_timeout_ms=6000,
    )
    print("DONE", flush=True)
