"""Define the protocols between the runtime and the operators it drives.

An operator turns a list of items into a list of items, one input batch at a
time, so the per-record cost is a Python call, never a trio checkpoint. State
is reached only through a narrow ``StateView``; operators start no tasks and do
no I/O of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

#: One record inside a task: ``(key, value, timestamp_ms)``.
Item = tuple[Any, Any, int]


class StateView(Protocol):
    """Per-task, per-store key/value state of one stateful operator.

    Keys and values must be msgpack-serialisable. Changes become durable at
    the task's next checkpoint, together with the input offsets they reflect.
    One task at a time.
    """

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value stored under *key*, or *default*."""
        ...

    def put(self, key: Any, value: Any) -> None:
        """Store *value* under *key*."""
        ...

    def delete(self, key: Any) -> None:
        """Remove *key* (a tombstone in the changelog)."""
        ...

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Iterate over every stored entry (used to rebuild in-memory indexes)."""
        ...


class TaskContext(Protocol):
    """What a running task offers its operators."""

    @property
    def pipeline(self) -> str:
        """The pipeline's name."""
        ...

    @property
    def partition(self) -> int:
        """The input partition this task owns."""
        ...

    def state(self, store: str) -> StateView:
        """Return the state of the named store for this task."""
        ...

    def late(self, operator: str, item: Item) -> None:
        """Send a record that arrived after its window closed to ``<pipeline>.late``."""
        ...


class Operator(Protocol):
    """One step of a stage, working on whole batches.

    ``name`` identifies the operator in errors and metrics (kind and the user's
    source line); ``store`` is the state store it owns, or ``None``.
    """

    name: str
    store: str | None

    def open(self, ctx: TaskContext) -> None:
        """Bind to a task before the first batch (load state, rebuild indexes)."""
        ...

    def process(self, items: list[Item]) -> list[Item]:
        """Handle one batch; return what goes to the next operator, in order."""
        ...

    def on_watermark(self, watermark: int) -> list[Item]:
        """React to the task's event-time watermark (close windows, fire timers)."""
        ...

    def finish(self) -> list[Item]:
        """Flush at the end of a bounded run (``until_idle``): close open windows."""
        ...
