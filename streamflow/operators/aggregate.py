"""Fold each key's records into a running value and emit the new value after every input.

``aggregate``, ``reduce`` and ``count`` (DESIGN §4) are one operator with
different starting points: ``Aggregate`` starts each key from ``initial()``;
``reduce_op`` starts from the key's first value; ``count_op`` counts. The
store maps each key to its accumulator. Accumulators must not be ``None``
(storing ``None`` deletes the key, and the next record starts again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Item, StateView, TaskContext

__all__ = ["Aggregate", "count_op", "reduce_op"]


class Aggregate:
    """Keep one accumulator per key; emit ``(key, new_acc, ts)`` after each input.

    One task at a time.

    Args:
        name: The operator's name (errors, metrics).
        store: The state store it owns (its identity across code changes).
        initial: Returns a fresh accumulator for a new key; ``None`` means the
            key's first value is its accumulator (``reduce``).
        fold: ``fold(acc, value) -> acc``.
    """

    def __init__(
        self,
        name: str,
        store: str,
        initial: Callable[[], Any] | None,
        fold: Callable[[Any, Any], Any],
    ) -> None:
        self.name = name
        self.store: str | None = store
        self._initial = initial
        self._fold = fold
        self._view: StateView | None = None

    def open(self, ctx: TaskContext) -> None:
        """Bind to the task's state store."""
        assert self.store is not None
        self._view = ctx.state(self.store)

    def process(self, items: list[Item]) -> list[Item]:
        """Fold each record into its key's accumulator; return one update per record."""
        view = self._view
        if view is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        initial, fold = self._initial, self._fold
        out: list[Item] = []
        append = out.append
        for key, value, ts in items:
            acc = view.get(key)
            if acc is None:
                acc = value if initial is None else fold(initial(), value)
            else:
                acc = fold(acc, value)
            view.put(key, acc)
            append((key, acc, ts))
        return out

    def on_watermark(self, watermark: int) -> list[Item]:
        """Do nothing: a running aggregate does not depend on event time."""
        return []

    def finish(self) -> list[Item]:
        """Do nothing: every update was already emitted."""
        return []


def _add_one(acc: int, value: object) -> int:
    return acc + 1


def _zero() -> int:
    return 0


def reduce_op(name: str, store: str, fn: Callable[[Any, Any], Any]) -> Aggregate:
    """Return an ``Aggregate`` that starts from each key's first value and folds with *fn*.

    >>> reduce_op("max", "max", max)._initial is None
    True
    """
    return Aggregate(name, store, None, fn)


def count_op(name: str, store: str) -> Aggregate:
    """Return an ``Aggregate`` that counts records per key (emits an ``int``).

    >>> count_op("n", "n")._fold(2, "x")
    3
    """
    return Aggregate(name, store, _zero, _add_one)
