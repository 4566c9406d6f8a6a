from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from streamflow.errors import OperatorError, PipelineError
from streamflow.log import Message
from streamflow.log.client import connect
from streamflow.pipeline import Pipeline
from streamflow.testing import run_pipeline, run_pipeline_async

if TYPE_CHECKING:
    from pathlib import Path


def test_run_pipeline_returns_every_sink_topic() -> None:
    p = Pipeline("t")
    s = p.source("in", timestamp=lambda v: v["ts"])
    s.filter(lambda v: v["amount"] > 10).sink("big")
    s.key_by(lambda v: v["user"]).map(lambda v: v["amount"]).sink("by_user")
    inputs = [{"user": f"u{i % 3}", "amount": i * 5, "ts": 1000 + i} for i in range(6)]
    out = run_pipeline(p, {"in": inputs})
    assert [r.value["amount"] for r in out["big"]] == [15, 20, 25]
    assert [r.timestamp for r in out["big"]] == [1003, 1004, 1005]
    assert [(r.key, r.value) for r in out["by_user"]] == [
        ("u0", 0),
        ("u1", 5),
        ("u2", 10),
        ("u0", 15),
        ("u1", 20),
        ("u2", 25),
    ]


def test_messages_carry_keys_and_timestamps() -> None:
    p = Pipeline("t")
    p.source("in").map(lambda v: v.upper()).sink("out")
    out = run_pipeline(p, {"in": [Message("k1", "a", timestamp=5), Message("k2", "b", 6)]})
    assert [(r.key, r.value, r.timestamp) for r in out["out"]] == [("k1", "A", 5), ("k2", "B", 6)]


def test_run_pipeline_is_deterministic() -> None:
    p = Pipeline("t")
    p.source("in").key_by(lambda v: v % 4).map(lambda v: v * v).sink("out")
    inputs = {"in": [Message(i % 5, i, timestamp=i) for i in range(40)]}
    first = run_pipeline(p, inputs)["out"]
    assert run_pipeline(p, inputs)["out"] == first
    assert [r.value for r in first] == [i * i for i in range(40)]


def test_parallel_run_keeps_each_key_on_one_partition() -> None:
    p = Pipeline("t", parallelism=3)
    p.source("in").key_by(lambda v: v % 4).map(lambda v: v * v).sink("out")
    inputs = {"in": [Message(i % 5, i, timestamp=i) for i in range(40)]}
    first = run_pipeline(p, inputs)["out"]
    second = run_pipeline(p, inputs)["out"]
    assert sorted((r.partition, r.key, r.value) for r in first) == sorted(
        (r.partition, r.key, r.value) for r in second
    )
    assert sorted(r.value for r in first) == sorted(i * i for i in range(40))


def test_unknown_input_topic_is_rejected() -> None:
    p = Pipeline("t")
    p.source("in").sink("out")
    with pytest.raises(PipelineError, match=r"does not read; its source topics are \['in'\]"):
        run_pipeline(p, {"other": [1]})


def test_operator_error_surfaces() -> None:
    p = Pipeline("t")
    p.source("in").map(lambda v: 1 // v).sink("out")
    with pytest.raises(OperatorError, match=r"at offset 1: ZeroDivisionError"):
        run_pipeline(p, {"in": [1, 0, 2]})


async def test_async_variant_keeps_the_directory(tmp_path: Path) -> None:
    p = Pipeline("t")
    p.source("in").sink("out")
    out = await run_pipeline_async(p, {"in": [1, 2]}, directory=tmp_path)
    assert [r.value for r in out["out"]] == [1, 2]
    async with connect(tmp_path) as client:
        assert "out" in await client.transport.topics()
