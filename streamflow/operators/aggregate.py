"""Fold each key's records into a running value and emit the new value after every input.

``aggregate``, ``reduce`` and ``count`` (DESIGN §4) are one operator with
different starting points: ``Aggregate`` starts each key from ``initial()``;
``reduce_op`` starts from the key's first value; ``count_op`` counts. The
store maps each key to its accumulator. Accumulators must not be ``None``
(storing ``None`` deletes the key, and the next record starts again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import KeyCache, key_id

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
        self._cache: KeyCache | None = None

    def open(self, ctx: TaskContext) -> None:
        """Bind to the task's state store."""
        assert self.store is not None
        view: StateView = ctx.state(self.store)
        self._cache = KeyCache(view, _same)

    def process(self, items: list[Item]) -> list[Item]:
        """Fold each record into its key's accumulator; return one update per record."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        initial, fold = self._initial, self._fold
        entries, mark, load = cache.entries, cache.dirty.append, cache.load
        out: list[Item] = []
        append = out.append
        try:
            for key, value, ts in items:
                kid = key if type(key) is str else key_id(key)
                entry = entries.get(kid)
                if entry is None:
                    entry = load(kid, key)
                acc = entry.value
                if acc is None:
                    acc = value if initial is None else fold(initial(), value)
                else:
                    acc = fold(acc, value)
                # KeyCache.put, inlined
                entry.value = acc
                if not entry.dirty:
                    entry.dirty = True
                    mark(entry)
                append((key, acc, ts))
        finally:
            cache.after_batch()
        return out

    def on_watermark(self, watermark: int) -> list[Item]:
        """Do nothing: a running aggregate does not depend on event time."""
        return []

    def finish(self) -> list[Item]:
        """Do nothing: every update was already emitted."""
        return []


def _same(key: Any) -> Any:
    return key


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
