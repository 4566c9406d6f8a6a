"""Run operators against real LMDB-backed state without a log (operator tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamflow.state.store import StateStore
from streamflow.state.view import CachedView

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from streamflow.operators.base import Item, Operator


class LocalContext:
    """A TaskContext over one LMDB environment; ``commit`` plays the checkpoint."""

    def __init__(self, path: Path, stores: Sequence[str], pipeline: str = "p") -> None:
        self.store = StateStore.open(path, stores)
        self.views = {name: CachedView(self.store, name) for name in stores}
        self._pipeline = pipeline
        self.late_items: list[tuple[str, Item]] = []

    @property
    def pipeline(self) -> str:
        return self._pipeline

    @property
    def partition(self) -> int:
        return 0

    def state(self, store: str) -> CachedView:
        return self.views[store]

    def late(self, operator: str, item: Item) -> None:
        self.late_items.append((operator, item))

    def commit(self) -> None:
        changes = {name: view.take_changes().encoded for name, view in self.views.items()}
        self.store.write(changes)

    def close(self) -> None:
        self.store.close()


def run_batches(op: Operator, batches: Sequence[Sequence[Item]]) -> list[Item]:
    """Feed each batch to *op* and collect everything it returns."""
    out: list[Item] = []
    for batch in batches:
        out.extend(op.process(list(batch)))
    return out


def values(items: Sequence[Item]) -> list[Any]:
    return [value for _, value, _ in items]
