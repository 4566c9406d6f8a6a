"""Operational metrics: per service and metric, one-minute windows of count, mean, max and p95.

Services emit metric events ``{"service", "host", "name", "value", "ts"}`` to the
topic ``metrics``. The pipeline keys them by ``service/name``, groups them into
one-minute tumbling event-time windows (with 5 s of grace for events that
arrive a little out of order), and writes one summary per window to the topic
``metrics-1m``, which a dashboard would read::

    {"service": "api", "metric": "latency_ms", "start": ..., "end": ...,
     "count": 412, "mean": 48.213, "max": 301.5, "p95": 122.0}

Run:  python examples/metrics_aggregation.py [DATA_DIR] [--generate N]
      (default ./metrics-data and 20,000 generated events; the directory is recreated)
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
from pathlib import Path
from typing import Any

import trio

import streamflow
from streamflow import Pipeline, WindowResult, windows

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SERVICES = {"api": ["api-1", "api-2", "api-3"], "auth": ["auth-1"], "billing": ["bill-1", "bill-2"]}
METRICS = {"latency_ms": (40.0, 400.0), "cpu_pct": (30.0, 100.0)}  # typical value, spike value


def generate(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Return *n* metric events over about N/30 seconds, some up to 2 s out of order."""
    rng = random.Random(seed)
    events = []
    ts = T0_MS + 5_000
    for _ in range(n):
        ts += rng.randint(0, 60)
        service = rng.choice(list(SERVICES))
        name = rng.choice(list(METRICS))
        typical, spike = METRICS[name]
        value = spike if rng.random() < 0.02 else round(rng.gauss(typical, typical / 4), 3)
        events.append(
            {
                "service": service,
                "host": rng.choice(SERVICES[service]),
                "name": name,
                "value": value,
                "ts": ts - rng.randint(0, 2_000),  # hosts' clocks and buffers disagree a little
            }
        )
    return events


def p95(values: list[float]) -> float:
    """Return the 95th percentile of *values* by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def summarize(window: WindowResult) -> dict[str, Any]:
    """Turn one closed window of values into the dashboard's summary record."""
    service, metric = window.key.split("/", 1)
    values = window.value
    return {
        "service": service,
        "metric": metric,
        "start": window.start,
        "end": window.end,
        "count": len(values),
        "mean": round(sum(values) / len(values), 3),
        "max": max(values),
        "p95": p95(values),
    }


def build_pipeline() -> Pipeline:
    """Key by service and metric, window by minute, summarise each window."""
    pipeline = Pipeline("metrics")
    (
        pipeline.source("metrics", timestamp=lambda e: e["ts"])
        .key_by(lambda e: f"{e['service']}/{e['name']}")
        .window(windows.tumbling(seconds=60), grace_ms=5_000)
        # The window keeps its values, so that the percentile is exact.
        .aggregate("values", initial=list, fold=lambda acc, e: [*acc, e["value"]])
        .map(summarize)
        .sink("metrics-1m")
    )
    return pipeline


async def produce(data_dir: Path, events: list[dict[str, Any]]) -> None:
    """Create the ``metrics`` topic and send the events, keyed by host."""
    async with streamflow.connect(data_dir) as client:
        await client.create_topic("metrics", partitions=1)
        async with client.producer() as producer:
            await producer.send_many("metrics", events, keys=[e["host"] for e in events])


async def read_summaries(data_dir: Path) -> list[dict[str, Any]]:
    """Return every record of ``metrics-1m``."""
    async with (
        streamflow.connect(data_dir) as client,
        client.consumer("metrics-1m", start="earliest") as consumer,
    ):
        found: list[dict[str, Any]] = []
        while batch := await consumer.poll(max_records=10_000, timeout=0.2):
            found.extend(record.value for record in batch)
        return found


def main(data_dir: Path, events: int = 20_000) -> None:
    """Generate metric events, run the job until all are processed, print the summaries."""
    shutil.rmtree(data_dir, ignore_errors=True)
    trio.run(produce, data_dir, generate(events))
    streamflow.run(build_pipeline(), data_dir, until_idle=True)
    summaries = trio.run(read_summaries, data_dir)
    summaries.sort(key=lambda s: (s["start"], s["service"], s["metric"]))
    print(f"{len(summaries)} one-minute summaries in topic metrics-1m")
    for s in summaries[:8]:
        print(
            f"  {s['service']:8} {s['metric']:11} minute {(s['start'] - T0_MS) // 60_000}: "
            f"count {s['count']:4}  mean {s['mean']:8.3f}  max {s['max']:8.3f}  p95 {s['p95']:8.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("metrics-data"))
    parser.add_argument("--generate", type=int, default=20_000, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.generate)
