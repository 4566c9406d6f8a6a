from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamflow.operators.cache import KeyCache

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class LoggingView:
    """A StateView kept in a dict that logs every call, with a ``before_take`` hook."""

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        self.data: dict[Any, Any] = dict(data or {})
        self.calls: list[tuple[str, Any, Any]] = []
        self.flushers: list[Callable[[], None]] = []

    def before_take(self, flush: Callable[[], None]) -> None:
        self.flushers.append(flush)

    def take(self) -> None:
        """Play a checkpoint: flush the operators' caches."""
        for flush in self.flushers:
            flush()

    def get(self, key: Any, default: Any = None) -> Any:
        self.calls.append(("get", key, None))
        return self.data.get(key, default)

    def put(self, key: Any, value: Any) -> None:
        self.calls.append(("put", key, value))
        self.data[key] = value

    def delete(self, key: Any) -> None:
        self.calls.append(("delete", key, None))
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self.data.items()))


def state_key(key: Any) -> Any:
    return ("k", key)


def test_write_hands_each_changed_key_once_in_order_of_first_change_with_its_latest_value() -> None:
    view = LoggingView()
    cache = KeyCache(view, state_key)
    for kid, value in [("b", 1), ("a", 1), ("b", 2), ("c", 1), ("a", 3), ("b", 4)]:
        cache.put(kid, kid, value)
    cache.after_batch()
    assert view.calls == []  # the view has before_take: nothing before the checkpoint
    view.take()
    assert view.calls == [
        ("put", ("k", "b"), 4),
        ("put", ("k", "a"), 3),
        ("put", ("k", "c"), 1),
    ]
    assert cache.dirty == []
    assert not any(entry.dirty for entry in cache.entries.values())


def test_only_keys_changed_since_the_last_write_are_written_again() -> None:
    view = LoggingView()
    cache = KeyCache(view, state_key)
    cache.put("a", "a", 1)
    cache.put("b", "b", 1)
    view.take()
    view.calls.clear()
    cache.put("b", "b", 2)
    view.take()
    view.take()  # nothing changed since: nothing to write
    assert view.calls == [("put", ("k", "b"), 2)]
    assert view.data == {("k", "a"): 1, ("k", "b"): 2}


def test_none_deletes_the_key_at_the_write() -> None:
    view = LoggingView({("k", "a"): 1})
    cache = KeyCache(view, state_key)
    assert cache.load("a", "a").value == 1
    cache.put("a", "a", None)
    cache.put("b", "b", None)
    view.take()
    assert view.calls[1:] == [("delete", ("k", "a"), None), ("delete", ("k", "b"), None)]
    assert view.data == {}


def test_put_of_a_key_not_cached_does_not_read_the_view() -> None:
    view = LoggingView({("k", "a"): 1})
    cache = KeyCache(view, state_key)
    cache.put("a", "a", 5)
    assert cache.entries["a"].value == 5
    view.take()
    assert view.calls == [("put", ("k", "a"), 5)]


def test_load_reads_the_view_once_per_key_and_keeps_a_missing_key_as_none() -> None:
    view = LoggingView({("k", "a"): 1})
    cache = KeyCache(view, state_key)
    assert cache.load("a", "a").value == 1
    assert cache.load("z", "z").value is None
    assert cache.entries["a"].value == 1
    assert cache.entries["z"].value is None
    assert view.calls == [("get", ("k", "a"), None), ("get", ("k", "z"), None)]
    assert cache.dirty == []
