"""Run a user function per record with per-key state and event-time timers.

``Process(name, store, fn, on_timer=None)`` calls ``fn(ctx, key, value)`` for
each record. ``ctx`` is a ``ProcessContext``:

* ``ctx.key``, ``ctx.timestamp`` (the record's event time) and
  ``ctx.watermark`` (the largest event time this operator has seen);
* ``ctx.state``: the current key's state, ``get(default=None)``,
  ``set(value)``, ``delete()`` (``set(None)`` deletes);
* ``ctx.emit(value, key=<current key>, timestamp=<current time>)``: send a
  record downstream;
* ``ctx.register_timer(timestamp, tag=None)``: call
  ``on_timer(ctx, tag)`` for the current key once the watermark reaches
  *timestamp*. Timers are stored in the operator's store, so they survive a
  restart; that is why a timer carries a msgpack-serialisable *tag* rather
  than a callback. Registering the same ``(timestamp, key, tag)`` twice sets
  one timer; ``ctx.delete_timer(timestamp, tag=None)`` removes it.

Timers fire in ``(timestamp, key, tag)`` order, as soon as the watermark
reaches them: before the record that moves the watermark is passed to
``fn``, and after a record whose ``fn`` set a timer at or below the watermark.
So the sequence of calls does not depend on how input is batched.

State layout: ``["k", key]`` -> the key's value; ``["t", ts, key, tag]`` -> 1
for each timer; ``["m", "watermark"]`` -> the watermark.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Final

import msgpack

from .cache import KeyCache, key_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Item, StateView, TaskContext

__all__ = ["KeyState", "Process", "ProcessContext"]

_WATERMARK_KEY: Final = ("m", "watermark")
_NO_WATERMARK: Final = -(1 << 62)
_CURRENT: Final[Any] = object()


# One packer for the module: pack() holds the GIL from start to end.
_pack: Final = msgpack.Packer(use_bin_type=True).pack


def _state_key(key: Any) -> tuple[str, Any]:
    return ("k", key)


class KeyState:
    """The state of the key being processed (``ctx.state``).

    Values live in the operator's ``KeyCache``, one ``Entry`` per key, and
    reach the store once per checkpoint, so a record costs a dict lookup
    rather than a msgpack encoding per call. The operator sets ``_kid`` and
    ``_key`` before each call of ``fn`` or ``on_timer``.
    """

    __slots__ = ("_cache", "_dirty", "_entries", "_key", "_kid")

    def __init__(self, cache: KeyCache) -> None:
        self._cache = cache
        self._entries = cache.entries
        self._dirty = cache.dirty
        self._kid: Any = None
        self._key: Any = None

    def get(self, default: Any = None) -> Any:
        """Return the current key's value, or *default*."""
        try:
            value = self._entries[self._kid].value
        except KeyError:
            value = self._cache.load(self._kid, self._key).value
        return default if value is None else value

    def set(self, value: Any) -> None:
        """Store *value* for the current key (``None`` deletes it)."""
        # KeyCache.put, inlined for a key the cache holds.
        try:
            entry = self._entries[self._kid]
        except KeyError:
            self._cache.put(self._kid, self._key, value)
            return
        entry.value = value
        if not entry.dirty:
            entry.dirty = True
            self._dirty.append(entry)

    def delete(self) -> None:
        """Remove the current key's value."""
        self.set(None)


class ProcessContext:
    """What ``fn`` and ``on_timer`` get: the record's key and time, state, emit, timers.

    One per operator, reused for every call; do not keep it past the call.
    """

    def __init__(self, operator: Process, view: StateView) -> None:
        self._operator = operator
        self._view = view
        self.key: Any = None
        self.timestamp = 0
        self._cache = KeyCache(view, _state_key)
        self.state = KeyState(self._cache)
        self._out: list[Item] = []

    def _at(self, key: Any, timestamp: int) -> None:
        """Make *key* at *timestamp* the current record (for timers; the loop inlines it)."""
        state = self.state
        state._kid = key_id(key)
        state._key = self.key = key
        self.timestamp = timestamp

    @property
    def watermark(self) -> int:
        """The largest event time this operator has seen."""
        return self._operator.watermark

    def emit(self, value: Any, key: Any = _CURRENT, timestamp: int | None = None) -> None:
        """Send ``(key, value, timestamp)`` downstream (defaults: the current key and time)."""
        self._out.append(
            (
                self.key if key is _CURRENT else key,
                value,
                self.timestamp if timestamp is None else timestamp,
            )
        )

    def register_timer(self, timestamp: int, tag: Any = None) -> None:
        """Call ``on_timer(ctx, tag)`` for the current key once the watermark reaches *timestamp*.

        Raises:
            ValueError: if the operator has no ``on_timer`` or *timestamp* is not an int.
        """
        self._operator._add_timer(timestamp, self.key, tag)

    def delete_timer(self, timestamp: int, tag: Any = None) -> None:
        """Remove the current key's timer at *timestamp* with *tag*, if set."""
        self._operator._remove_timer(timestamp, self.key, tag)


class Process:
    """Call ``fn(ctx, key, value)`` per record, with per-key state and timers.

    One task at a time.

    Args:
        name: The operator's name (errors, metrics).
        store: The state store it owns.
        fn: The per-record function; it may read and write ``ctx.state``,
            ``ctx.emit`` records and ``ctx.register_timer``.
        on_timer: ``on_timer(ctx, tag)``, called with ``ctx.key`` and
            ``ctx.timestamp`` set to the timer's key and time.
    """

    def __init__(
        self,
        name: str,
        store: str,
        fn: Callable[[ProcessContext, Any, Any], None],
        on_timer: Callable[[ProcessContext, Any], None] | None = None,
    ) -> None:
        self.name = name
        self.store: str | None = store
        self._fn = fn
        self._on_timer = on_timer
        self._ctx: ProcessContext | None = None
        self.watermark = self._saved_watermark = _NO_WATERMARK
        # (ts, packed key, packed tag) -> (key, tag); the heap holds the same
        # triples and may keep deleted ones (skipped when popped).
        self._timers: dict[tuple[int, bytes, bytes], tuple[Any, Any]] = {}
        self._heap: list[tuple[int, bytes, bytes]] = []

    def open(self, ctx: TaskContext) -> None:
        """Bind to the task and load the timers from state. Blocking."""
        assert self.store is not None
        view = ctx.state(self.store)
        self._ctx = ProcessContext(self, view)
        self.watermark = self._saved_watermark = view.get(_WATERMARK_KEY, _NO_WATERMARK)
        self._timers, self._heap = {}, []
        for skey, _ in view.items():
            if skey[0] == "t":
                _, ts, key, tag = skey
                entry = (ts, _pack(key), _pack(tag))
                self._timers[entry] = (key, tag)
                self._heap.append(entry)
        heapq.heapify(self._heap)

    def process(self, items: list[Item]) -> list[Item]:
        """Call ``fn`` for each record and fire the timers the watermark reaches."""
        ctx = self._context()
        fn = self._fn
        state = ctx.state
        out = ctx._out = []
        wm = self.watermark
        heap = self._heap
        try:
            for key, value, ts in items:
                if ts > wm:
                    wm = self.watermark = ts
                    if heap:
                        self._fire(wm)
                kind = type(key)
                # key_id inlined: a str key is its own id
                state._kid = key if kind is str else key_id(key)
                state._key = ctx.key = key
                ctx.timestamp = ts
                fn(ctx, key, value)
                if heap and heap[0][0] <= wm:
                    self._fire(wm)
        finally:
            # Changes made before a failure stay, as they would without the batching.
            ctx._cache.after_batch()
        self._save_watermark()
        return out

    def on_watermark(self, watermark: int) -> list[Item]:
        """Advance the watermark to *watermark* (if later) and fire due timers.

        For results that do not depend on batching, pass only watermarks up to
        the largest event time already given to ``process``.
        """
        ctx = self._context()
        out = ctx._out = []
        if watermark > self.watermark:
            self.watermark = watermark
            self._save_watermark()
        try:
            self._fire(self.watermark)
        finally:
            ctx._cache.after_batch()
        return out

    def finish(self) -> list[Item]:
        """Do nothing: timers fire on event time only, and pending ones stay stored."""
        return []

    # -- timers ----------------------------------------------------------

    def _fire(self, watermark: int) -> None:
        ctx = self._context()
        heap, timers, view = self._heap, self._timers, ctx._view
        on_timer = self._on_timer
        assert on_timer is not None or not timers
        while heap and heap[0][0] <= watermark:
            entry = heapq.heappop(heap)
            found = timers.pop(entry, None)
            if found is None:
                continue
            key, tag = found
            view.delete(("t", entry[0], key, tag))
            ctx._at(key, entry[0])
            assert on_timer is not None
            on_timer(ctx, tag)

    def _add_timer(self, timestamp: int, key: Any, tag: Any) -> None:
        if self._on_timer is None:
            raise ValueError(f"{self.name}: register_timer needs an on_timer function")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise ValueError(
                f"{self.name}: a timer's timestamp must be an int (ms), got {timestamp!r}"
            )
        entry = (timestamp, _pack(key), _pack(tag))
        if entry not in self._timers:
            self._timers[entry] = (key, tag)
            heapq.heappush(self._heap, entry)
            self._context()._view.put(("t", timestamp, key, tag), 1)

    def _remove_timer(self, timestamp: int, key: Any, tag: Any) -> None:
        entry = (timestamp, _pack(key), _pack(tag))
        if self._timers.pop(entry, None) is not None:
            self._context()._view.delete(("t", timestamp, key, tag))

    def _save_watermark(self) -> None:
        if self.watermark != self._saved_watermark:
            self._context()._view.put(_WATERMARK_KEY, self.watermark)
            self._saved_watermark = self.watermark

    def _context(self) -> ProcessContext:
        if self._ctx is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        return self._ctx
