"""Describe event-time windows (``tumbling``, ``hopping``, ``sliding``, ``session``) and results.

The kinds and how they close are in ``windows``, which runs them and
re-exports every name here (users write ``windows.tumbling(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

WindowKind = Literal["tumbling", "hopping", "sliding", "session"]


@dataclass(frozen=True, slots=True, init=False)
class WindowResult:
    """The result of one closed window: its key, ``[start, end)`` in ms, and folded value.

    >>> WindowResult("u1", 0, 60_000, 3)
    WindowResult(key='u1', start=0, end=60000, value=3)
    """

    key: Any
    start: int
    end: int
    value: Any

    def __init__(self, key: Any, start: int, end: int, value: Any) -> None:
        """Make a result (frozen: the fields are set once, here)."""
        # A window operator makes one result per closed window. The generated
        # __init__ of a frozen dataclass sets each field through
        # object.__setattr__; the slot descriptors do it in about half the time.
        _set_key(self, key)
        _set_start(self, start)
        _set_end(self, end)
        _set_value(self, value)

    def to_dict(self) -> dict[str, Any]:
        """Return the map a sink writes: ``{"key", "start", "end", "value"}``.

        >>> WindowResult("u1", 0, 60_000, 3).to_dict()
        {'key': 'u1', 'start': 0, 'end': 60000, 'value': 3}
        """
        return {"key": self.key, "start": self.start, "end": self.end, "value": self.value}


_set_key, _set_start, _set_end, _set_value = (
    vars(WindowResult)[name].__set__ for name in ("key", "start", "end", "value")
)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """How records are grouped into windows (build with ``tumbling`` and friends)."""

    kind: WindowKind
    size_ms: int
    step_ms: int

    def starts(self, timestamp: int) -> list[int]:
        """Return the starts of the aligned windows holding *timestamp*, latest first.

        Only for ``tumbling`` and ``hopping``.

        >>> tumbling(ms=10).starts(25)
        [20]
        >>> hopping(size_ms=10, step_ms=5).starts(25)
        [25, 20]
        >>> tumbling(ms=10).starts(-1)
        [-10]
        """
        if self.kind not in ("tumbling", "hopping"):
            raise ValueError(
                f"{self.kind} windows are not aligned; starts() needs tumbling/hopping"
            )
        start = timestamp - timestamp % self.step_ms
        found = []
        while start > timestamp - self.size_ms:
            found.append(start)
            start -= self.step_ms
        return found


def _ms(what: str, seconds: float | None, ms: int | None) -> int:
    if (seconds is None) == (ms is None):
        raise ValueError(f"{what}: give exactly one of seconds or ms")
    if ms is None:
        assert seconds is not None
        value = round(seconds * 1000)
        if abs(value - seconds * 1000) > 1e-6:
            raise ValueError(f"{what}: {seconds} s is not a whole number of ms")
    else:
        value = ms
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what}: the size must be a positive whole number of ms, got {value!r}")
    return value


def tumbling(seconds: float | None = None, *, ms: int | None = None) -> WindowSpec:
    """Return fixed, non-overlapping windows of *seconds* (or *ms*), aligned to the epoch.

    >>> tumbling(seconds=60)
    WindowSpec(kind='tumbling', size_ms=60000, step_ms=60000)
    """
    size = _ms("tumbling", seconds, ms)
    return WindowSpec("tumbling", size, size)


def hopping(
    size_seconds: float | None = None,
    step_seconds: float | None = None,
    *,
    size_ms: int | None = None,
    step_ms: int | None = None,
) -> WindowSpec:
    """Return windows of *size* starting every *step*, aligned to the epoch.

    Raises:
        ValueError: if a size is not positive or *step* is larger than *size*.

    >>> hopping(60, 10)
    WindowSpec(kind='hopping', size_ms=60000, step_ms=10000)
    """
    size = _ms("hopping size", size_seconds, size_ms)
    step = _ms("hopping step", step_seconds, step_ms)
    if step > size:
        raise ValueError(
            f"hopping: step {step} ms is larger than size {size} ms (records would be lost)"
        )
    return WindowSpec("hopping", size, step)


def sliding(seconds: float | None = None, *, ms: int | None = None) -> WindowSpec:
    """Return trailing windows: one per distinct event time ``t``, ``[t - size + 1, t + 1)``.

    >>> sliding(ms=500).size_ms
    500
    """
    size = _ms("sliding", seconds, ms)
    return WindowSpec("sliding", size, 1)


def session(gap_seconds: float | None = None, *, gap_ms: int | None = None) -> WindowSpec:
    """Return per-key sessions that end after *gap* without a record.

    >>> session(gap_ms=30_000).size_ms
    30000
    """
    gap = _ms("session gap", gap_seconds, gap_ms)
    return WindowSpec("session", gap, gap)
