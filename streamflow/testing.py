"""Run a pipeline on given input records in a temporary log and return its sink topics.

The equivalent of Kafka Streams' TopologyTestDriver, with the real log and
state underneath::

    out = run_pipeline(pipeline, {"payments": [{"amount": 5}, Message(key="u1", value=...)]})
    [r.value for r in out["alerts"]]

Each source topic is created with ``pipeline.parallelism`` partitions (1 by
default: then the output, order included, is the same on every run; with
more partitions only the order across source partitions may vary), the
inputs are appended in order (keyed ``Message``s by key when there are
several partitions), the
pipeline runs with ``until_idle=True``, and every sink topic is read back in
(partition, offset) order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from streamflow.log import Columns, Message, Record
from streamflow.log.client import connect
from streamflow.log.partitioner import partition_for
from streamflow.pipeline import Pipeline, plan
from streamflow.runtime import run_async

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from streamflow.runtime.run import Processing

__all__ = ["read_topic", "run_pipeline", "run_pipeline_async"]


def run_pipeline(
    pipeline: Pipeline,
    inputs: Mapping[str, Sequence[Any]],
    *,
    processing: Processing = "at_least_once",
    directory: str | Path | None = None,
) -> dict[str, list[Record]]:
    """Run *pipeline* to completion on *inputs*; return ``{sink topic: [Record, ...]}``.

    Blocking (owns a ``trio.run``); inside trio use ``run_pipeline_async``.

    Args:
        pipeline: The pipeline under test.
        inputs: Per source topic, a list of values or ``Message``s (a
            ``Message`` carries a key and a timestamp in ms).
        processing: ``"at_least_once"`` or ``"exactly_once"``.
        directory: Log directory to use (kept afterwards); default a fresh
            temporary directory, removed afterwards.

    Raises:
        PipelineError: *inputs* names a topic the pipeline does not read, or
            the pipeline is built wrongly.
        OperatorError: a user function raised (``on_error="stop"``).
    """
    return trio.run(
        lambda: run_pipeline_async(pipeline, inputs, processing=processing, directory=directory)
    )


async def run_pipeline_async(
    pipeline: Pipeline,
    inputs: Mapping[str, Sequence[Any]],
    *,
    processing: Processing = "at_least_once",
    directory: str | Path | None = None,
) -> dict[str, list[Record]]:
    """Run *pipeline* on *inputs* inside trio; see ``run_pipeline``."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="streamflow-test-") as tmp:
            return await _run(pipeline, inputs, processing, Path(tmp))
    return await _run(pipeline, inputs, processing, Path(directory))


async def _run(
    pipeline: Pipeline,
    inputs: Mapping[str, Sequence[Any]],
    processing: Processing,
    directory: Path,
) -> dict[str, list[Record]]:
    from streamflow.errors import PipelineError

    the_plan = plan(pipeline)
    unknown = sorted(set(inputs) - set(the_plan.source_topics))
    if unknown:
        raise PipelineError(
            f"inputs name topics {unknown} that pipeline {pipeline.name!r} does not read; "
            f"its source topics are {list(the_plan.source_topics)}"
        )
    partitions = pipeline.parallelism or 1
    async with connect(directory) as client:
        transport = client.transport
        existing = set(await transport.topics())
        for topic in the_plan.source_topics:
            if topic not in existing:
                await transport.create_topic(topic, partitions=partitions)
            count = len((await transport.describe(topic)).partitions)
            batches: dict[int, list[Message]] = {}
            for i, entry in enumerate(inputs.get(topic, ())):
                message = entry if isinstance(entry, Message) else Message(None, entry)
                p = i % count if message.key is None else partition_for(message.key, count)
                batches.setdefault(p, []).append(message)
            for p, messages in sorted(batches.items()):
                columns = Columns(
                    [m.key for m in messages],
                    [m.value for m in messages],
                    [m.timestamp for m in messages],
                    [m.headers for m in messages] if any(m.headers for m in messages) else None,
                )
                await transport.append(topic, p, columns)
    await run_async(pipeline, directory, until_idle=True, processing=processing)
    async with connect(directory) as client:
        return {topic: await read_topic(client.transport, topic) for topic in the_plan.sink_topics}


async def read_topic(transport: Any, topic: str) -> list[Record]:
    """Return every record of *topic*, in (partition, offset) order."""
    out: list[Record] = []
    for info in (await transport.describe(topic)).partitions:
        position = info.start_offset
        while position < info.end_offset:
            fetched = await transport.fetch({(topic, info.partition): position}, timeout=0)
            batches = fetched.get((topic, info.partition), [])
            if not batches:
                break
            for batch in batches:
                out.extend(batch.records(topic, info.partition))
                position = batch.next_offset
    return out
