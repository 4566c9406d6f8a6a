from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import streamflow
from streamflow import Pipeline, windows
from streamflow.runtime import run_async
from streamflow.runtime.metrics import (
    RATE_WINDOW,
    JobMetrics,
    render_prometheus,
    run_metrics_server,
    run_progress,
)
from streamflow.state import RestoreProgress

if TYPE_CHECKING:
    from pathlib import Path


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def labels(stage: str, partition: int, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({"job": "fraud", "stage": stage, "partition": str(partition), **extra}.items())
    )


async def test_batches_add_up_and_rates_follow_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = JobMetrics("fraud")
    task = metrics.task("s0", 1)
    assert metrics.task("s0", 1) is task
    for _ in range(10):
        task.record_batch(records_in=100, records_out=40)
        await trio.sleep(0.5)
    task.record_batch(records_in=100, records_out=40)

    assert (task.records_in, task.records_out) == (1100, 440)
    rate_in, rate_out = task.rates()
    assert rate_in == pytest.approx(200.0, rel=0.2)  # 100 records every 0.5 s
    assert rate_out == pytest.approx(80.0, rel=0.2)
    await trio.sleep(3 * RATE_WINDOW)
    assert task.rates() == (0.0, 0.0)  # idle: the rate falls to zero


async def test_prometheus_text_has_every_metric_per_task() -> None:
    metrics = JobMetrics("fraud")
    first = metrics.task("s0", 0)
    first.record_batch(500, 500)
    first.lag = 250
    second = metrics.task("s1", 3)
    second.record_batch(200, 7)
    second.late_records, second.errors, second.state_bytes = 3, 1, 1 << 20
    second.on_restore(
        RestoreProgress("spend", restored=40, total=100, records_per_s=1.0, done=False)
    )

    found = samples(render_prometheus(metrics))

    assert found[("streamflow_records_in_total", labels("s0", 0))] == 500
    assert found[("streamflow_records_out_total", labels("s1", 3))] == 7
    assert found[("streamflow_consumer_lag", labels("s0", 0))] == 250
    assert found[("streamflow_late_records_total", labels("s1", 3))] == 3
    assert found[("streamflow_errors_total", labels("s1", 3))] == 1
    assert found[("streamflow_state_bytes", labels("s1", 3))] == 1 << 20
    assert found[("streamflow_restore_done", labels("s1", 3, store="spend"))] == 40
    assert found[("streamflow_restore_total", labels("s1", 3, store="spend"))] == 100
    assert ("streamflow_records_in_per_second", labels("s0", 0)) in found


async def http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


async def test_metrics_server_answers_scrapes_over_http(nursery: trio.Nursery) -> None:
    metrics = JobMetrics("fraud")
    metrics.task("s0", 0).record_batch(12, 3)
    with trio.fail_after(30):
        port = await nursery.start(run_metrics_server, metrics, 0)
        reply = await http_get(port, "/metrics")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK")
        assert samples(body)[("streamflow_records_in_total", labels("s0", 0))] == 12

        metrics.task("s0", 0).record_batch(8, 0)  # a scrape sees the current values
        body = (await http_get(port, "/metrics")).partition(b"\r\n\r\n")[2]
        assert samples(body)[("streamflow_records_in_total", labels("s0", 0))] == 20

        assert (await http_get(port, "/nope")).startswith(b"HTTP/1.0 404")


async def test_progress_logs_plain_lines_when_not_a_terminal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamflow.runtime")
    metrics = JobMetrics("fraud")
    task = metrics.task("s0", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_progress(
                metrics, interval=5.0, terminal=False, task_status=task_status
            )
        )
        task.record_batch(300, 300)
        task.lag = 700
        await trio.sleep(5.5)
        task.record_batch(700, 700)
        task.lag = 0
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "streamflow.runtime"]
    assert lines == [
        "fraud: s0 300/1000 records (1 task(s), lag 700)",
        "fraud: s0 1000/1000 records (1 task(s), lag 0)",  # the final line at the end
    ]


async def test_progress_draws_bars_on_a_terminal(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = JobMetrics("fraud")
    metrics.task("s0", 0).record_batch(30, 30)
    metrics.task("s0", 0).lag = 10
    metrics.task("s1", 0).on_restore(RestoreProgress("spend", 5, 20, 1.0, False))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_progress(metrics, terminal=True, task_status=task_status)
        )
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    drawn = capsys.readouterr().err
    assert "stage s0" in drawn
    assert "30/40" in drawn
    assert "restore spend[0]" in drawn
    assert "5/20" in drawn


async def test_a_run_fills_the_metrics_of_every_stage(tmp_path: Path) -> None:
    pipeline = Pipeline("m")
    (
        pipeline.source("in", timestamp=lambda v: v["ts"])
        .key_by(lambda v: v["k"])
        .window(windows.tumbling(ms=1_000))
        .count("per-second")
        .sink("out")
    )
    values = [{"k": i % 3, "ts": i * 10} for i in range(500)]
    values.append({"k": 0, "ts": 0})  # far behind the watermark by now: late
    with trio.fail_after(60):
        async with streamflow.connect(tmp_path) as client:
            await client.create_topic("in", partitions=1)
            async with client.producer() as producer:
                await producer.send_many("in", values)
        metrics = JobMetrics("m")
        await run_async(pipeline, tmp_path, until_idle=True, metrics=metrics)

    stages = metrics.stages()
    assert (stages["s0"].records_in, stages["s0"].records_out) == (501, 501)
    windows_closed = len({(v["k"], v["ts"] // 1_000) for v in values[:-1]})
    assert stages["s1"].records_in == 501
    assert stages["s1"].late_records == 1
    assert stages["s1"].records_out == windows_closed + 1  # the late record goes to m.late
    assert stages["s0"].lag == stages["s1"].lag == 0
    [task] = [t for t in metrics.tasks() if t.stage == "s1"]
    assert task.state_bytes > 0
    assert task.restores["per-second"].finished
