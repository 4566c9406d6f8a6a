"""Durable operator state: LMDB stores, changelog topics, checkpoints and restore."""

from __future__ import annotations

from .changelog import changelog_producer, changelog_topic
from .checkpoint import Checkpoint, checkpoint_metadata, newest_committed
from .restore import RestoreProgress
from .store import DEFAULT_MAP_SIZE, StateStore
from .task_state import TaskState, task_state_dir
from .view import CachedView

__all__ = [
    "DEFAULT_MAP_SIZE",
    "CachedView",
    "Checkpoint",
    "RestoreProgress",
    "StateStore",
    "TaskState",
    "changelog_producer",
    "changelog_topic",
    "checkpoint_metadata",
    "newest_committed",
    "task_state_dir",
]
