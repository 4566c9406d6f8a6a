from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import streamflow
from streamflow.log import partition_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

USERS = [f"u{i}" for i in range(7)]


def streamflow_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "error", "COLUMNS": "160"},
        check=False,
    )


async def fill(target: str, records: int, consumed: int) -> None:
    """Write *records* keyed payments over 3 partitions; group g reads *consumed* and commits."""
    with trio.fail_after(60):
        async with streamflow.connect(target) as client:
            await client.create_topic("payments", partitions=3)
            await client.create_topic("alerts", partitions=1)
            async with client.producer() as producer:
                for i in range(records):
                    await producer.send("payments", {"n": i}, key=USERS[i % len(USERS)])
            async with client.consumer("payments", group="fraud.s0") as consumer:
                seen = 0
                while seen < consumed:
                    seen += len(await consumer.poll(max_records=consumed - seen, timeout=1.0))
                await consumer.commit()


def expected_ends(records: int) -> dict[int, int]:
    ends = dict.fromkeys(range(3), 0)
    for i in range(records):
        ends[partition_for(USERS[i % len(USERS)], 3)] += 1
    return ends


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "streamflow.cli", "--data", str(tmp_path / "served")]
    process = subprocess.Popen(
        [*command, "broker", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield f"tcp://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stdout is not None
        process.stdout.close()


def test_status_prints_topic_offsets_and_group_lag_of_a_directory(tmp_path: Path) -> None:
    trio.run(fill, str(tmp_path / "data"), 40, 40)
    ends = expected_ends(40)

    shown = streamflow_cli("status", "--broker", "data", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    topic_rows = {tuple(line.split()[:4]) for line in lines if line.startswith("payments")}
    assert topic_rows == {("payments", str(p), "0", str(end)) for p, end in ends.items()}
    assert any(line.split()[:4] == ["alerts", "0", "0", "0"] for line in lines)
    rows = [line.split() for line in lines if line.startswith("fraud.s0")]
    # Membership lives in the process serving the log; this one has commits only.
    assert ["fraud.s0", "empty", "0", "-", "-"] in rows
    # Everything was read and committed: committed == end, lag 0, on every partition.
    assert sorted(row for row in rows if row[1] == "payments") == [
        ["fraud.s0", "payments", str(p), str(end), str(end), "0", "-"]
        for p, end in sorted(ends.items())
    ]


def test_status_json_over_a_broker_reports_lag_per_partition(tmp_path: Path, broker: str) -> None:
    trio.run(fill, broker, 60, 25)
    ends = expected_ends(60)

    shown = streamflow_cli("status", "--broker", broker, "--json", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    payments = next(t for t in status["topics"] if t["name"] == "payments")
    assert {p["partition"]: p["end_offset"] for p in payments["partitions"]} == ends
    [group] = status["groups"]
    assert group["name"] == "fraud.s0"
    committed = {p["partition"]: p["committed"] for p in group["partitions"]}
    assert sum(committed.values()) == 25  # the consumer committed exactly what it read
    for row in group["partitions"]:
        assert row["end_offset"] == ends[row["partition"]]
        assert row["lag"] == ends[row["partition"]] - row["committed"]
    assert group["lag"] == 60 - 25


async def test_status_shows_the_members_of_a_live_group_and_their_partitions(
    tmp_path: Path, broker: str
) -> None:
    options: dict[str, Any] = {"session_timeout_ms": 3_000, "heartbeat_interval_ms": 100}
    await fill(broker, 30, 10)
    with trio.fail_after(60):
        async with (
            streamflow.connect(broker) as client,
            client.consumer("payments", group="fraud.s0", **options) as a,
            client.consumer("payments", group="fraud.s0", **options) as b,
        ):
            async for change in a.assignments():  # a rejoins once it hears of b
                if change.partitions and len(change.partitions) < 3:
                    break
            table = await trio.to_thread.run_sync(
                lambda: streamflow_cli("status", "--broker", broker, cwd=tmp_path)
            )
            shown = await trio.to_thread.run_sync(
                lambda: streamflow_cli("status", "--broker", broker, "--json", cwd=tmp_path)
            )
            owners = {tp[1]: c.member_id for c in (a, b) for tp in c.assignment()}
            generation = b.generation

    assert table.returncode == 0, table.stderr
    members = {
        row[3]: row[4]
        for row in (line.split() for line in table.stdout.splitlines())
        if row[:3] == ["fraud.s0", "stable", str(generation)]
    }
    owned = {
        member_id: sorted(p for p, m in owners.items() if m == member_id)
        for member_id in set(owners.values())
    }
    assert members == {m: "payments[" + ",".join(map(str, ps)) + "]" for m, ps in owned.items()}
    lag_rows = [
        line.split() for line in table.stdout.splitlines() if line.startswith("fraud.s0  payments")
    ]
    assert lag_rows
    assert all(row[6] == owners[int(row[2])] for row in lag_rows)
    [group] = json.loads(shown.stdout)["groups"]
    assert (group["state"], group["generation"]) == ("stable", generation)
    assert {
        m["member_id"]: sorted(p for _, p in m["partitions"]) for m in group["members"]
    } == owned
    assert all(row["owner"] == owners[row["partition"]] for row in group["partitions"])


def test_top_once_shows_records_and_lag(tmp_path: Path, broker: str) -> None:
    trio.run(fill, broker, 30, 10)

    shown = streamflow_cli("top", "--broker", broker, "--once", "--interval", "0.1", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert f"streamflow top: {broker}" in shown.stdout
    payments = next(line for line in shown.stdout.splitlines() if " payments " in line)
    assert re.findall(r"\d+", payments)[:2] == ["3", "30"]  # partitions, records
    group = next(line for line in shown.stdout.splitlines() if "fraud.s0" in line)
    cells = [cell.strip() for cell in group.strip("│┃ ").split("│")]
    assert cells[0] == "fraud.s0"
    assert cells[3] == "20"  # lag: 30 written, 10 committed


def test_status_of_a_missing_directory_is_one_error_line(tmp_path: Path) -> None:
    shown = streamflow_cli("status", "--broker", "nowhere", cwd=tmp_path)

    assert shown.returncode == 1
    assert shown.stderr.startswith("error: no log directory at 'nowhere'")
    assert len(shown.stderr.splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def scrape(url: str) -> dict[tuple[str, str], float]:
    """records_in_total per stage, from one Prometheus scrape."""
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamflow_records_in_total":
                key = (sample.labels["stage"], sample.labels["partition"])
                found[key] = sample.value
    return found


def test_run_serves_prometheus_metrics_while_the_job_runs(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "from streamflow import Pipeline\n"
        "pipeline = Pipeline('doubler')\n"
        "pipeline.source('numbers').key_by(lambda v: v % 4).map(lambda v: v * 2).sink('doubled')\n"
    )
    trio.run(fill_numbers, str(tmp_path / "data"), 300)
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamflow.cli",
                "run",
                "job.py",
                "--broker",
                "data",
                "--metrics-port",
                "0",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=log,
        )
    try:
        url = None
        for _ in range(600):  # the job logs its metrics address once it listens
            found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", log_path.read_text())
            if found:
                url = found.group(1)
                break
            assert job.poll() is None, log_path.read_text()
            time.sleep(0.1)
        assert url is not None, log_path.read_text()
        counts: dict[tuple[str, str], float] = {}
        for _ in range(600):  # until both stages have seen all 300 records
            counts = scrape(url)
            by_stage = {
                stage: sum(v for (s, _), v in counts.items() if s == stage)
                for stage in ("s0", "s1")
            }
            if by_stage == {"s0": 300, "s1": 300}:
                break
            time.sleep(0.1)
        assert {stage for stage, _ in counts} == {"s0", "s1"}
        assert sum(v for (s, _), v in counts.items() if s == "s1") == 300
    finally:
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) == 0, log_path.read_text()


async def fill_numbers(target: str, count: int) -> None:
    with trio.fail_after(60):
        async with streamflow.connect(target) as client:
            await client.create_topic("numbers", partitions=2)
            async with client.producer() as producer:
                await producer.send_many("numbers", list(range(count)))
