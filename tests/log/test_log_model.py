"""The log against a plain list: random appends, reads, rolls, reopens and crashes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamflow.errors import OffsetOutOfRange
from streamflow.log import Log

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
values = st.recursive(
    scalars | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)
appends = st.tuples(
    st.just("append"),
    st.lists(st.tuples(scalars, values), min_size=1, max_size=30),
)
ops = st.lists(
    appends
    | st.tuples(st.just("read"), st.integers(-2, 400), st.integers(1, 50))
    | st.tuples(st.just("read_batches"), st.integers(-2, 400), st.integers(1, 5000))
    | st.tuples(st.just("roll"))
    | st.tuples(st.just("reopen"))
    | st.tuples(st.just("crash")),
    max_size=30,
)


def check_read(model: list[tuple[Any, Any]], got: list[tuple[int, Any, Any]], offset: int) -> None:
    assert got, "a read before the end returns something"
    assert [o for o, _, _ in got] == list(range(offset, offset + len(got)))
    assert [(k, v) for _, k, v in got] == model[offset : offset + len(got)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
def test_log_matches_a_list(tmp_path_factory: pytest.TempPathFactory, steps: list[Any]) -> None:
    path = tmp_path_factory.mktemp("model")
    model: list[tuple[Any, Any]] = []
    log = Log.open(path)
    log.create_topic("t", segment_bytes=4096)
    try:
        for step in steps:
            p = log.partition("t", 0)
            kind = step[0]
            if kind == "append":
                records = step[1]
                base = p.append_columns([k for k, _ in records], [v for _, v in records])
                assert base == len(model)
                model.extend(records)
            elif kind in ("read", "read_batches"):
                offset, limit = step[1], step[2]
                if not 0 <= offset <= len(model):
                    with pytest.raises(OffsetOutOfRange):
                        p.read(offset)
                    continue
                if kind == "read":
                    got = [(r.offset, r.key, r.value) for r in p.read(offset, max_records=limit)]
                    assert len(got) <= limit
                else:
                    batches = p.read_batches(offset, max_bytes=limit)
                    got = [
                        (o, k, v)
                        for b in batches
                        for o, k, v in zip(b.offsets, b.keys, b.values, strict=True)
                    ]
                if offset == len(model):
                    assert got == []
                else:
                    check_read(model, got, offset)
            elif kind == "roll":
                p.roll()
            elif kind == "reopen":
                log.close()
                log = Log.open(path)
            else:
                log.abandon()
                log = Log.open(path)
            p = log.partition("t", 0)
            assert (p.start_offset, p.end_offset) == (0, len(model))
        p = log.partition("t", 0)
        if model:
            check_read(model, [(r.offset, r.key, r.value) for r in p.read(0, 10_000)], 0)
    finally:
        log.close()
