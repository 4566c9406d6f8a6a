"""Pipelines written for the embedded log run unchanged on a Kafka cluster."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import trio

from streamflow.errors import InvalidConfig
from streamflow.log.client import connect
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


async def test_exactly_once_on_kafka_is_refused_not_weakened(
    kafka_url: str, new_topic: Callable[[], str], tmp_path: Path
) -> None:
    prefix = new_topic()
    await produce(kafka_url, f"{prefix}-payments", payments(10), partitions=1)
    with trio.fail_after(RUN_TIMEOUT), pytest.raises(InvalidConfig, match="transactions"):
        await run_async(stateless(prefix), kafka_url, until_idle=True, processing="exactly_once")
    async with connect(kafka_url) as client:
        assert f"{prefix}-large" not in await client.topics()  # refused before any work
