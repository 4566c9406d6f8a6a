"""A keyed tumbling-window job over payment events, run (and killed) by test_crash_job.py.

Usage: python crash_job_child.py DATA_DIR at_least_once|exactly_once
"""

from __future__ import annotations

import random
import sys
from typing import Any, Literal

import streamflow
from streamflow import Pipeline, windows

USERS = 1_000
EVENTS = 200_000
T0_MS = 1_704_067_200_000


def events(n: int = EVENTS, seed: int = 42) -> list[dict[str, Any]]:
    """Return n deterministic payments: user, amount in cents, event time (jittered)."""
    rng = random.Random(seed)
    out = []
    ts = T0_MS
    for i in range(n):
        ts += rng.randint(0, 2)
        # a little disorder: some records arrive up to 2 s late (within grace)
        late = rng.randint(0, 2_000) if rng.random() < 0.01 else 0
        out.append(
            {"i": i, "user": rng.randrange(USERS), "cents": rng.randint(1, 50_000), "ts": ts - late}
        )
    return out


def fold(acc: dict[str, int], v: dict[str, Any]) -> dict[str, int]:
    return {"n": acc["n"] + 1, "cents": acc["cents"] + v["cents"], "ids": acc["ids"] + v["i"]}


def pipeline() -> Pipeline:
    # One source partition and two repartition partitions: each repartition
    # partition then has a single writer, so the order s1 reads (and so which
    # records are late) is the same in every run; see docs/guarantees.md.
    p = Pipeline("crashjob", parallelism=2)
    (
        p.source("payments", timestamp=lambda v: v["ts"])
        .key_by(lambda v: v["user"])
        .window(windows.tumbling(seconds=60), grace_ms=5_000)
        .aggregate("spend", initial=lambda: {"n": 0, "cents": 0, "ids": 0}, fold=fold)
        .sink("totals")
    )
    return p


if __name__ == "__main__":
    mode: Literal["at_least_once", "exactly_once"] = (
        "exactly_once" if sys.argv[2] == "exactly_once" else "at_least_once"
    )
    streamflow.run(
        pipeline(), sys.argv[1], until_idle=True, processing=mode, commit_interval_ms=100
    )
    print("DONE", flush=True)
