"""Run the log's housekeeping in the background: fsync intervals, retention, compaction."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from streamflow.errors import LogClosed, StreamflowError

if TYPE_CHECKING:
    from .directory import Log

logger = logging.getLogger("streamflow.log")


async def run_cleaner(
    log: Log,
    *,
    interval: float = 1.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every *interval* seconds, fsync due partitions, apply retention, compact.

    Each step runs in a worker thread (``trio.to_thread.run_sync``), one call per
    step, so the trio loop never blocks on disk. A failure of one step is logged
    and the loop goes on; the task returns when the log is closed. Cancel it to
    stop; a step already running in its thread finishes first.
    """
    task_status.started()
    while True:
        try:
            await trio.to_thread.run_sync(log.sync_due)
            await trio.to_thread.run_sync(log.enforce_retention)
            for topic in await trio.to_thread.run_sync(log.compacted_topics):
                await trio.to_thread.run_sync(log.compact, topic)
        except LogClosed:
            return
        except (StreamflowError, OSError):
            logger.exception("log cleaner step failed; retrying in %.1f s", interval)
        await trio.sleep(interval)
