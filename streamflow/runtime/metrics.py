"""Count what a running job does, per stage and partition, for Prometheus and the terminal.

The runtime updates a ``TaskMetrics`` once per batch (never per record):
records in and out, late records, errors, and now and then the consumer lag,
the state store size and restore progress. ``JobMetrics`` holds every task's
metrics; ``render_prometheus`` turns them into the Prometheus text format and
``run_metrics_server`` serves that on ``GET /metrics`` (what ``streamflow run
--metrics-port`` starts). ``run_progress`` shows a run's progress: rich
progress bars on a terminal, a plain log line every few seconds otherwise.

Exported metrics (labels ``job``, ``stage``, ``partition``; restore gauges
also ``store``):

=====================================  =======  ==================================
``streamflow_records_in_total``        counter  records the task consumed
``streamflow_records_out_total``       counter  records the task wrote downstream
``streamflow_records_in_per_second``   gauge    input rate over the last seconds
``streamflow_records_out_per_second``  gauge    output rate over the last seconds
``streamflow_late_records_total``      counter  records later than their window
``streamflow_errors_total``            counter  records a user function failed on
``streamflow_consumer_lag``            gauge    records in the input not yet read
``streamflow_state_bytes``             gauge    bytes of the task's LMDB stores
``streamflow_restore_done``            gauge    changelog offsets restored so far
``streamflow_restore_total``           gauge    changelog offsets to restore
=====================================  =======  ==================================
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.registry import Collector

    from streamflow.state import RestoreProgress

logger = logging.getLogger("streamflow.runtime")

#: Seconds over which the per-second rates are measured.
RATE_WINDOW: Final = 2.0
#: Bytes of an HTTP request head the metrics server reads before answering.
MAX_REQUEST_BYTES: Final = 8192


@dataclass(slots=True)
class RestoreState:
    """How far one store's rebuild from its changelog has come."""

    done: int = 0
    total: int = 0
    finished: bool = False


@dataclass(slots=True)
class TaskMetrics:
    """The metrics of one task (one stage over one input partition). One trio thread."""

    stage: str
    partition: int
    records_in: int = 0
    records_out: int = 0
    late_records: int = 0
    errors: int = 0
    lag: int = 0
    state_bytes: int = 0
    restores: dict[str, RestoreState] = field(default_factory=dict)
    _window_start: float = 0.0
    _window_in: int = 0
    _window_out: int = 0
    _rate_in: float = 0.0
    _rate_out: float = 0.0
    _rate_at: float = 0.0

    def record_batch(self, records_in: int, records_out: int) -> None:
        """Count one processed batch; call once per batch, inside trio."""
        self.records_in += records_in
        self.records_out += records_out
        now = trio.current_time()
        if self._window_start == 0.0:
            self._window_start = now
        self._window_in += records_in
        self._window_out += records_out
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW:
            self._rate_in = self._window_in / elapsed
            self._rate_out = self._window_out / elapsed
            self._rate_at = now
            self._window_start, self._window_in, self._window_out = now, 0, 0

    def rates(self) -> tuple[float, float]:
        """Return records in and out per second, 0 once no batch came for a while.

        Call inside trio (it reads ``trio.current_time()``).
        """
        if trio.current_time() - self._rate_at > 2 * RATE_WINDOW:
            return 0.0, 0.0
        return self._rate_in, self._rate_out

    def on_restore(self, progress: RestoreProgress) -> None:
        """Record a store's restore progress (a ``TaskState.open`` ``on_progress`` callback)."""
        state = self.restores.setdefault(progress.store, RestoreState())
        state.done, state.total, state.finished = progress.restored, progress.total, progress.done


class JobMetrics:
    """Every task's metrics of one running job. Updated from one trio thread.

    Args:
        job: The pipeline's name (the ``job`` label).
    """

    def __init__(self, job: str) -> None:
        self.job = job
        self._tasks: dict[tuple[str, int], TaskMetrics] = {}

    def task(self, stage: str, partition: int) -> TaskMetrics:
        """Return the metrics of task ``(stage, partition)``, made on first use."""
        found = self._tasks.get((stage, partition))
        if found is None:
            found = self._tasks[(stage, partition)] = TaskMetrics(stage, partition)
        return found

    def tasks(self) -> list[TaskMetrics]:
        """Return every task's metrics, ordered by stage then partition."""
        return [self._tasks[key] for key in sorted(self._tasks)]

    def stages(self) -> dict[str, StageTotals]:
        """Return the totals per stage (records, lag, late records, errors)."""
        totals: dict[str, StageTotals] = {}
        for task in self.tasks():
            total = totals.setdefault(task.stage, StageTotals(task.stage))
            total.tasks += 1
            total.records_in += task.records_in
            total.records_out += task.records_out
            total.lag += task.lag
            total.late_records += task.late_records
            total.errors += task.errors
        return totals


@dataclass(slots=True)
class StageTotals:
    """One stage's metrics summed over its tasks."""

    stage: str
    tasks: int = 0
    records_in: int = 0
    records_out: int = 0
    lag: int = 0
    late_records: int = 0
    errors: int = 0


class MetricsCollector:
    """A ``prometheus_client`` collector that reads a ``JobMetrics`` on each scrape.

    Call ``collect`` inside trio (the rates read ``trio.current_time()``).
    """

    def __init__(self, metrics: JobMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        """Yield one metric family per exported metric (module docstring)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["job", "stage", "partition"]
        counters = {
            "records_in": CounterMetricFamily(
                "streamflow_records_in", "Records the task consumed.", labels=labels
            ),
            "records_out": CounterMetricFamily(
                "streamflow_records_out", "Records the task wrote downstream.", labels=labels
            ),
            "late_records": CounterMetricFamily(
                "streamflow_late_records",
                "Records later than their window's close (sent to <pipeline>.late).",
                labels=labels,
            ),
            "errors": CounterMetricFamily(
                "streamflow_errors", "Records a user function failed on.", labels=labels
            ),
        }
        rate_in = GaugeMetricFamily(
            "streamflow_records_in_per_second", "Input rate over the last seconds.", labels=labels
        )
        rate_out = GaugeMetricFamily(
            "streamflow_records_out_per_second", "Output rate over the last seconds.", labels=labels
        )
        lag = GaugeMetricFamily(
            "streamflow_consumer_lag", "Input records not yet read.", labels=labels
        )
        state = GaugeMetricFamily(
            "streamflow_state_bytes", "Bytes of the task's LMDB stores.", labels=labels
        )
        store_labels = [*labels, "store"]
        restore_done = GaugeMetricFamily(
            "streamflow_restore_done", "Changelog offsets restored so far.", labels=store_labels
        )
        restore_total = GaugeMetricFamily(
            "streamflow_restore_total", "Changelog offsets to restore.", labels=store_labels
        )
        for task in self.metrics.tasks():
            values = [self.metrics.job, task.stage, str(task.partition)]
            for name, family in counters.items():
                family.add_metric(values, getattr(task, name))
            per_second_in, per_second_out = task.rates()
            rate_in.add_metric(values, per_second_in)
            rate_out.add_metric(values, per_second_out)
            lag.add_metric(values, task.lag)
            state.add_metric(values, task.state_bytes)
            for store, restore in sorted(task.restores.items()):
                restore_done.add_metric([*values, store], restore.done)
                restore_total.add_metric([*values, store], restore.total)
        yield from counters.values()
        yield from (rate_in, rate_out, lag, state, restore_done, restore_total)


def render_prometheus(metrics: JobMetrics) -> bytes:
    """Return *metrics* in the Prometheus text exposition format. Call inside trio."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = MetricsCollector(metrics)
    registry.register(collector)
    return generate_latest(registry)


async def run_metrics_server(
    metrics: JobMetrics,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` (Prometheus text format) on *host*:*port* until cancelled.

    Reports the bound port through *task_status* (useful with port 0). Any
    other path answers 404; a request head larger than 8 KiB answers 431.
    """

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in head and len(head) <= MAX_REQUEST_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
            status, body, kind = _response(head, metrics)
            reply = (
                f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            try:
                await stream.send_all(reply + body)
            except trio.BrokenResourceError:
                pass  # the scraper went away; nothing to tell it

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(answer, listeners)


def _response(head: bytes, metrics: JobMetrics) -> tuple[str, bytes, str]:
    if len(head) > MAX_REQUEST_BYTES:
        return "431 Request Header Fields Too Large", b"", "text/plain"
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or words[0] != b"GET":
        return "405 Method Not Allowed", b"use GET /metrics\n", "text/plain"
    if words[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
        return "404 Not Found", b"metrics are at /metrics\n", "text/plain"
    from prometheus_client import CONTENT_TYPE_LATEST

    return "200 OK", render_prometheus(metrics), CONTENT_TYPE_LATEST


def progress_line(metrics: JobMetrics) -> str:
    """Return a one-line summary of a run's progress, for logs.

    >>> m = JobMetrics("fraud")
    >>> m.task("s0", 0).records_in, m.task("s0", 0).lag = 900, 100
    >>> progress_line(m)
    'fraud: s0 900/1000 records (1 task(s), lag 100)'
    """
    parts = []
    for totals in metrics.stages().values():
        extra = f"lag {totals.lag}"
        if totals.late_records:
            extra += f", {totals.late_records} late"
        if totals.errors:
            extra += f", {totals.errors} errors"
        parts.append(
            f"{totals.stage} {totals.records_in}/{totals.records_in + totals.lag} records "
            f"({totals.tasks} task(s), {extra})"
        )
    for task in metrics.tasks():
        for store, restore in sorted(task.restores.items()):
            if not restore.finished:
                parts.append(f"restoring {store}[{task.partition}] {restore.done}/{restore.total}")
    return f"{metrics.job}: " + ("; ".join(parts) if parts else "starting")


async def run_progress(
    metrics: JobMetrics,
    *,
    interval: float = 5.0,
    terminal: bool | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Show the run's progress until cancelled: rich bars on a terminal, else log lines.

    Args:
        metrics: The job's metrics, updated by the runtime.
        interval: Seconds between log lines (bars refresh every 0.2 s).
        terminal: Draw bars; default: whether stderr is a terminal.
        task_status: Reports that the display has started.
    """
    if terminal is None:
        terminal = sys.stderr.isatty()
    task_status.started()
    if not terminal:
        try:
            while True:
                await trio.sleep(interval)
                logger.info("%s", progress_line(metrics))
        finally:
            logger.info("%s", progress_line(metrics))
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(stderr=True),
        auto_refresh=False,  # refreshed from this task: no thread of rich's own
    ) as progress:
        try:
            while True:
                _update_bars(progress, bars, metrics)
                await trio.sleep(0.2)
        finally:
            _update_bars(progress, bars, metrics)


def _update_bars(progress: Any, bars: dict[str, Any], metrics: JobMetrics) -> None:
    for totals in metrics.stages().values():
        name = f"stage {totals.stage}"
        if name not in bars:
            bars[name] = progress.add_task(name, total=None, note="")
        note = f"lag {totals.lag}"
        if totals.late_records:
            note += f", {totals.late_records} late"
        progress.update(
            bars[name],
            completed=totals.records_in,
            total=totals.records_in + totals.lag,
            note=note,
        )
    for task in metrics.tasks():
        for store, restore in task.restores.items():
            name = f"restore {store}[{task.partition}]"
            if name not in bars:
                bars[name] = progress.add_task(name, total=None, note="")
            progress.update(
                bars[name],
                completed=restore.done,
                total=max(restore.total, restore.done),
                note="done" if restore.finished else "",
            )
    progress.refresh()
