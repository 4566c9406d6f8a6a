from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from streamflow.operators.cache import KeyCache
from streamflow.operators.process import Process, ProcessContext
from tests.state.harness import LocalContext, run_batches

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from streamflow.operators.base import Item

WINDOW = 60


def fraud_fn(ctx: ProcessContext, key: Any, value: Any) -> None:
    """Alert when a key has more than 2 events in the trailing WINDOW ms."""
    recent = [t for t in ctx.state.get([]) if t > ctx.timestamp - WINDOW] + [ctx.timestamp]
    ctx.state.set(recent)
    if len(recent) > 2:
        ctx.emit({"alert": len(recent)})
    ctx.register_timer(ctx.timestamp + WINDOW, "expire")


def fraud_timer(ctx: ProcessContext, tag: Any) -> None:
    assert tag == "expire"
    recent = [t for t in ctx.state.get([]) if t > ctx.timestamp - WINDOW]
    if recent:
        ctx.state.set(recent)
    else:
        ctx.state.delete()
        ctx.emit("idle", timestamp=ctx.timestamp)


def fraud() -> Process:
    return Process("fraud", "recent", fraud_fn, on_timer=fraud_timer)


ITEMS: list[Item] = [
    ("a", 1, 0),
    ("a", 1, 10),
    ("b", 1, 15),
    ("a", 1, 20),  # third event of a within 60 ms: alert
    ("b", 1, 100),  # moves the watermark past 60 and 70: a's first timers fire first
    ("a", 1, 200),
]


def test_process_keeps_state_emits_and_fires_timers_in_order(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["recent"])
    op = fraud()
    op.open(ctx)
    out = run_batches(op, [ITEMS])
    assert out == [
        ("a", {"alert": 3}, 20),
        ("b", "idle", 75),  # timers fire in time order across keys
        ("a", "idle", 80),  # a's timers at 60 and 70 keep state; 80 finds it empty
        ("b", "idle", 160),
    ]
    assert op.watermark == 200
    assert ctx.views["recent"].get(("k", "a")) == [200]
    assert ctx.views["recent"].get(("k", "b")) is None


def test_process_output_does_not_depend_on_batching(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "one", ["recent"])
    op = fraud()
    op.open(ctx)
    whole = run_batches(op, [ITEMS]) + op.on_watermark(1_000)
    ctx2 = LocalContext(tmp_path / "many", ["recent"])
    op2 = fraud()
    op2.open(ctx2)
    split = run_batches(op2, [[item] for item in ITEMS]) + op2.on_watermark(1_000)
    assert split == whole
    assert whole[-1] == ("a", "idle", 260)


def test_timers_survive_a_restart(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["recent"])
    op = fraud()
    op.open(ctx)
    op.process(ITEMS[:4])
    ctx.commit()
    ctx.close()

    ctx = LocalContext(tmp_path / "s", ["recent"])
    op = fraud()
    op.open(ctx)
    assert op.watermark == 20
    assert op.process(ITEMS[4:]) == [("b", "idle", 75), ("a", "idle", 80), ("b", "idle", 160)]


def test_register_timer_needs_on_timer(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["recent"])
    op = Process("p", "recent", fraud_fn)
    op.open(ctx)
    with pytest.raises(ValueError, match="on_timer"):
        op.process([("a", 1, 1)])


def test_deleted_timer_does_not_fire(tmp_path: Path) -> None:
    def fn(ctx: ProcessContext, key: Any, value: Any) -> None:
        if value == "set":
            ctx.register_timer(50, tag=key)
        else:
            ctx.delete_timer(50, tag=key)

    fired: list[Any] = []
    ctx = LocalContext(tmp_path / "s", ["t"])
    op = Process("p", "t", fn, on_timer=lambda c, tag: fired.append((c.key, tag)))
    op.open(ctx)
    op.process([("a", "set", 1), ("b", "set", 2), ("a", "unset", 3), ("c", "x", 60)])
    assert fired == [("b", "b")]


class DictView:
    """A StateView kept in a dict, without ``before_take`` (a view that is not a CachedView)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.puts = 0

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(repr(key), default)

    def put(self, key: Any, value: Any) -> None:
        self.puts += 1
        self.data[repr(key)] = value

    def delete(self, key: Any) -> None:
        self.data.pop(repr(key), None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter([])


class DictContext(LocalContext):
    """A LocalContext whose operators get a DictView instead of the LMDB-backed view."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, ["s"])
        self.dict_view = DictView()

    def state(self, store: str) -> Any:
        return self.dict_view


def count_fn(ctx: ProcessContext, key: Any, value: Any) -> None:
    ctx.state.set(ctx.state.get(0) + value)


def test_checkpoint_takes_one_change_per_key_with_its_latest_value(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    op = Process("p", "n", count_fn)
    op.open(ctx)
    for t in range(0, 300, 3):
        op.process([("a", 1, t), ("b", 2, t + 1), ("a", 1, t + 2)])
    changes = ctx.views["n"].take_changes()
    state = dict(zip(map(repr, changes.keys), changes.values, strict=True))
    assert state == {"('k', 'a')": 200, "('k', 'b')": 200, "('m', 'watermark')": 299}
    ctx.store.write({"n": changes.encoded})
    ctx.close()

    ctx = LocalContext(tmp_path / "s", ["n"])
    op = Process("p", "n", count_fn)
    op.open(ctx)
    op.process([("a", 5, 300)])
    assert ctx.views["n"].get(("k", "a")) == 205
    assert ctx.views["n"].get(("k", "b")) == 200


def test_keys_that_msgpack_stores_apart_keep_apart_states(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    op = Process("p", "n", count_fn)
    op.open(ctx)
    # Equal in Python (1 == 1.0 == True), three different keys in the store.
    op.process([(1, 1, 0), (1.0, 10, 1), (True, 100, 2), ((1, "x"), 1000, 3), ([1, "x"], 1, 4)])
    view = ctx.views["n"]
    assert view.get(("k", 1)) == 1
    assert view.get(("k", 1.0)) == 10
    assert view.get(("k", True)) == 100
    assert view.get(("k", [1, "x"])) == 1001  # a tuple and a list are stored alike
    ctx.commit()
    ctx.close()


def test_state_reaches_a_view_without_before_take_after_each_batch(tmp_path: Path) -> None:
    ctx = DictContext(tmp_path / "s")
    op = Process("p", "s", count_fn)
    op.open(ctx)
    op.process([("a", 1, 0), ("a", 1, 1), ("b", 1, 2)])
    assert ctx.dict_view.data["('k', 'a')"] == 2
    assert ctx.dict_view.data["('k', 'b')"] == 1
    puts = ctx.dict_view.puts
    op.process([("a", 1, 3)])
    assert ctx.dict_view.data["('k', 'a')"] == 3
    assert ctx.dict_view.puts == puts + 2  # the changed key and the watermark
    ctx.close()


def test_state_deleted_in_one_batch_is_a_tombstone_at_the_checkpoint(tmp_path: Path) -> None:
    def fn(ctx: ProcessContext, key: Any, value: Any) -> None:
        if value is None:
            ctx.state.delete()
        else:
            ctx.state.set(value)

    ctx = LocalContext(tmp_path / "s", ["v"])
    op = Process("p", "v", fn)
    op.open(ctx)
    op.process([("a", 1, 0), ("b", 2, 0)])
    ctx.commit()
    op.process([("a", None, 1), ("b", 3, 1)])
    changes = ctx.views["v"].take_changes()
    assert dict(zip(map(repr, changes.keys), changes.values, strict=True)) == {
        "('k', 'a')": None,
        "('k', 'b')": 3,
        "('m', 'watermark')": 1,
    }
    ctx.store.write({"v": changes.encoded})
    assert sorted(repr(k) for k, _ in ctx.views["v"].items()) == [
        "['k', 'b']",
        "['m', 'watermark']",
    ]
    ctx.close()


def test_cache_over_its_limit_keeps_every_value(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    view = ctx.views["n"]
    cache = KeyCache(view, lambda key: key, max_keys=3)
    for kid in range(10):
        cache.put(kid, kid, kid * 10)
        cache.after_batch()
    assert len(cache.entries) <= 4

    def read(kid: int) -> Any:
        entry = cache.entries.get(kid)
        return (cache.load(kid, kid) if entry is None else entry).value

    assert [read(kid) for kid in range(10)] == [kid * 10 for kid in range(10)]
    cache.write()
    assert [view.get(kid) for kid in range(10)] == [kid * 10 for kid in range(10)]
    ctx.close()


def test_a_key_changed_after_a_checkpoint_reaches_the_next_one(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    op = Process("p", "n", count_fn)
    op.open(ctx)
    op.process([("a", 1, 0), ("b", 1, 0)])
    ctx.commit()
    op.process([("a", 1, 0), ("a", 1, 0)])
    changes = ctx.views["n"].take_changes()
    assert dict(zip(map(repr, changes.keys), changes.values, strict=True)) == {"('k', 'a')": 3}
    ctx.store.write({"n": changes.encoded})
    op.process([("b", 1, 0)])
    changes = ctx.views["n"].take_changes()
    assert dict(zip(map(repr, changes.keys), changes.values, strict=True)) == {"('k', 'b')": 2}
    ctx.close()
