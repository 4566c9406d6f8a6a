"""Run every task of a stage, alone or as a member of the stage's consumer group.

Without a group (an embedded target), a stage runs one task per partition
index. With one (a broker), the stage joins the group ``<pipeline>.<stage>``,
runs tasks for the partitions it is given and keeps heartbeating while they
work; when the group rebalances, the tasks stop, commit and the stage rejoins.
Under ``until_idle`` a member whose own tasks are drained stays in the group
until the stage's group has committed its whole input, so that the partitions
of a member that stalls or dies meanwhile are taken over rather than orphaned.
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import trio

from .completion import committed_through
from .job import Job, Revoked
from .worker import SHUTDOWN_TIMEOUT, TaskRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

    from streamflow.pipeline import Stage

logger = logging.getLogger("streamflow.runtime")

#: How often a member whose tasks are drained checks whether the whole stage is (s).
IDLE_POLL: Final = 0.2
#: Allocations between young-generation collections while stages run (CPython's default: 700).
GC_YOUNG_THRESHOLD: Final = 100_000
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def batch_sized_gc() -> Iterator[None]:
    """Let the cyclic GC run once per ~100,000 allocations while stages run, then restore it.

    A decoded batch is tens of thousands of live containers; at CPython's
    default threshold (700) the collector runs hundreds of times per batch and
    each older-generation pass walks all of them again (measured: 25-38 % of
    the CPU time of the keyed workloads). Collection still happens, just in
    steps the size of a batch. Nested and concurrent uses share one setting.
    """
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.set_threshold(max(GC_YOUNG_THRESHOLD, _gc_saved[0]), *_gc_saved[1:])
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)


async def run_stage(job: Job, stage: Stage) -> None:
    """Run every task of *stage* until cancelled (or drained under ``until_idle``)."""
    try:
        with batch_sized_gc():
            if job.use_groups and any(i.topic is not None for i in stage.inputs):
                await _run_stage_in_group(job, stage)
            else:
                async with trio.open_nursery() as nursery:
                    for partition in range(job.layout.tasks[stage.name]):
                        nursery.start_soon(TaskRunner(job, stage, partition).run)
    finally:
        job.done[stage.name].set()


async def _run_stage_in_group(job: Job, stage: Stage) -> None:
    transport = job.transport
    group = f"{job.plan.pipeline.name}.{stage.name}"
    topics = [i.topic for i in stage.inputs if i.topic is not None]
    primary = max(topics, key=lambda t: job.layout.topic_partitions[t])
    member_id: str | None = None
    try:
        while True:
            assignment = await transport.join_group(
                group, [primary], member_id=member_id, session_timeout_ms=job.session_timeout_ms
            )
            member_id = assignment.member_id
            member = (member_id, assignment.generation)
            partitions = sorted({p for _, p in assignment.partitions})
            logger.info("%s: member %s runs partitions %s", group, member_id, partitions)
            rejoin = False
            try:
                async with trio.open_nursery() as outer:
                    revoked = trio.CancelScope()

                    async def heartbeat(revoked: trio.CancelScope, member: tuple[str, int]) -> None:
                        nonlocal rejoin
                        # Heartbeats go on while the tasks finish their batch and commit,
                        # so the group waits for those commits instead of dropping us.
                        while True:
                            await trio.sleep(job.session_timeout_ms / 3000)
                            if not await transport.heartbeat(group, *member):
                                rejoin = True
                                revoked.cancel()

                    outer.start_soon(heartbeat, revoked, member)
                    with revoked:
                        async with trio.open_nursery() as tasks:
                            for p in partitions:
                                tasks.start_soon(TaskRunner(job, stage, p, member).run)
                        if not job.until_idle:
                            await trio.sleep_forever()
                        # Our share is done; stay in the group until every member's is, so
                        # that the partitions of a peer that dies now come to us.
                        await _wait_committed_through(job, stage)
                    outer.cancel_scope.cancel()
            except* Revoked:
                rejoin = True
            if not rejoin or (job.until_idle and await committed_through(job, stage)):
                return
            logger.info("%s: rebalancing", group)
    finally:
        if member_id is not None:
            with trio.move_on_after(SHUTDOWN_TIMEOUT, shield=True):
                try:
                    await transport.leave_group(group, member_id)
                except Exception as exc:  # leaving is best effort: the session expires anyway
                    logger.info("%s: leave_group failed (%s)", group, exc)


async def _wait_committed_through(job: Job, stage: Stage) -> None:
    """Return once every member of *stage*'s group is done (a peer's commit has no event: poll)."""
    while True:
        if await committed_through(job, stage):
            return
        await trio.sleep(IDLE_POLL)
