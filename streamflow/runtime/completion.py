"""Tell whether a stage is done in every process of a job: ``committed_through``.

Under ``until_idle`` a stage may finish only once everything upstream of it,
in every process, has finished; a process only knows its own tasks, so the
answer is read from the groups' committed offsets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from streamflow.log import Committed
    from streamflow.pipeline import Stage

    from .job import Job

#: Commit metadata key of a stateful task that ran its end-of-input ``finish`` (``until_idle``).
FINISHED: Final = "finished"


async def committed_through(job: Job, stage: Stage) -> bool:
    """Return whether *stage* and every stage before it, in every process, are done.

    A stage is done when its group has committed the end offset of every
    partition of its input topics (a stateful stage: with the ``FINISHED``
    mark, since it emits its open windows after its input ends). Stages are
    checked from the sources down: a task commits only after its outputs are
    appended, so once a stage is done, everything it will ever write to the
    next repartition topic is there.
    """
    for name in stage.upstream:
        if not await committed_through(job, job.plan.stage(name)):
            return False
    tps = [
        (i.topic, p)
        for i in stage.inputs
        if i.topic is not None
        for p in range(job.layout.topic_partitions[i.topic])
    ]
    if not tps:
        return job.done[stage.name].is_set()
    group = f"{job.plan.pipeline.name}.{stage.name}"
    committed = await job.transport.committed(group, tps)
    for tp in tps:
        start, end = await job.transport.offsets(*tp)
        if (committed[tp].offset if tp in committed else start) < end:
            return False
        if stage.stores and not _finished(committed.get(tp)):
            return False
    return True


def _finished(commit: Committed | None) -> bool:
    return (
        commit is not None
        and isinstance(commit.metadata, dict)
        and bool(commit.metadata.get(FINISHED))
    )
