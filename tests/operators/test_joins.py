from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamflow.operators.joins import TableJoin, ToTable
from tests.state.harness import LocalContext

if TYPE_CHECKING:
    from pathlib import Path


def enrich(value: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    return {**value, "country": None if user is None else user["country"]}


def test_stream_table_join_uses_the_latest_table_value(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["users"])
    table = ToTable("users", "users")
    join = TableJoin("enrich", "users", enrich)
    table.open(ctx)
    join.open(ctx)
    assert join.store is None
    assert join.table_store == "users"

    passed = table.process([("u1", {"country": "FR"}, 1), ("u2", {"country": "DE"}, 2)])
    assert [k for k, _, _ in passed] == ["u1", "u2"]
    assert join.process([("u1", {"amount": 5}, 3), ("u3", {"amount": 1}, 4)]) == [
        ("u1", {"amount": 5, "country": "FR"}, 3),
        ("u3", {"amount": 1, "country": None}, 4),
    ]
    table.process([("u1", {"country": "IT"}, 5), ("u2", None, 6)])  # update, delete
    assert join.process([("u1", {"amount": 2}, 7), ("u2", {"amount": 3}, 8)]) == [
        ("u1", {"amount": 2, "country": "IT"}, 7),
        ("u2", {"amount": 3, "country": None}, 8),
    ]


def test_table_survives_a_restart(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "s", ["users"])
    table = ToTable("users", "users")
    table.open(ctx)
    table.process([("u1", {"country": "FR"}, 1), ("u2", {"country": "DE"}, 2), ("u2", None, 3)])
    ctx.commit()
    ctx.close()

    ctx = LocalContext(tmp_path / "s", ["users"])
    join = TableJoin("enrich", "users", enrich)
    join.open(ctx)
    assert dict(ctx.views["users"].items()) == {"u1": {"country": "FR"}}
    assert join.process([("u1", {}, 9), ("u2", {}, 9)]) == [
        ("u1", {"country": "FR"}, 9),
        ("u2", {"country": None}, 9),
    ]
