from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamflow.operators.aggregate import Aggregate, count_op, reduce_op
from tests.state.harness import LocalContext, values

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.operators.base import Item


def spend(name: str = "spend") -> Aggregate:
    return Aggregate(
        name,
        "spend",
        initial=lambda: {"n": 0, "total": 0.0},
        fold=lambda acc, v: {"n": acc["n"] + 1, "total": acc["total"] + v},
    )


def test_aggregate_emits_the_new_value_after_each_input(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["spend"])
    op = spend()
    op.open(ctx)
    out = op.process([("u1", 5.0, 10), ("u2", 1.0, 11), ("u1", 2.5, 12)])
    assert out == [
        ("u1", {"n": 1, "total": 5.0}, 10),
        ("u2", {"n": 1, "total": 1.0}, 11),
        ("u1", {"n": 2, "total": 7.5}, 12),
    ]
    assert op.on_watermark(1_000) == []
    assert op.finish() == []


def test_count_emits_ints_per_key(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    op = count_op("count", "n")
    op.open(ctx)
    out = op.process([("a", "x", 1), ("b", "y", 2), ("a", "z", 3)])
    assert out == [("a", 1, 1), ("b", 1, 2), ("a", 2, 3)]
    assert all(type(v) is int for v in values(out))


def test_reduce_starts_from_the_first_value(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["max"])
    op = reduce_op("max", "max", max)
    op.open(ctx)
    assert values(op.process([("a", 3, 1), ("a", 1, 2), ("a", 7, 3), ("b", -4, 4)])) == [
        3,
        3,
        7,
        -4,
    ]


def test_aggregate_state_survives_a_restart(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["spend"])
    op = spend()
    op.open(ctx)
    op.process([("u1", 5.0, 1), ("u1", 1.0, 2)])
    ctx.commit()
    op.process([("u1", 100.0, 3)])  # not committed: lost with the crash below
    ctx.close()

    ctx = LocalContext(tmp_path / "s", ["spend"])
    op = spend()
    op.open(ctx)
    assert op.process([("u1", 4.0, 4)]) == [("u1", {"n": 3, "total": 10.0}, 4)]


def test_aggregate_keys_may_be_structured(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["n"])
    op = count_op("count", "n")
    op.open(ctx)
    items: list[Item] = [(("u", 1), None, 1), (("u", 1), None, 2), (None, None, 3)]
    assert values(op.process(items)) == [1, 2, 1]
    ctx.commit()
    stored: dict[Any, Any] = {repr(k): v for k, v in ctx.views["n"].items()}
    assert stored == {"['u', 1]": 2, "None": 1}
