"""Pipelines the Kafka pipeline tests run, built with a unique name per test.

The cluster is shared by the tests of a session, so every pipeline (and so
its group, repartition and changelog topics) and topic carries the test's
unique prefix. Event times are recent: a Kafka cluster deletes records whose
timestamps are older than the topic's ``retention.ms`` (7 days by default) at
once, the active segment included.
"""

from __future__ import annotations

import time
from typing import Any

from streamflow import Pipeline, windows

#: An hour ago, on a minute boundary (so window boundaries do not depend on the run).
T0_MS = (int(time.time() * 1000) // 60_000 - 60) * 60_000
USERS = 50


def payments(n: int, first: int = 0) -> list[dict[str, Any]]:
    """Return *n* deterministic payments (user, cents, event time) starting at index *first*."""
    return [
        {"i": i, "user": (i * 7919) % USERS, "cents": (i * 104_729) % 20_000, "ts": T0_MS + 50 * i}
        for i in range(first, first + n)
    ]


def stateless(prefix: str) -> Pipeline:
    """Two stages: keep the large payments, re-key them by user, sink them."""
    p = Pipeline(f"{prefix}-w1")
    (
        p.source(f"{prefix}-payments")
        .map(lambda v: {"user": v["user"], "cents": v["cents"], "i": v["i"]})
        .filter(lambda v: v["cents"] > 10_000)
        .key_by(lambda v: v["user"])
        .sink(f"{prefix}-large")
    )
    return p


def spend(acc: dict[str, int], v: dict[str, Any]) -> dict[str, int]:
    """Fold one payment into a window's count, total and id sum."""
    return {"n": acc["n"] + 1, "cents": acc["cents"] + v["cents"], "ids": acc["ids"] + v["i"]}


def windowed(prefix: str, *, parallelism: int = 2, counts: bool = False) -> Pipeline:
    """W2: per-user tumbling 60 s windows (LMDB state, changelog on the target).

    With *counts*, also a running count of payments per user (sunk after each input).
    """
    p = Pipeline(f"{prefix}-w2", parallelism=parallelism)
    keyed = p.source(f"{prefix}-payments", timestamp=lambda v: v["ts"]).key_by(lambda v: v["user"])
    (
        keyed.window(windows.tumbling(seconds=60), grace_ms=5_000)
        .aggregate("spend", initial=lambda: {"n": 0, "cents": 0, "ids": 0}, fold=spend)
        .sink(f"{prefix}-totals")
    )
    if counts:
        keyed.count("payments").sink(f"{prefix}-counts")
    return p
