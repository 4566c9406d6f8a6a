"""The runtime: tasks, workers, checkpoints, and ``run``."""

from __future__ import annotations

from .job import Job, producer_id
from .run import run, run_async, run_job_file
from .stage import run_stage
from .task import Outbox, TaskEngine
from .worker import TaskRunner

__all__ = [
    "Job",
    "Outbox",
    "TaskEngine",
    "TaskRunner",
    "producer_id",
    "run",
    "run_async",
    "run_job_file",
    "run_stage",
]
