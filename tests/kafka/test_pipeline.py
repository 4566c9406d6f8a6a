"""Pipelines written for the embedded log run unchanged on a Kafka cluster."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import trio

from streamflow.log import Columns
from streamflow.log.client import connect
from streamflow.log.transport import Transactional
from streamflow.runtime import run_async
from tests.runtime.helpers import produce, read

from .jobs import payments, stateless, windowed

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from streamflow import Pipeline, Record

pytestmark = pytest.mark.kafka

RUN_TIMEOUT = 60


def windows_of(records: list[Record]) -> list[tuple[Any, ...]]:
    """Return window results as sortable tuples."""
    return sorted(
        (r.key, r.value["start"], r.value["end"], tuple(sorted(r.value["value"].items())))
        for r in records
    )


async def run_both(
    job: Pipeline, kafka_url: str, embedded: Path, state: Path, inputs: list[Any], topic: str
) -> None:
    """Produce *inputs* to *topic* on both targets and run *job* on each until idle."""
    await produce(kafka_url, topic, inputs, partitions=1)
    await produce(embedded, topic, inputs, partitions=1)
    with trio.fail_after(RUN_TIMEOUT):
        await run_async(job, kafka_url, until_idle=True, state_dir=state, session_timeout_ms=6000)
        await run_async(job, embedded, until_idle=True)


async def test_stateless_two_stage_job_gives_the_embedded_results(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    job = stateless(prefix)
    data = payments(2_000)
    await run_both(job, kafka_url, tmp_path / "log", tmp_path / "state", data, f"{prefix}-payments")
    on_kafka = await read(kafka_url, f"{prefix}-large")
    embedded = await read(tmp_path / "log", f"{prefix}-large")
    expected = sorted(v["i"] for v in data if v["cents"] > 10_000)
    assert sorted(r.value["i"] for r in on_kafka) == expected
    assert sorted((r.partition, r.key, r.value["i"]) for r in on_kafka) == sorted(
        (r.partition, r.key, r.value["i"]) for r in embedded
    )


async def test_window_job_with_state_on_kafka_gives_the_embedded_results(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    job = windowed(prefix)
    data = payments(3_000)
    await run_both(job, kafka_url, tmp_path / "log", tmp_path / "state", data, f"{prefix}-payments")
    got = windows_of(await read(kafka_url, f"{prefix}-totals"))
    assert got == windows_of(await read(tmp_path / "log", f"{prefix}-totals"))
    assert sum(dict(v)["n"] for *_, v in got) == len(data)
    # The state lives in LMDB here, and its changelog on the cluster (compacted).
    assert any((tmp_path / "state").iterdir())
    async with connect(kafka_url) as client:
        desc = await client.describe(f"{prefix}-w2.spend.changelog")
    assert desc.config["cleanup_policy"] == "compact"
    assert sum(p.end_offset for p in desc.partitions) > 0


async def test_state_is_restored_from_the_changelog_on_the_cluster(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    job = windowed(prefix, counts=True)
    topic = f"{prefix}-payments"
    state = tmp_path / "state"
    await run_both(job, kafka_url, tmp_path / "log", state, payments(1_500), topic)
    shutil.rmtree(state)
    # the windows still open at the end of the first run need the restored state
    await run_both(job, kafka_url, tmp_path / "log", state, payments(1_500, 1_500), topic)
    assert any(state.iterdir())
    got = windows_of(await read(kafka_url, f"{prefix}-totals"))
    assert got == windows_of(await read(tmp_path / "log", f"{prefix}-totals"))
    # The running counts carry on from the restored state: one update per input, none twice.
    counts = await read(kafka_url, f"{prefix}-counts")
    assert len(counts) == 3_000
    final: dict[int, int] = {}
    for r in counts:
        final[r.key] = max(final.get(r.key, 0), r.value)
    assert final == Counter(v["user"] for v in payments(3_000))


async def test_exactly_once_window_job_on_kafka_gives_the_embedded_results(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    job = windowed(prefix, counts=True)
    data = payments(3_000)
    topic = f"{prefix}-payments"
    await produce(kafka_url, topic, data, partitions=1)
    await produce(tmp_path / "log", topic, data, partitions=1)
    with trio.fail_after(RUN_TIMEOUT):
        await run_async(
            job,
            kafka_url,
            until_idle=True,
            processing="exactly_once",
            state_dir=tmp_path / "state",
            session_timeout_ms=6000,
        )
        await run_async(job, tmp_path / "log", until_idle=True, processing="exactly_once")
    got = windows_of(await read(kafka_url, f"{prefix}-totals"))
    assert got == windows_of(await read(tmp_path / "log", f"{prefix}-totals"))
    assert sum(dict(v)["n"] for *_, v in got) == len(data)
    counts = await read(kafka_url, f"{prefix}-counts")
    assert sorted((r.key, r.value) for r in counts) == sorted(
        (r.key, r.value) for r in await read(tmp_path / "log", f"{prefix}-counts")
    )
    async with connect(kafka_url) as client:
        sink = await client.describe(f"{prefix}-totals")
    # written in transactions: every commit left a marker after the records
    assert sum(p.end_offset for p in sink.partitions) > len(got)


async def append_aborted(
    kafka_url: str, topic: str, partition: int, keys: list[Any], values: list[Any]
) -> None:
    """Append records to *topic* in a transaction that is then aborted."""
    async with connect(kafka_url) as client:
        transport = client.transport
        assert isinstance(transport, Transactional)
        txn = await transport.open_transaction(f"{topic}.{partition}.aborted")
        try:
            await txn.append(topic, partition, Columns(keys, values))
            await txn.abort()
        finally:
            await txn.aclose()


async def test_aborted_records_reach_neither_a_stage_nor_a_restore(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    job = windowed(prefix, counts=True)
    topic = f"{prefix}-payments"
    state = tmp_path / "state"
    first, second = payments(1_500), payments(1_500, 1_500)
    bogus = payments(300, 1_000_000)
    # the source holds an aborted transaction between committed records
    await produce(kafka_url, topic, first[:700], partitions=1)
    await append_aborted(kafka_url, topic, 0, [None] * len(bogus), bogus)
    await produce(kafka_url, topic, first[700:], partitions=1)
    await produce(tmp_path / "log", topic, first, partitions=1)

    async def run_both() -> None:
        with trio.fail_after(RUN_TIMEOUT):
            await run_async(
                job,
                kafka_url,
                until_idle=True,
                processing="exactly_once",
                state_dir=state,
                session_timeout_ms=6000,
            )
            await run_async(job, tmp_path / "log", until_idle=True, processing="exactly_once")

    await run_both()
    # every changelog partition gets an aborted transaction of wrong values for its keys
    changelog = f"{prefix}-w2.payments.changelog"
    stored = await read(kafka_url, changelog)
    assert stored
    for partition in {r.partition for r in stored}:
        mine = [r for r in stored if r.partition == partition]
        await append_aborted(
            kafka_url, changelog, partition, [r.key for r in mine], [10**6 for _ in mine]
        )
    shutil.rmtree(state)
    await produce(kafka_url, topic, second, partitions=1)
    await produce(tmp_path / "log", topic, second, partitions=1)
    await run_both()  # restores from the changelog
    got = windows_of(await read(kafka_url, f"{prefix}-totals"))
    assert got == windows_of(await read(tmp_path / "log", f"{prefix}-totals"))
    assert all(dict(v)["ids"] < 1_000_000 for *_, v in got)  # no bogus payment in a window
    counts = await read(kafka_url, f"{prefix}-counts")
    assert len(counts) == len(first) + len(second)
    final: dict[int, int] = {}
    for r in counts:
        final[r.key] = max(final.get(r.key, 0), r.value)
    assert final == Counter(v["user"] for v in first + second)
