"""Stateful operators end to end through ``streamflow.testing.run_pipeline`` (real log and LMDB)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from streamflow import Pipeline, windows
from streamflow.log import Log, Message
from streamflow.testing import run_pipeline

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log import Record
    from streamflow.operators.process import ProcessContext


def at(ts: int, value: Any, key: Any = None) -> Message:
    return Message(key=key, value=value, timestamp=ts)


def pairs(records: list[Record]) -> list[tuple[Any, Any]]:
    return [(r.key, r.value) for r in records]


def windowed(records: list[Record]) -> list[tuple[Any, int, int, Any]]:
    return [(r.key, r.value["start"], r.value["end"], r.value["value"]) for r in records]


def read_all(directory: Path, topic: str) -> list[Record]:
    with Log.open(directory) as log:
        partition = log.partition(topic, 0)
        return partition.read(partition.start_offset, max_records=10_000)


def test_count_emits_the_keys_new_count_per_input() -> None:
    p = Pipeline("counts")
    p.source("clicks").key_by(lambda v: v["user"]).count("n").sink("out")
    out = run_pipeline(p, {"clicks": [{"user": u} for u in "abab a"]})
    assert pairs(out["out"]) == [("a", 1), ("b", 1), ("a", 2), ("b", 2), (" ", 1), ("a", 3)]


def test_reduce_keeps_a_running_value_per_key() -> None:
    p = Pipeline("maxes")
    (
        p.source("readings")
        .key_by(lambda v: v["sensor"])
        .map(lambda v: v["temp"])
        .reduce("max", max)
        .sink("out")
    )
    values = [("s1", 3), ("s2", 9), ("s1", 7), ("s1", 5), ("s2", 1)]
    out = run_pipeline(p, {"readings": [{"sensor": s, "temp": t} for s, t in values]})
    assert pairs(out["out"]) == [("s1", 3), ("s2", 9), ("s1", 7), ("s1", 7), ("s2", 9)]


def test_aggregate_folds_from_initial() -> None:
    p = Pipeline("totals")
    (
        p.source("pay")
        .key_by(lambda v: v["u"])
        .aggregate("sum", initial=lambda: 100, fold=lambda acc, v: acc + v["x"])
        .sink("out")
    )
    out = run_pipeline(p, {"pay": [{"u": 1, "x": 5}, {"u": 1, "x": 6}]})
    assert pairs(out["out"]) == [(1, 105), (1, 111)]


def window_pipeline(spec: windows.WindowSpec, grace_ms: int = 0) -> Pipeline:
    p = Pipeline("win")
    (
        p.source("events", timestamp=lambda v: v["ts"])
        .key_by(lambda v: v["k"])
        .window(spec, grace_ms=grace_ms)
        .count("n")
        .sink("out")
    )
    return p


def events(*stamps: int, key: str = "k") -> list[dict[str, Any]]:
    return [{"k": key, "ts": ts} for ts in stamps]


def test_tumbling_windows_align_to_the_epoch_and_close_once() -> None:
    out = run_pipeline(window_pipeline(windows.tumbling(ms=10)), {"events": events(1, 5, 12, 25)})
    assert windowed(out["out"]) == [("k", 0, 10, 2), ("k", 10, 20, 1), ("k", 20, 30, 1)]


def test_hopping_windows_hold_each_record_size_over_step_times() -> None:
    spec = windows.hopping(size_ms=10, step_ms=5)
    out = run_pipeline(window_pipeline(spec), {"events": events(1, 7, 12)})
    assert sorted(windowed(out["out"])) == [
        ("k", -5, 5, 1),
        ("k", 0, 10, 2),
        ("k", 5, 15, 2),
        ("k", 10, 20, 1),
    ]


def test_sliding_windows_trail_each_distinct_event_time() -> None:
    out = run_pipeline(window_pipeline(windows.sliding(ms=10)), {"events": events(1, 5, 12)})
    assert windowed(out["out"]) == [("k", -8, 2, 1), ("k", -4, 6, 2), ("k", 3, 13, 2)]


def test_session_windows_merge_when_a_record_bridges_them() -> None:
    spec = windows.session(gap_ms=5)
    out = run_pipeline(window_pipeline(spec, grace_ms=10), {"events": events(1, 9, 5, 40)})
    assert windowed(out["out"]) == [("k", 1, 14, 3), ("k", 40, 45, 1)]


def test_late_records_go_to_the_late_topic(tmp_path: Path) -> None:
    p = window_pipeline(windows.tumbling(ms=10), grace_ms=2)
    out = run_pipeline(p, {"events": events(5, 11, 3, 12, 8, 30)}, directory=tmp_path)
    # 12 moves the watermark to end 10 + grace 2: [0, 10) closes, so 8 is late; 3 is not.
    assert windowed(out["out"]) == [("k", 0, 10, 2), ("k", 10, 20, 2), ("k", 30, 40, 1)]
    late = read_all(tmp_path, "win.late")
    assert [(r.key, r.value["ts"]) for r in late] == [("k", 8)]
    assert late[0].headers is not None
    assert "window_aggregate 'n'" in late[0].headers["operator"]


def test_a_filtered_out_record_does_not_close_a_window() -> None:
    # The window's watermark is the largest event time among records that reach it;
    # see docs/state.md, "Windows and time".
    p = Pipeline("win")
    (
        p.source("events", timestamp=lambda v: v["ts"])
        .filter(lambda v: not v.get("drop"))
        .window(windows.tumbling(ms=10))
        .count("n")
        .sink("out")
    )
    inputs = [at(1, {"ts": 1}, "k"), at(50, {"ts": 50, "drop": True}, "k"), at(4, {"ts": 4}, "k")]
    out = run_pipeline(p, {"events": inputs})
    assert windowed(out["out"]) == [("k", 0, 10, 2)]


def count_then_report(ctx: ProcessContext, key: Any, value: Any) -> None:
    seen = ctx.state.get(0)
    ctx.state.set(seen + 1)
    if seen == 0:
        ctx.register_timer(ctx.timestamp + 10, tag="report")


def report(ctx: ProcessContext, tag: Any) -> None:
    ctx.emit({"tag": tag, "n": ctx.state.get(), "at": ctx.timestamp})
    ctx.state.delete()


def test_process_timers_fire_on_event_time_with_the_keys_state() -> None:
    p = Pipeline("proc")
    (
        p.source("events", timestamp=lambda v: v["ts"])
        .key_by(lambda v: v["k"])
        .process("per_key", count_then_report, on_timer=report)
        .sink("out")
    )
    stream = [{"k": "a", "ts": 1}, {"k": "a", "ts": 3}, {"k": "b", "ts": 5}, {"k": "a", "ts": 20}]
    out = run_pipeline(p, {"events": stream})
    assert pairs(out["out"]) == [
        ("a", {"tag": "report", "n": 2, "at": 11}),
        ("b", {"tag": "report", "n": 1, "at": 15}),
    ]


def test_process_without_on_timer_cannot_register_timers() -> None:
    from streamflow.errors import OperatorError

    p = Pipeline("proc")
    p.source("events").key_by(lambda v: v).process("x", count_then_report).sink("out")
    with pytest.raises(OperatorError, match="on_timer"):
        run_pipeline(p, {"events": [1]})


def enrich(payment: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    return {**payment, "name": None if user is None else user["name"]}


@pytest.mark.parametrize("policy", ["compact", "delete"])
def test_join_enriches_a_stream_from_a_topic_table(tmp_path: Path, policy: str) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("users", partitions=1, cleanup_policy=policy)
    p = Pipeline("enrich")
    users = p.source("users").to_table("users")
    p.source("payments").join(users, enrich).sink("out")
    run_pipeline(
        p,
        {"users": [Message(1, {"name": "ann"}), Message(2, {"name": "bo"}), Message(1, None)]},
        directory=tmp_path,
    )
    run_pipeline(
        p,
        {"users": [Message(3, {"name": "cy"})]},
        directory=tmp_path,
    )
    out = run_pipeline(
        p,
        {"payments": [Message(2, {"x": 1}), Message(1, {"x": 2}), Message(3, {"x": 3})]},
        directory=tmp_path,
    )
    # user 1 was deleted by a tombstone: a left join gives None
    assert pairs(out["out"]) == [
        (2, {"x": 1, "name": "bo"}),
        (1, {"x": 2, "name": None}),
        (3, {"x": 3, "name": "cy"}),
    ]


def test_join_enriches_from_a_table_built_with_to_table(tmp_path: Path) -> None:
    p = Pipeline("enrich2")
    table = p.source("profiles").key_by(lambda v: v["id"]).to_table("latest")
    (
        p.source("orders")
        .key_by(lambda v: v["user"])
        .join(table, lambda order, prof: (order["sku"], prof and prof["tier"]))
        .sink("out")
    )
    profiles = [
        {"id": "u1", "tier": "gold"},
        {"id": "u2", "tier": "tin"},
        {"id": "u1", "tier": "x"},
    ]
    run_pipeline(p, {"profiles": profiles}, directory=tmp_path)
    orders = [{"user": "u1", "sku": 1}, {"user": "u3", "sku": 2}, {"user": "u2", "sku": 3}]
    out = run_pipeline(p, {"orders": orders}, directory=tmp_path)
    assert pairs(out["out"]) == [("u1", [1, "x"]), ("u3", [2, None]), ("u2", [3, "tin"])]
