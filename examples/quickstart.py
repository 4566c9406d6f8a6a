"""Quickstart: an embedded pipeline over a local log directory, no server needed.

It writes 20,000 generated payments to the topic ``payments`` of a log directory,
runs a two-stage pipeline (filter, key by user, one-minute tumbling windows of
count and total, then a rule that flags busy minutes) until all input is
processed, and prints what arrived in the ``alerts`` topic.

Run:  python examples/quickstart.py [DATA_DIR]   (default: ./quickstart-data)
"""

from __future__ import annotations

import random
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import trio

import streamflow
from streamflow import Pipeline, windows
from streamflow.log import Log

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
USERS = [f"u{i:03d}" for i in range(200)]


def payments(n: int, seed: int = 7) -> list[dict[str, object]]:
    """Return *n* payment events, a few busy users among many quiet ones."""
    rng = random.Random(seed)
    busy = USERS[:5]
    ts = T0_MS
    events: list[dict[str, object]] = []
    for _ in range(n):
        ts += rng.randint(0, 20)
        user = rng.choice(busy) if rng.random() < 0.1 else rng.choice(USERS)
        events.append({"user_id": user, "amount": round(rng.expovariate(1 / 40), 2), "ts": ts})
    return events


async def produce(data_dir: Path, events: list[dict[str, object]]) -> None:
    """Create the input topic and send the events through the embedded client."""
    async with streamflow.connect(data_dir) as client:
        await client.create_topic("payments", partitions=4)
        async with client.producer() as producer:
            for event in events:
                await producer.send("payments", event, key=event["user_id"])


def build_pipeline() -> Pipeline:
    """Flag users with more than 60 payments in one event-time minute."""
    pipeline = Pipeline("quickstart")
    (
        pipeline.source("payments", timestamp=lambda v: v["ts"])
        .filter(lambda v: v["amount"] > 0)
        .key_by(lambda v: v["user_id"])
        .window(windows.tumbling(seconds=60))
        .aggregate(
            "spend",
            initial=lambda: {"n": 0, "total": 0.0},
            fold=lambda acc, v: {"n": acc["n"] + 1, "total": round(acc["total"] + v["amount"], 2)},
        )
        .filter(lambda w: w.value["n"] > 60)
        .sink("alerts")
    )
    return pipeline


def main(data_dir: Path) -> None:
    """Produce, run the pipeline to completion, and print the alerts."""
    shutil.rmtree(data_dir, ignore_errors=True)
    trio.run(produce, data_dir, payments(20_000))
    streamflow.run(build_pipeline(), data_dir, until_idle=True)
    with Log.open(data_dir) as log:
        alerts = []
        for info in log.describe("alerts").partitions:
            part = log.partition("alerts", info.partition)
            alerts.extend(r.value for r in part.read(0, max_records=10_000))
    alerts.sort(key=lambda a: (a["start"], str(a["key"])))
    print(f"{len(alerts)} busy user-minutes (more than 60 payments):")
    for a in alerts[:10]:
        minute = datetime.fromtimestamp(a["start"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"  {a['key']}  {minute}: {a['value']['n']} payments, total {a['value']['total']}")
    if len(alerts) > 10:
        print(f"  ... and {len(alerts) - 10} more")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart-data"))
