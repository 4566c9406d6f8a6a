"""Broker SIGKILL during produce: every acknowledged record is stored exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BrokerProcess

RECORDS = 50_000
KEYS = 1_000
PARTITIONS = 4
#: Kills by the test at these acknowledged counts ...
KILL_AT = (6_000, 30_000)
#: ... and by the broker itself right after storing a batch, before answering
#: (the window where a retry without idempotence would duplicate records).
FAILPOINTS = ("broker.after_append:20", "broker.after_append:40", "broker.after_append:30")

PRODUCER = """
import json, sys, trio, streamflow

async def main(url, topic, total, acks_path):
    acks = open(acks_path, "a", buffering=1)

    async def run(producer, worker, workers):
        mine = list(range(worker, total, workers))
        for start in range(0, len(mine), 250):
            values = mine[start : start + 250]
            metas = await producer.send_many(topic, values, keys=[v % {keys} for v in values])
            acks.write(json.dumps([[v, m.partition, m.offset] for v, m in zip(values, metas)]))
            acks.write("\\n")

    async with streamflow.connect(url, reconnect_timeout=60) as client:
        async with client.producer(linger_ms=2, batch_size=200) as producer:
            async with trio.open_nursery() as nursery:
                for worker in range(4):
                    nursery.start_soon(run, producer, worker, 4)
    print("DONE", flush=True)

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
""".replace("{keys}", str(KEYS))


def _acked(path: Path) -> list[tuple[int, int, int]]:
    if not path.exists():
        return []
    out: list[tuple[int, int, int]] = []
    for line in path.read_text().splitlines():
        try:
            rows = json.loads(line)
        except ValueError:
            continue  # the last line may be half written
        out.extend((v, p, o) for v, p, o in rows)
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_acknowledged_records_survive_broker_kills_exactly_once(
    tmp_path: Path, broker_factory: type[BrokerProcess]
) -> None:
    broker = broker_factory(tmp_path / "data")
    broker.start()

    async def create() -> None:
        async with streamflow.connect(broker.url) as client:
            await client.create_topic("events", partitions=PARTITIONS)

    trio.run(create)
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    acks = tmp_path / "acks.jsonl"
    producer = subprocess.Popen(
        [sys.executable, str(script), broker.url, "events", str(RECORDS), str(acks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    kills = 0
    failpoints = list(FAILPOINTS)
    thresholds = list(KILL_AT)
    try:
        deadline = time.monotonic() + 180
        while producer.poll() is None:
            assert time.monotonic() < deadline, "the producer made no progress"
            if broker.exited():
                kills += 1
                broker.restart(failpoints.pop(0) if failpoints else None)
            elif thresholds and len(_acked(acks)) >= thresholds[0]:
                thresholds.pop(0)
                kills += 1
                broker.restart(failpoints.pop(0) if failpoints else None)
            time.sleep(0.01)
        out, err = producer.communicate(timeout=30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 0, err.decode()
    assert out.strip() == b"DONE"
    assert kills >= 4
    assert not failpoints, "every failpoint fired"

    acked = _acked(acks)
    stored: dict[tuple[int, int], int] = {}

    async def read_all() -> None:
        with trio.fail_after(120):
            await read_into(stored)

    async def read_into(stored: dict[tuple[int, int], int]) -> None:
        async with streamflow.connect(broker.url) as client:
            desc = await client.describe("events")
            ends = {p.partition: p.end_offset for p in desc.partitions}
            async with client.consumer("events") as consumer:
                while len(stored) < sum(ends.values()):
                    for r in await consumer.poll(max_records=5_000, timeout=1.0):
                        stored[(r.partition, r.offset)] = r.value

    trio.run(read_all)
    counts = Counter(stored.values())
    duplicates = [v for v, n in counts.items() if n > 1]
    assert duplicates == []
    assert len(acked) == RECORDS
    missing = [v for v, _, _ in acked if v not in counts]
    assert missing == []
    misplaced = [(v, p, o) for v, p, o in acked if o >= 0 and stored.get((p, o)) != v]
    assert misplaced == []
    print(f"broker kills: {kills}; acknowledged {len(acked)}; stored {len(stored)}")
