"""Keep a table of the latest value per key and enrich a stream with it.

``ToTable(name, store)`` writes each record into its store (a ``None`` value
deletes the key) and passes the record on unchanged. ``TableJoin(name,
table_store, fn)`` reads that store: for each stream record it emits
``(key, fn(value, table_value_or_None), ts)`` (a left join: every stream
record gives one output). The table and the stream are co-partitioned by
key, and the ``ToTable`` that fills the store runs in the same task: either
earlier in the same stage (``stream.to_table(name)``), or fed by the table's
topic (``table.from_topic``) read by that task next to the stream.

The join owns no store (``store`` is ``None``); it names the table's store in
``table_store``, which the task must open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Item, StateView, TaskContext

__all__ = ["TableJoin", "ToTable"]


class ToTable:
    """Store the latest value per key; pass each record on. One task at a time."""

    def __init__(self, name: str, store: str) -> None:
        self.name = name
        self.store: str | None = store
        self._view: StateView | None = None

    def open(self, ctx: TaskContext) -> None:
        """Bind to the task's state store."""
        assert self.store is not None
        self._view = ctx.state(self.store)

    def process(self, items: list[Item]) -> list[Item]:
        """Upsert (or, for a ``None`` value, delete) each key; return *items* unchanged."""
        view = self._view
        if view is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        for key, value, _ in items:
            if value is None:
                view.delete(key)
            else:
                view.put(key, value)
        return items

    def on_watermark(self, watermark: int) -> list[Item]:
        """Do nothing: a table does not depend on event time."""
        return []

    def finish(self) -> list[Item]:
        """Do nothing."""
        return []


class TableJoin:
    """Enrich each record with the table's value for its key. One task at a time.

    Args:
        name: The operator's name (errors, metrics).
        table_store: The store a ``ToTable`` in the same task keeps.
        fn: ``fn(value, table_value_or_None) -> new value``.
    """

    def __init__(self, name: str, table_store: str, fn: Callable[[Any, Any], Any]) -> None:
        self.name = name
        self.store: str | None = None
        self.table_store = table_store
        self._fn = fn
        self._view: StateView | None = None

    def open(self, ctx: TaskContext) -> None:
        """Bind to the table's state store."""
        self._view = ctx.state(self.table_store)

    def process(self, items: list[Item]) -> list[Item]:
        """Return ``(key, fn(value, table value or None), ts)`` for each record."""
        view = self._view
        if view is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        fn = self._fn
        return [(key, fn(value, view.get(key)), ts) for key, value, ts in items]

    def on_watermark(self, watermark: int) -> list[Item]:
        """Do nothing: the join is not timed."""
        return []

    def finish(self) -> list[Item]:
        """Do nothing."""
        return []
