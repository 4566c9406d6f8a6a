"""mirror: copy topics between the built-in log and a Kafka cluster, record for record."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trio

import streamflow
from streamflow.log import Log, Message, Record
from streamflow.log.mirror import mirror

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from streamflow.log.kafka_transport import KafkaTransport

pytestmark = pytest.mark.kafka


def read_all(path: Path, topic: str) -> list[Record]:
    with Log.open(path) as log:
        out: list[Record] = []
        for info in log.describe(topic).partitions:
            out.extend(log.partition(topic, info.partition).read(0, max_records=10_000))
        return out


def fill(path: Path, topic: str) -> list[Record]:
    now = time.time_ns() // 1_000_000
    with Log.open(path) as log:
        log.create_topic(topic, partitions=3)
        for p in range(3):
            log.partition(topic, p).append(
                [
                    Message(
                        key=None if i % 5 == 0 else f"k{i % 4}",
                        value={"p": p, "i": i} if i % 7 else None,
                        timestamp=now - 1000 + i,
                        headers={"seq": i, "src": "embedded"} if i % 3 == 0 else None,
                    )
                    for i in range(20 + p * 15)
                ]
            )
    return read_all(path, topic)


def shape(records: list[Record]) -> list[tuple[object, ...]]:
    return [(r.partition, r.offset, r.timestamp, r.key, r.value, r.headers) for r in records]


async def test_mirror_round_trip_embedded_to_kafka_to_embedded(
    tmp_path: Path, kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic = new_topic()
    original = fill(tmp_path / "src", topic)
    assert len(original) == 20 + 35 + 50
    with trio.fail_after(120):
        async with streamflow.connect(tmp_path / "src", cleaner=False) as src:
            assert await mirror(src, kafka, [topic]) == {topic: len(original)}
        description = await kafka.describe(topic)
        assert [p.end_offset for p in description.partitions] == [20, 35, 50]

        async with streamflow.connect(tmp_path / "dst", cleaner=False) as dst:
            assert await mirror(kafka, dst, [topic]) == {topic: len(original)}
            # A second run copies the same records again, and the log drops them all.
            assert await mirror(kafka, dst, [topic]) == {topic: len(original)}
            assert [p.end_offset for p in (await dst.describe(topic)).partitions] == [20, 35, 50]
    assert shape(read_all(tmp_path / "dst", topic)) == shape(original)


async def test_mirror_from_the_end_copies_nothing_old(
    tmp_path: Path, kafka: KafkaTransport, new_topic: Callable[[], str]
) -> None:
    topic = new_topic()
    fill(tmp_path / "src", topic)
    with trio.fail_after(60):
        async with streamflow.connect(tmp_path / "src", cleaner=False) as src:
            assert await mirror(src, kafka, [topic], from_beginning=False) == {topic: 0}
    assert [p.end_offset for p in (await kafka.describe(topic)).partitions] == [0, 0, 0]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``streamflow ARGS`` as a user would; fail the test on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


async def test_mirror_command_round_trip_embedded_to_kafka_to_embedded(
    tmp_path: Path, kafka_url: str, new_topic: Callable[[], str]
) -> None:
    topic = new_topic()
    original = fill(tmp_path / "src", topic)
    out = run_cli("mirror", str(tmp_path / "src"), kafka_url, "--topics", topic, "--from-beginning")
    assert out.stdout == f"{topic}: {len(original)} records copied\n"
    back = run_cli(
        "mirror", kafka_url, str(tmp_path / "dst"), "--topics", f"{topic},", "--from-beginning"
    )
    assert back.stdout == f"{topic}: {len(original)} records copied\n"
    assert shape(read_all(tmp_path / "dst", topic)) == shape(original)
    # Without --from-beginning only new records would be copied: none here.
    again = run_cli("mirror", kafka_url, str(tmp_path / "dst"), "--topics", topic)
    assert again.stdout == f"{topic}: 0 records copied\n"
    assert "--from-beginning" in again.stderr
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_cli("mirror", kafka_url, str(tmp_path / "dst"), "--topics", " , ")
    assert "--topics names no topic" in info.value.stderr
