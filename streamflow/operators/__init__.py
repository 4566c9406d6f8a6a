"""Operators: batch-at-a-time steps of a stage (stateless, aggregates, windows, joins)."""

from __future__ import annotations

from .base import Item, Operator, StateView, TaskContext

__all__ = ["Item", "Operator", "StateView", "TaskContext"]
