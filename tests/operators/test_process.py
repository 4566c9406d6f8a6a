from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from streamflow.operators.process import Process, ProcessContext
from tests.state.harness import LocalContext, run_batches

if TYPE_CHECKING:
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
