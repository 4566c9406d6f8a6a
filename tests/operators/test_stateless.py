from __future__ import annotations

from typing import Any

import pytest

from streamflow.operators.stateless import Chain, Step, StepFailed, compile_steps

ITEMS: list[tuple[Any, Any, int]] = [("a", 1, 10), ("b", 2, 20), ("c", 3, 30)]


def test_map_replaces_values_and_keeps_keys_and_times() -> None:
    chain = Chain([Step("map", lambda v: v * 10, "map")])
    assert chain.process(ITEMS) == [("a", 10, 10), ("b", 20, 20), ("c", 30, 30)]


def test_filter_keeps_matching_records() -> None:
    chain = Chain([Step("filter", lambda v: v % 2 == 1, "filter")])
    assert chain.process(ITEMS) == [("a", 1, 10), ("c", 3, 30)]


def test_flat_map_expands_each_value_in_order() -> None:
    chain = Chain([Step("flat_map", lambda v: [v] * v, "flat_map")])
    assert [v for _, v, _ in chain.process(ITEMS)] == [1, 2, 2, 3, 3, 3]


def test_key_by_replaces_the_key() -> None:
    chain = Chain([Step("key_by", lambda v: v % 2, "key_by")])
    assert chain.process(ITEMS) == [(1, 1, 10), (0, 2, 20), (1, 3, 30)]


def test_peek_sees_every_value_and_changes_nothing() -> None:
    seen: list[Any] = []
    chain = Chain([Step("peek", seen.append, "peek")])
    assert chain.process(ITEMS) == ITEMS
    assert seen == [1, 2, 3]


def test_timestamp_step_sets_event_time() -> None:
    chain = Chain([Step("timestamp", lambda v: v * 1000, "ts")])
    assert [t for _, _, t in chain.process(ITEMS)] == [1000, 2000, 3000]


def test_fused_chain_equals_steps_one_by_one() -> None:
    steps = [
        Step("map", lambda v: v + 1, "m"),
        Step("flat_map", lambda v: range(v), "fm"),
        Step("filter", lambda v: v > 0, "f"),
        Step("key_by", lambda v: f"k{v}", "kb"),
        Step("map", str, "m2"),
    ]
    fused = Chain(steps).process(ITEMS)
    items = ITEMS
    for step in steps:
        items = compile_steps([step])(items)
    assert fused == items
    assert fused[0] == ("k1", "1", 10)


def test_process_columns_matches_process() -> None:
    chain = Chain([Step("map", lambda v: -v, "m")])
    keys, values, stamps = (list(c) for c in zip(*ITEMS, strict=True))
    assert chain.process_columns(keys, values, stamps) == chain.process(ITEMS)


def test_failing_function_names_its_step() -> None:
    chain = Chain(
        [
            Step("map", lambda v: v, "map at job.py:3"),
            Step("map", lambda v: 1 // (v - 2), "map at job.py:4"),
        ]
    )
    with pytest.raises(StepFailed, match="map at job.py:4: ZeroDivisionError") as info:
        chain.process(ITEMS)
    assert isinstance(info.value.error, ZeroDivisionError)


def test_step_rejects_bad_kind_and_function() -> None:
    with pytest.raises(ValueError, match="kind"):
        Step("reduce", str, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not callable"):
        Step("map", 3, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        Chain([])
