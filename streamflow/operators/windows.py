"""Group a keyed stream into event-time windows and fold each window once it closes.

Window kinds (all in integer ms, ``start`` inclusive, ``end`` exclusive):

* ``tumbling(size)``: ``[k*size, (k+1)*size)``, aligned to the epoch.
* ``hopping(size, step)``: windows of *size* starting every *step*, aligned to
  the epoch; a record belongs to ``ceil(size/step)`` of them (fewer when
  *size* is not a multiple of *step*).
* ``sliding(size)``: one window per distinct event time ``t`` of a key, the
  trailing ``[t - size + 1, t + 1)``: "the last *size* ms up to this record".
* ``session(gap)``: a record at ``t`` opens ``[t, t + gap)``; windows of a key
  that overlap merge (a record can bridge two sessions into one).

Closing rule: the operator's watermark is the largest event time it has seen
(record by record, so the result does not depend on how input is batched). A
window closes when ``watermark >= end + grace_ms``; its ``WindowResult`` is
emitted once, its state is deleted, and records for it that arrive later are
late: they go to ``ctx.late`` (counted, routed to ``<pipeline>.late``). A
record that misses at least one of its windows (hopping: some may still be
open, and it is added to those) is reported late once. Results of one sweep
come in ``(end, start, msgpack bytes of the key)`` order, which is the same
whatever the batching and after a restore from the store.

State layout in the operator's store (keys are msgpack arrays):

* ``["w", key, start]`` -> accumulator (tumbling, hopping);
* ``["s", key, start]`` -> ``[end, [[ts, value], ...]]`` (session: the values
  are kept and folded in event-time order at close, since folds cannot merge);
* ``["b", key]`` -> ``[[ts, value], ...]`` and ``["p", key, end]`` -> 1
  (sliding: the key's recent values, and its open windows);
* ``["m", "watermark"]`` -> the watermark.
"""

from __future__ import annotations

import heapq
from bisect import insort
from typing import TYPE_CHECKING, Any, Final

import msgpack

from .cache import key_id
from .window_spec import WindowResult, WindowSpec, hopping, session, sliding, tumbling

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Item, StateView, TaskContext

__all__ = [
    "WindowResult",
    "WindowSpec",
    "WindowedAggregate",
    "hopping",
    "session",
    "sliding",
    "tumbling",
]

_WATERMARK_KEY: Final = ("m", "watermark")
_NO_WATERMARK: Final = -(1 << 62)
_pack: Final = msgpack.Packer(use_bin_type=True).pack
_MISSING: Final = object()
_NEVER: Final = 1 << 62
_UINT64_MAX: Final = (1 << 64) - 1


class WindowedAggregate:
    """Fold each key's records per event-time window; emit a ``WindowResult`` at close.

    Emits ``(key, WindowResult, end - 1)`` items. One task at a time.

    Args:
        name: The operator's name (errors, metrics, late records).
        store: The state store it owns.
        window: The window kind and size.
        grace_ms: How long after ``end`` (in event time) a window stays open.
        initial: Returns a fresh accumulator; ``None`` means reduce: the first
            value of a window is its accumulator.
        fold: ``fold(acc, value) -> acc``. Accumulators must not be ``None``.
    """

    def __init__(
        self,
        name: str,
        store: str,
        window: WindowSpec,
        grace_ms: int,
        initial: Callable[[], Any] | None,
        fold: Callable[[Any, Any], Any],
    ) -> None:
        if not isinstance(grace_ms, int) or grace_ms < 0:
            raise ValueError(
                f"{name}: grace_ms must be a whole number of ms >= 0, got {grace_ms!r}"
            )
        self.name = name
        self.store: str | None = store
        self.window = window
        self.grace_ms = grace_ms
        self._initial = initial
        self._fold = fold
        self._ctx: TaskContext | None = None
        self._view: StateView | None = None
        self.watermark = self._saved_watermark = _NO_WATERMARK
        # end -> the open windows ending there, closed in end order. Sessions and
        # sliding windows: {(start, packed key): key}. Tumbling and hopping (start =
        # end - size, and the windows are the key ids of start in self._changed and
        # self._written): {key id: key} for the ids that are msgpack bytes (keys
        # other than str and int).
        self._open: dict[int, dict[Any, Any]] = {}
        self._ends: list[int] = []
        # session: packed key -> sorted [start, end] pairs of its open sessions
        self._sessions: dict[bytes, list[list[int]]] = {}
        # sliding: keys whose windows closed in this sweep (packed key -> key)
        self._to_prune: dict[bytes, Any] = {}
        # tumbling, hopping, by window start, {key id: accumulator} of the windows
        # changed since the view last got them (it gets them at each checkpoint,
        # through its before_take, else after each batch), and of the windows the
        # view holds, as it holds them (newer in _changed when changed since). An
        # open window is in one or both; one record costs a lookup and a store, and
        # a window that opens and closes between two checkpoints leaves no tombstone.
        self._changed: dict[int, dict[Any, Any]] = {}
        self._written: dict[int, dict[Any, Any]] = {}
        self._deferred = False

    # -- lifecycle -------------------------------------------------------

    def open(self, ctx: TaskContext) -> None:
        """Bind to the task and rebuild the index of open windows from state. Blocking."""
        assert self.store is not None
        self._ctx = ctx
        self._view = view = ctx.state(self.store)
        self._open, self._ends, self._sessions = {}, [], {}
        self._changed, self._written = {}, {}
        register = getattr(view, "before_take", None)
        self._deferred = callable(register)
        if callable(register):
            # The accumulators reach the view once per checkpoint, not once per batch.
            register(self._write_changed)
        self.watermark = self._saved_watermark = view.get(_WATERMARK_KEY, _NO_WATERMARK)
        for skey, value in view.items():
            tag = skey[0]
            if tag == "w":
                key, start = skey[1], skey[2]
                kid = key_id(key)
                self._written.setdefault(start, {})[kid] = value
                packed = self._index_aligned(start + self.window.size_ms)
                if kid is not key:
                    packed[kid] = key
            elif tag == "s":
                self._index(skey[1], skey[2], value[0])
                self._sessions.setdefault(_pack(skey[1]), []).append([skey[2], value[0]])
            elif tag == "p":
                end = skey[2]
                self._index(skey[1], end - self.window.size_ms, end)
        for spans in self._sessions.values():
            spans.sort()

    def process(self, items: list[Item]) -> list[Item]:
        """Add each record to its windows; return the results of windows that closed.

        Windows close as soon as a record moves the watermark past them, before
        that record is applied, so the outcome does not depend on batching.
        """
        out: list[Item] = []
        kind = self.window.kind
        if kind == "session":
            self._process_sessions(items, out)
        elif kind == "sliding":
            self._process_sliding(items, out)
        else:
            self._process_aligned(items, out)
            if not self._deferred:
                self._write_changed()
        self._save_watermark()
        return out

    def on_watermark(self, watermark: int) -> list[Item]:
        """Advance the watermark to *watermark* (if later) and emit what closes.

        For results that do not depend on batching, pass only watermarks up to
        the largest event time already given to ``process``.
        """
        self._advance(watermark)
        return self._sweep(self.watermark)

    def finish(self) -> list[Item]:
        """Close every open window (end of a bounded run); later records for them are late."""
        if self.window.kind in ("tumbling", "hopping"):
            size = self.window.size_ms
            open_ends = [
                start + size
                for by_start in (self._changed, self._written)
                for start, windows in by_start.items()
                if windows
            ]
        else:
            open_ends = [end for end, windows in self._open.items() if windows]
        if not open_ends:
            return []
        last_end = max(open_ends)
        self._advance(last_end + self.grace_ms)
        return self._sweep(self.watermark)

    # -- per kind --------------------------------------------------------

    def _process_aligned(self, items: list[Item], out: list[Item]) -> None:
        # The accumulators live in self._changed and self._written; the view gets
        # each changed window once per checkpoint (_write_changed), so a record
        # costs dict operations only.
        if self.window.step_ms == self.window.size_ms:
            self._process_tumbling(items, out)
            return
        initial, fold, size = self._initial, self._fold, self.window.size_ms
        grace = self.grace_ms
        deadline_shift = size + grace
        ends = self._ends
        changed, written = self._changed, self._written
        starts = self.window.starts
        wm = self.watermark
        for item in items:
            key, value, ts = item
            if ts > wm:
                wm = self.watermark = ts
                if ends and ends[0] + grace <= wm:
                    out.extend(self._sweep(wm))
            kind = type(key)
            kid = key if kind is str or kind is int else _pack(key)
            late = False
            for start in starts(ts):
                if start + deadline_shift <= wm:
                    late = True
                    continue
                window_accs = changed.setdefault(start, {})
                acc = window_accs.get(kid, _MISSING)
                if acc is _MISSING and start in written:
                    acc = written[start].get(kid, _MISSING)
                if acc is _MISSING:
                    acc = value if initial is None else fold(initial(), value)
                    packed = self._index_aligned(start + size)
                    if kid is not key:
                        packed[kid] = key
                else:
                    acc = fold(acc, value)
                window_accs[kid] = acc
            if late:
                self._late(item)

    def _process_tumbling(self, items: list[Item], out: list[Item]) -> None:
        # _process_aligned with one window per record. Consecutive records mostly
        # share a window start, so the dicts of the current start are looked up
        # once per change of start, not once per record.
        initial, fold, size = self._initial, self._fold, self.window.size_ms
        grace = self.grace_ms
        deadline_shift = size + grace
        ends = self._ends
        changed, written = self._changed, self._written
        wm = self.watermark
        # Windows close when the watermark reaches first end + grace: one comparison
        # per record instead of reading the heap.
        close_at = ends[0] + grace if ends else _NEVER
        current: Any = None  # the start whose dicts are bound below
        deadline = 0
        window_accs: dict[Any, Any] = {}
        window_written: dict[Any, Any] | None = None
        packed: dict[Any, Any] = {}
        try:
            for item in items:
                key, value, ts = item
                if ts > wm:
                    wm = ts
                    if wm >= close_at:
                        self.watermark = wm
                        out.extend(self._sweep(wm))
                        close_at = ends[0] + grace if ends else _NEVER
                        current = None  # the sweep may have dropped its dicts
                start = ts - ts % size
                if start != current:
                    if start + deadline_shift <= wm:
                        self._late(item)
                        continue  # the current start's dicts stay bound
                    current = start
                    deadline = start + deadline_shift
                    found = changed.get(start)
                    if found is None:
                        found = changed[start] = {}
                        close_at = min(close_at, deadline)
                    window_accs = found
                    window_written = written.get(start)
                    packed = self._index_aligned(start + size)
                elif deadline <= wm:
                    self._late(item)
                    continue
                kind = type(key)
                kid = key if kind is str or kind is int else _pack(key)
                acc = window_accs.get(kid, _MISSING)
                if acc is _MISSING and window_written:
                    acc = window_written.get(kid, _MISSING)
                if acc is _MISSING:
                    acc = value if initial is None else fold(initial(), value)
                    if kid is not key:
                        packed[kid] = key
                else:
                    acc = fold(acc, value)
                window_accs[kid] = acc
        finally:
            self.watermark = wm

    def _write_changed(self) -> None:
        # Called between batches (never while _process_tumbling holds a start's dicts).
        put, size, written = self._state().put, self.window.size_ms, self._written
        for start, window_accs in list(self._changed.items()):
            if not window_accs:
                continue
            packed = self._open[start + size]
            for kid, acc in window_accs.items():
                put(("w", packed[kid] if type(kid) is bytes else kid, start), acc)
            window_written = written.get(start)
            if window_written:
                window_written.update(window_accs)
                window_accs.clear()
            else:
                written[start], self._changed[start] = window_accs, {}

    def _process_sessions(self, items: list[Item], out: list[Item]) -> None:
        view, gap, grace = self._state(), self.window.size_ms, self.grace_ms
        ends = self._ends
        wm = self.watermark
        for item in items:
            key, value, ts = item
            if ts > wm:
                wm = self.watermark = ts
                if ends and ends[0] + grace <= wm:
                    out.extend(self._sweep(wm))
            kb = _pack(key)
            spans = self._sessions.get(kb, [])
            start, end = ts, ts + gap
            merged = [s for s in spans if s[0] < ts + gap and ts < s[1]]
            for s in merged:
                start, end = min(start, s[0]), max(end, s[1])
            if end + grace <= wm:
                self._late(item)
                continue
            records: list[list[Any]] = []
            for old_start, old_end in merged:
                records.extend(view.get(("s", key, old_start))[1])
                view.delete(("s", key, old_start))
                self._unindex(kb, old_start, old_end)
                spans.remove([old_start, old_end])
            insort(records, [ts, value], key=lambda r: r[0])
            view.put(("s", key, start), [end, records])
            insort(spans, [start, end])
            self._sessions[kb] = spans
            self._index(key, start, end, kb)

    def _process_sliding(self, items: list[Item], out: list[Item]) -> None:
        view, size, grace = self._state(), self.window.size_ms, self.grace_ms
        ends = self._ends
        wm = self.watermark
        for item in items:
            key, value, ts = item
            if ts > wm:
                wm = self.watermark = ts
                if ends and ends[0] + grace <= wm:
                    out.extend(self._sweep(wm))
            end = ts + 1
            buffer = view.get(("b", key)) or []
            insort(buffer, [ts, value], key=lambda r: r[0])
            view.put(("b", key), buffer)
            if end + grace <= wm:
                self._late(item)
            elif view.get(("p", key, end)) is None:
                view.put(("p", key, end), 1)
                self._index(key, end - size, end)

    # -- closing ---------------------------------------------------------

    def _sweep(self, watermark: int) -> list[Item]:
        out: list[Item] = []
        limit = watermark - self.grace_ms
        ends = self._ends
        aligned = self.window.kind in ("tumbling", "hopping")
        while ends and ends[0] <= limit:
            end = heapq.heappop(ends)
            windows = self._open.pop(end, None)
            if aligned:
                self._close_aligned(end, windows or {}, out)
                continue
            if not windows:
                continue
            # Sorted by (start, packed key): the dict keys are unique, so the
            # comparison never reaches the key objects.
            for (start, kb), key in sorted(windows.items()):
                result = self._close(key, kb, start, end)
                out.append((key, result, end - 1))
        if self._to_prune:
            self._prune(watermark)
        return out

    def _prune(self, watermark: int) -> None:
        # After a sweep every open window ends after watermark - grace, so it
        # starts at or after keep_from; so does the window of any record that
        # is not late yet. Older values can go.
        view = self._state()
        keep_from = watermark - self.grace_ms - self.window.size_ms + 1
        for key in self._to_prune.values():
            buffer = view.get(("b", key)) or []
            kept = [r for r in buffer if r[0] >= keep_from]
            if len(kept) == len(buffer):
                continue
            if kept:
                view.put(("b", key), kept)
            else:
                view.delete(("b", key))
        self._to_prune = {}

    def _close_aligned(self, end: int, packed: dict[bytes, Any], out: list[Item]) -> None:
        # Every window of a sweep's end has the same start: its dicts go at once.
        # *packed* holds the keys behind the key ids that are msgpack bytes.
        view = self._state()
        start = end - self.window.size_ms
        accs = self._changed.pop(start, {})
        written = self._written.pop(start, None) or {}
        if written:
            # A changed window's newest value need not reach the view: it closes now.
            accs = {**written, **accs}
        delete, append = view.delete, out.append
        last = end - 1
        for kid in _sorted_as_packed(list(accs)):
            key = packed[kid] if type(kid) is bytes else kid
            if kid in written:
                delete(("w", key, start))
            append((key, WindowResult(key, start, end, accs[kid]), last))

    def _close(self, key: Any, kb: bytes, start: int, end: int) -> WindowResult:
        view, kind = self._state(), self.window.kind
        if kind == "session":
            _, records = view.get(("s", key, start))
            view.delete(("s", key, start))
            spans = self._sessions[kb]
            spans.remove([start, end])
            if not spans:
                del self._sessions[kb]
            return WindowResult(key, start, end, self._fold_all(r[1] for r in records))
        # sliding (tumbling and hopping windows close in _close_aligned)
        buffer = view.get(("b", key)) or []
        view.delete(("p", key, end))
        self._to_prune[kb] = key
        return WindowResult(
            key, start, end, self._fold_all(v for t, v in buffer if start <= t < end)
        )

    def _fold_all(self, values: Any) -> Any:
        it = iter(values)
        acc = next(it) if self._initial is None else self._fold(self._initial(), next(it))
        for value in it:
            acc = self._fold(acc, value)
        return acc

    # -- helpers ---------------------------------------------------------

    def _state(self) -> StateView:
        if self._view is None:
            raise RuntimeError(f"{self.name}: open(ctx) must be called before process()")
        return self._view

    def _late(self, item: Item) -> None:
        assert self._ctx is not None
        self._ctx.late(self.name, item)

    def _advance(self, watermark: int) -> None:
        if watermark > self.watermark:
            self.watermark = watermark
        self._save_watermark()

    def _save_watermark(self) -> None:
        if self.watermark != self._saved_watermark:
            self._state().put(_WATERMARK_KEY, self.watermark)
            self._saved_watermark = self.watermark

    def _index(self, key: Any, start: int, end: int, kb: bytes | None = None) -> None:
        windows = self._open.get(end)
        if windows is None:
            windows = self._open[end] = {}
            heapq.heappush(self._ends, end)
        windows[(start, _pack(key) if kb is None else kb)] = key

    def _index_aligned(self, end: int) -> dict[Any, Any]:
        """Index *end* (once) for closing; return its dict for the keys of packed key ids."""
        packed = self._open.get(end)
        if packed is None:
            packed = self._open[end] = {}
            heapq.heappush(self._ends, end)
        return packed

    def _unindex(self, kb: bytes, start: int, end: int) -> None:
        windows = self._open.get(end)
        if windows is not None:
            windows.pop((start, kb), None)


def _sorted_as_packed(ids: list[Any]) -> list[Any]:
    """Sort key ids (see ``key_id``) in place as their keys' msgpack bytes sort; return them.

    The bytes of non-negative ints sort as the numbers do (each longer form has
    a larger type byte, and the number follows big-endian), and those of ASCII
    strs by length, then text (the header holds the length). Other ids are
    sorted by their keys' bytes, so any mix of keys gets the same order.

    >>> _sorted_as_packed([300, 7, 1 << 40, 128])
    [7, 128, 300, 1099511627776]
    >>> _sorted_as_packed(["bb", "c", "ab"])
    ['c', 'ab', 'bb']
    >>> _sorted_as_packed([-1, 0, "a"]) == sorted([-1, 0, "a"], key=_pack)
    True
    """
    if not ids:
        return ids
    kinds = set(map(type, ids))
    if kinds == {int}:
        ids.sort()
        if ids[0] >= 0 and ids[-1] <= _UINT64_MAX:
            return ids
    elif kinds == {str} and "".join(ids).isascii():
        ids.sort()
        ids.sort(key=len)  # stable: by length, then text
        return ids
    ids.sort(key=_packed_form)
    return ids


def _packed_form(kid: Any) -> bytes:
    """Return the msgpack bytes of the key behind a key id."""
    return kid if type(kid) is bytes else _pack(kid)
