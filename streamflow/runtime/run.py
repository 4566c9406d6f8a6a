"""Start a pipeline on a target: check and create its topics, then run every stage.

``run`` is the blocking entry point (it owns a ``trio.run``), ``run_async``
the one to use inside trio, and ``run_job_file`` what ``streamflow run JOB.py``
calls (one process, or several sharing the job through a broker).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from streamflow.errors import (
    InvalidConfig,
    PipelineError,
    StreamflowError,
    TopicExists,
    UnknownTopic,
)
from streamflow.pipeline import load_job, plan, resolve

from .job import Job
from .metrics import JobMetrics, run_metrics_server, run_progress
from .stage import run_stage

if TYPE_CHECKING:
    import os

    from streamflow.log import Transport
    from streamflow.pipeline import Layout, Pipeline, Plan

logger = logging.getLogger("streamflow.runtime")

Processing = Literal["at_least_once", "exactly_once"]
PROCESSING: Final = ("at_least_once", "exactly_once")


def is_url(target: str | os.PathLike[str]) -> bool:
    """Return True when *target* names a broker rather than a directory.

    >>> is_url("tcp://127.0.0.1:7070"), is_url("data")
    (True, False)
    """
    return isinstance(target, str) and "://" in target


def default_state_dir(target: str | os.PathLike[str], pipeline: str) -> Path:
    """Return the job's state directory for *target*.

    ``<dir>/state/<pipeline>`` for a log directory, else
    ``./streamflow-state/<pipeline>``.
    """
    if is_url(target):
        return Path("streamflow-state") / pipeline
    return Path(target) / "state" / pipeline


async def _ensure(transport: Transport, topic: str, partitions: int, **config: Any) -> int:
    try:
        await transport.create_topic(topic, partitions=partitions, **config)
    except TopicExists:
        pass
    return len((await transport.describe(topic)).partitions)


async def prepare_topics(transport: Transport, the_plan: Plan) -> Layout:
    """Check the source topics and create the internal and sink topics that are missing.

    Raises:
        UnknownTopic: a source topic does not exist (the message names the source).
        PipelineError: a repartition topic exists with another partition count
            than the job's parallelism.
    """
    pipeline = the_plan.pipeline
    counts: dict[str, int] = {}
    for node in pipeline.nodes:
        if node.source is None:
            continue
        for topic in node.source.topics:
            try:
                counts[topic] = len((await transport.describe(topic)).partitions)
            except UnknownTopic as exc:
                exc.args = (
                    f"{node.label} reads topic {topic!r}, which does not exist; create it "
                    "first (streamflow topics create) or fix the name",
                )
                raise
    parallelism = resolve(the_plan, counts).parallelism
    for topic in the_plan.repartition_topics:
        have = await _ensure(transport, topic, parallelism, internal=True)
        if have != parallelism:
            raise PipelineError(
                f"internal topic {topic} has {have} partitions but the job's parallelism is "
                f"{parallelism}; run with the same parallelism, or delete the job's "
                "internal topics and state to start over"
            )
        counts[topic] = have
    for topic in the_plan.sink_topics:
        if topic not in counts:
            counts[topic] = await _ensure(transport, topic, parallelism)
    if pipeline.on_error == "dead_letter":
        await _ensure(transport, pipeline.dead_letter_topic, 1)
    if any(n.windowed for n in pipeline.nodes):
        await _ensure(transport, pipeline.late_topic, 1)
    return resolve(the_plan, counts)


async def run_async(
    pipeline: Pipeline,
    target: str | os.PathLike[str],
    *,
    until_idle: bool = False,
    processing: Processing = "at_least_once",
    state_dir: str | os.PathLike[str] | None = None,
    commit_interval_ms: int = 1000,
    session_timeout_ms: int = 10_000,
    metrics: JobMetrics | None = None,
    metrics_port: int | None = None,
    progress: bool = False,
    handoff: bool = True,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Layout] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run *pipeline* on *target* inside trio; see ``run``.

    Reports the resolved ``Layout`` through ``task_status`` once the topics
    are ready. Setting *stop* ends the run gracefully: the tasks stop at their
    next fetch, append what they hold, commit and checkpoint, while the
    connection to the target stays open for it. Cancelling the call instead
    stops at once; with an embedded target the final commits still run
    (shielded), with a broker they may not reach it.

    The runtime counts what every task does in *metrics* (a fresh
    ``JobMetrics`` when *metrics_port* or *progress* asks for one);
    *metrics_port* serves it to Prometheus on ``127.0.0.1:PORT/metrics`` (0:
    any free port, logged), and *progress* shows progress bars on a terminal,
    else a log line every 5 s (see ``streamflow.runtime.metrics``).

    *handoff* False makes every stage read its repartition input back from
    the log, even when the batch was written by this process (see
    ``streamflow.runtime.handoff``; the results are the same either way).
    """
    if processing not in PROCESSING:
        raise InvalidConfig("processing", processing, "'at_least_once' or 'exactly_once'")
    if not isinstance(commit_interval_ms, int) or commit_interval_ms < 1:
        raise InvalidConfig("commit_interval_ms", commit_interval_ms, "an int >= 1")
    the_plan = plan(pipeline)
    from streamflow.log.client import connect

    async with connect(target) as client:
        transport = client.transport
        layout = await prepare_topics(transport, the_plan)
        job = Job(
            transport=transport,
            plan=the_plan,
            layout=layout,
            processing=processing,
            until_idle=until_idle,
            state_dir=Path(state_dir)
            if state_dir is not None
            else default_state_dir(target, pipeline.name),
            commit_interval_ms=commit_interval_ms,
            use_groups=is_url(target),
            session_timeout_ms=session_timeout_ms,
            metrics=metrics,
            handoff=handoff,
        )
        if job.metrics is None and (metrics_port is not None or progress):
            job.metrics = JobMetrics(pipeline.name)
        job.done = {stage.name: trio.Event() for stage in the_plan.stages}
        logger.info(
            "pipeline %s: %d stage(s), parallelism %d, %s",
            pipeline.name,
            len(the_plan.stages),
            layout.parallelism,
            processing,
        )
        try:
            async with trio.open_nursery() as outer:
                if stop is not None:
                    outer.start_soon(_cancel_on, stop, outer.cancel_scope)
                if job.metrics is not None and metrics_port is not None:
                    await outer.start(run_metrics_server, job.metrics, metrics_port)
                if job.metrics is not None and progress:
                    await outer.start(partial(run_progress, job.metrics))
                async with trio.open_nursery() as nursery:
                    for stage in the_plan.stages:
                        nursery.start_soon(run_stage, job, stage)
                    task_status.started(layout)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _single(group) from None
        finally:
            if job.handoffs is not None:
                logger.info(
                    "pipeline %s: %d repartition record(s) handed over in process",
                    pipeline.name,
                    job.handoffs.records_taken,
                )


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one meaningful error of a nursery failure (else the group)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    walk(group)
    if not leaves:
        return group
    streamflow_errors = [e for e in leaves if isinstance(e, StreamflowError)]
    if len(leaves) == 1 or len(streamflow_errors) == len(leaves):
        return leaves[0]
    return group


def run(
    pipeline: Pipeline,
    target: str | os.PathLike[str],
    until_idle: bool = False,
    processing: Processing = "at_least_once",
    **options: Any,
) -> None:
    """Run *pipeline* on a log directory or a broker URL; blocks until it ends.

    Blocking (owns a ``trio.run``). SIGINT and SIGTERM stop it cleanly: every
    task finishes its batch, commits its offsets and checkpoints its state.

    Args:
        pipeline: The pipeline to run.
        target: A log directory (embedded) or ``tcp://host:port``.
        until_idle: Return once all input present is processed (sources at
            their end offsets, repartition topics drained), after flushing
            open windows and a final checkpoint.
        processing: ``"at_least_once"`` or ``"exactly_once"``.
        **options: ``state_dir``, ``commit_interval_ms``, ``session_timeout_ms``,
            ``metrics``, ``metrics_port``, ``progress``, ``handoff`` (see ``run_async``).

    Raises:
        OperatorError: a user function raised and ``on_error`` is ``"stop"``.
        UnknownTopic: a source topic does not exist.
        PipelineError: the pipeline is built wrongly.
    """
    trio.run(_run_until_signal, pipeline, target, until_idle, processing, options)


async def _run_until_signal(
    pipeline: Pipeline,
    target: str | os.PathLike[str],
    until_idle: bool,
    processing: Processing,
    options: dict[str, Any],
) -> None:
    stop = trio.Event()

    async def main(scope: trio.CancelScope) -> None:
        await run_async(
            pipeline, target, until_idle=until_idle, processing=processing, stop=stop, **options
        )
        scope.cancel()

    async def on_signal() -> None:
        try:
            receiver = trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        except RuntimeError:  # not the main thread: no signal handling
            return
        with receiver as signals:
            async for signum in signals:
                logger.info("signal %d: stopping after the current batch", signum)
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await main(nursery.cancel_scope)


def run_job_file(
    path: str | os.PathLike[str],
    target: str,
    until_idle: bool = False,
    processes: int = 1,
    **options: Any,
) -> None:
    """Run the job in *path* (a module with a ``pipeline``); what ``streamflow run`` does.

    Blocking. With *processes* > 1, starts that many worker processes of the
    job (they share it through the broker's groups) and waits for them;
    SIGINT and SIGTERM are passed on.

    Raises:
        InvalidConfig: *processes* > 1 with a log directory (one process at a
            time opens a directory; run ``streamflow broker`` to share it).
        PipelineError: the job file has no ``pipeline``.
        StreamflowError: a worker process failed.
    """
    if processes < 1:
        raise InvalidConfig("processes", processes, "an int >= 1")
    if processes == 1:
        run(load_job(path), str(target), until_idle=until_idle, **options)
        return
    if not is_url(str(target)):
        raise InvalidConfig(
            "processes",
            processes,
            "1 with a log directory; serve it with `streamflow broker` and pass tcp://HOST:PORT",
        )
    load_job(path)  # fail here, once, if the job is broken
    options.pop("progress", None)  # many processes' bars would garble the terminal
    metrics_port = options.pop("metrics_port", None)
    command = [sys.executable, "-m", "streamflow.runtime", str(path), str(target)]
    if until_idle:
        command.append("--until-idle")
    for name, value in options.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]

    def child_command(i: int) -> list[str]:
        if metrics_port is None:
            return command
        return [*command, "--metrics-port", str(metrics_port + i if metrics_port else 0)]

    children = [subprocess.Popen(child_command(i)) for i in range(processes)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if failed:
        raise StreamflowError(
            f"{len(failed)} of {processes} worker processes failed (exit status {failed}); "
            "see their output above"
        )
