"""Measure append and fetch throughput on Kafka and on the built-in log (reported only)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow
from streamflow.log import Columns

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from streamflow.log import Transport
    from streamflow.log.kafka_transport import KafkaTransport

pytestmark = pytest.mark.kafka

RECORDS = 100_000
BATCH = 1_000
VALUE = "x" * 90  # about 100 bytes per record with its msgpack framing and key


async def measure(transport: Transport, topic: str) -> dict[str, float]:
    await transport.create_topic(topic, partitions=1)
    columns = Columns(keys=list(range(BATCH)), values=[VALUE] * BATCH)
    started = time.perf_counter()
    for _ in range(RECORDS // BATCH):
        await transport.append(topic, 0, columns)
    appended = time.perf_counter()
    position = 0
    while position < RECORDS:
        found = await transport.fetch({(topic, 0): position}, timeout=5.0)
        for batch in found.get((topic, 0), []):
            position = batch.next_offset
    fetched = time.perf_counter()
    assert position == RECORDS
    return {
        "append_records_per_s": round(RECORDS / (appended - started)),
        "fetch_records_per_s": round(RECORDS / (fetched - appended)),
    }


async def test_measure_throughput_kafka_and_embedded(
    tmp_path: Path,
    kafka: KafkaTransport,
    new_topic: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(240):
        on_kafka = await measure(kafka, new_topic())
        async with streamflow.connect(tmp_path / "log", cleaner=False) as client:
            embedded = await measure(client.transport, "bench")
    with capsys.disabled():
        report = {"records": RECORDS, "batch": BATCH, "kafka": on_kafka, "embedded": embedded}
        print(f"\nTHROUGHPUT {json.dumps(report)}")
