from __future__ import annotations

import dataclasses
import pickle
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow.operators.windows import (
    WindowedAggregate,
    WindowResult,
    WindowSpec,
    _sorted_as_packed,
    hopping,
    session,
    sliding,
    tumbling,
)
from tests.state.harness import LocalContext, run_batches

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from streamflow.operators.base import Item


def collect(window: WindowSpec, grace_ms: int = 0) -> WindowedAggregate:
    return WindowedAggregate(
        "win", "w", window, grace_ms, initial=list, fold=lambda acc, v: [*acc, v]
    )


def results(items: Sequence[Item]) -> list[tuple[Any, int, int, Any]]:
    out = []
    for key, result, ts in items:
        assert isinstance(result, WindowResult)
        assert key == result.key
        assert ts == result.end - 1
        out.append((result.key, result.start, result.end, result.value))
    return out


def run(
    tmp_path: Path, window: WindowSpec, batches: Sequence[Sequence[Item]], grace_ms: int = 0
) -> tuple[list[tuple[Any, int, int, Any]], list[Item], LocalContext]:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(window, grace_ms)
    op.open(ctx)
    out = run_batches(op, batches)
    out.extend(op.finish())
    return results(out), [item for _, item in ctx.late_items], ctx


def test_window_specs_convert_seconds_to_ms() -> None:
    assert tumbling(seconds=60) == tumbling(ms=60_000)
    assert hopping(60, 10) == hopping(size_ms=60_000, step_ms=10_000)
    assert sliding(0.5).size_ms == 500
    assert session(gap_seconds=30).size_ms == 30_000


def test_window_result_is_a_frozen_value() -> None:
    result = WindowResult("u1", 0, 60_000, (2, 9.5))
    assert result == WindowResult(key="u1", start=0, end=60_000, value=(2, 9.5))
    assert hash(result) == hash(WindowResult("u1", 0, 60_000, (2, 9.5)))
    assert result != WindowResult("u1", 0, 60_000, (2, 9.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.value = 1  # type: ignore[misc]
    assert dataclasses.replace(result, end=1).end == 1
    assert pickle.loads(pickle.dumps(result)) == result
    match result:
        case WindowResult(key, start, end, value):
            assert (key, start, end, value) == ("u1", 0, 60_000, (2, 9.5))
        case _:
            pytest.fail("WindowResult takes four positional fields in a match")


@pytest.mark.parametrize(
    "make",
    [
        lambda: tumbling(),
        lambda: tumbling(seconds=1, ms=1000),
        lambda: tumbling(ms=0),
        lambda: tumbling(seconds=0.0001),
        lambda: hopping(size_ms=10, step_ms=20),
        lambda: session(gap_ms=-1),
    ],
)
def test_window_specs_reject_bad_sizes(make: Any) -> None:
    with pytest.raises(ValueError, match=r"tumbling|hopping|session"):
        make()


def test_tumbling_boundaries_are_start_inclusive_end_exclusive(tmp_path: Path) -> None:
    got, late, _ = run(
        tmp_path,
        tumbling(ms=10),
        [[("a", "x0", 0), ("a", "x9", 9), ("a", "x10", 10), ("a", "x19", 19)]],
    )
    assert got == [("a", 0, 10, ["x0", "x9"]), ("a", 10, 20, ["x10", "x19"])]
    assert late == []


def test_tumbling_windows_align_to_the_epoch(tmp_path: Path) -> None:
    got, _, _ = run(tmp_path, tumbling(ms=60_000), [[("k", 1, 1_704_067_212_345)]])
    assert got == [("k", 1_704_067_200_000, 1_704_067_260_000, [1])]


def test_tumbling_closes_when_watermark_reaches_end_and_routes_late_records(
    tmp_path: Path,
) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(tumbling(ms=10))
    op.open(ctx)
    assert op.process([("a", 1, 1), ("a", 2, 5), ("b", 3, 9)]) == []
    # ts 10 moves the watermark to 10 = end of [0, 10): both keys' windows close, in key order
    closed = results(op.process([("a", 4, 10)]))
    assert closed == [("a", 0, 10, [1, 2]), ("b", 0, 10, [3])]
    # a record for the closed window is late: reported, not added, not emitted again
    assert op.process([("a", 5, 3)]) == []
    assert ctx.late_items == [("win", ("a", 5, 3))]
    assert results(op.finish()) == [("a", 10, 20, [4])]


def test_grace_keeps_a_window_open_for_out_of_order_records(tmp_path: Path) -> None:
    got, late, _ = run(
        tmp_path,
        tumbling(ms=10),
        [[("a", "t1", 1), ("a", "t12", 12), ("a", "t3", 3)], [("a", "t15", 15), ("a", "t4", 4)]],
        grace_ms=5,
    )
    assert got == [("a", 0, 10, ["t1", "t3"]), ("a", 10, 20, ["t12", "t15"])]
    assert late == [("a", "t4", 4)]


def test_window_closes_exactly_at_end_plus_grace(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(tumbling(ms=10), grace_ms=5)
    op.open(ctx)
    assert op.process([("a", 1, 1), ("a", 2, 14)]) == []
    assert results(op.process([("a", 3, 15)])) == [("a", 0, 10, [1])]


def test_hopping_puts_a_record_in_every_window_that_holds_it(tmp_path: Path) -> None:
    got, late, _ = run(tmp_path, hopping(size_ms=10, step_ms=5), [[("a", 7, 7), ("a", 12, 12)]])
    assert got == [
        ("a", 0, 10, [7]),
        ("a", 5, 15, [7, 12]),
        ("a", 10, 20, [12]),
    ]
    assert late == []


def test_hopping_record_missing_one_window_is_late_but_kept_in_open_ones(tmp_path: Path) -> None:
    got, late, _ = run(
        tmp_path, hopping(size_ms=10, step_ms=5), [[("a", 7, 7), ("a", 11, 11), ("a", 8, 8)]]
    )
    assert got == [("a", 0, 10, [7]), ("a", 5, 15, [7, 11, 8]), ("a", 10, 20, [11])]
    assert late == [("a", 8, 8)]


def test_sliding_window_covers_the_trailing_size_up_to_each_record(tmp_path: Path) -> None:
    got, late, _ = run(
        tmp_path, sliding(ms=10), [[("a", 5, 5), ("a", 8, 8), ("a", 14, 14), ("a", 30, 30)]]
    )
    assert got == [
        ("a", -4, 6, [5]),
        ("a", -1, 9, [5, 8]),
        ("a", 5, 15, [5, 8, 14]),
        ("a", 21, 31, [30]),
    ]
    assert late == []


def test_sliding_late_record_still_counts_in_open_windows(tmp_path: Path) -> None:
    got, late, _ = run(tmp_path, sliding(ms=10), [[("a", 5, 5), ("a", 12, 12), ("a", 4, 4)]])
    # 4's own window [-5, 5) closed when the watermark reached 12; [3, 13) is still open
    assert got == [("a", -4, 6, [5]), ("a", 3, 13, [4, 5, 12])]
    assert late == [("a", 4, 4)]


def test_session_extends_while_records_come_within_the_gap(tmp_path: Path) -> None:
    got, late, _ = run(
        tmp_path,
        session(gap_ms=10),
        [[("a", 0, 0), ("a", 5, 5), ("a", 30, 30), ("c", 50, 50), ("c", 45, 45)]],
    )
    assert got == [("a", 0, 15, [0, 5]), ("a", 30, 40, [30]), ("c", 45, 60, [45, 50])]
    assert late == []


def test_session_merges_when_a_record_bridges_two(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(session(gap_ms=10), grace_ms=10)
    op.open(ctx)
    assert op.process([("b", 100, 100), ("b", 115, 115)]) == []
    assert sorted(k[2] for k, _ in ctx.views["w"].items() if k[0] == "s") == [100, 115]
    assert op.process([("b", 107, 107)]) == []
    assert [k for k, _ in ctx.views["w"].items() if k[0] == "s"] == [["s", "b", 100]]
    assert results(op.finish()) == [("b", 100, 125, [100, 107, 115])]


def test_session_record_after_close_is_late(tmp_path: Path) -> None:
    got, late, _ = run(tmp_path, session(gap_ms=10), [[("a", 1, 0), ("a", 2, 200)], [("a", 3, 5)]])
    assert got == [("a", 0, 10, [1]), ("a", 200, 210, [2])]
    assert late == [("a", 3, 5)]


def test_reduce_and_count_over_windows(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "state", ["r", "c"])
    reduce_op = WindowedAggregate("r", "r", tumbling(ms=10), 0, None, max)
    count_op = WindowedAggregate("c", "c", tumbling(ms=10), 0, lambda: 0, lambda n, _: n + 1)
    reduce_op.open(ctx)
    count_op.open(ctx)
    items: list[Item] = [("k", 3, 1), ("k", 9, 2), ("k", 4, 3)]
    reduced = results(run_batches(reduce_op, [items]) + reduce_op.finish())
    counted = results(run_batches(count_op, [items]) + count_op.finish())
    assert reduced == [("k", 0, 10, 9)]
    assert counted == [("k", 0, 10, 3)]


def test_closed_windows_leave_no_state(tmp_path: Path) -> None:
    for window in (tumbling(ms=10), hopping(size_ms=10, step_ms=5), session(gap_ms=10)):
        ctx = LocalContext(tmp_path / window.kind, ["w"])
        op = collect(window)
        op.open(ctx)
        for t in range(0, 10_000, 3):
            op.process([(t % 7, t, t)])
        op.finish()
        ctx.commit()
        assert ctx.store.count("w") == 1  # only the watermark
        ctx.close()


def test_open_windows_survive_a_restart(tmp_path: Path) -> None:
    items: list[Item] = [("a", 1, 1), ("b", 2, 4), ("a", 3, 12), ("a", 4, 7), ("b", 5, 25)]
    for window in (
        tumbling(ms=10),
        hopping(size_ms=10, step_ms=5),
        sliding(ms=10),
        session(gap_ms=6),
    ):
        whole, whole_late, ctx = run(tmp_path / f"{window.kind}-whole", window, [items], grace_ms=3)
        ctx.close()

        first = LocalContext(tmp_path / f"{window.kind}-split", ["w"])
        op = collect(window, grace_ms=3)
        op.open(first)
        out = op.process(items[:3])
        first.commit()
        first.close()
        second = LocalContext(tmp_path / f"{window.kind}-split", ["w"])
        op = collect(window, grace_ms=3)
        op.open(second)
        out += op.process(items[3:])
        out += op.finish()
        assert results(out) == whole, window.kind
        assert [item for _, item in second.late_items] == whole_late
        second.close()


events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 99), st.integers(0, 120)),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(
    items=events,
    cuts=st.lists(st.integers(0, 40), max_size=6),
    kind=st.sampled_from(["tumbling", "hopping", "sliding", "session"]),
)
def test_results_do_not_depend_on_batching(
    tmp_path_factory: pytest.TempPathFactory, items: list[Item], cuts: list[int], kind: str
) -> None:
    window = {
        "tumbling": tumbling(ms=10),
        "hopping": hopping(size_ms=10, step_ms=4),
        "sliding": sliding(ms=10),
        "session": session(gap_ms=7),
    }[kind]
    bounds = sorted({0, len(items), *(c for c in cuts if c < len(items))})
    batches = [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    whole, whole_late, ctx1 = run(tmp_path_factory.mktemp("whole"), window, [items], grace_ms=5)
    split, split_late, ctx2 = run(tmp_path_factory.mktemp("split"), window, batches, grace_ms=5)
    ctx1.close()
    ctx2.close()
    assert split == whole
    assert split_late == whole_late
    # every record is either in a result or reported late
    seen = {v for *_, acc in whole for v in acc} | {v for _, v, _ in whole_late}
    assert seen == {v for _, v, _ in items}


def test_tumbling_window_opened_out_of_order_closes_first(tmp_path: Path) -> None:
    # [50, 60) opens first; then a record within grace opens [40, 50), which
    # ends earlier and must close first, as soon as the watermark reaches 50 + 100.
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(tumbling(ms=10), grace_ms=100)
    op.open(ctx)
    assert op.process([("a", 1, 55), ("b", 2, 45)]) == []
    assert op.process([("a", 3, 149)]) == []
    assert results(op.process([("c", 4, 150)])) == [("b", 40, 50, [2])]
    assert results(op.process([("c", 5, 160)])) == [("a", 50, 60, [1])]
    ctx.close()


def test_tumbling_closes_each_window_when_its_end_plus_grace_is_reached(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(tumbling(ms=10), grace_ms=5)
    op.open(ctx)
    assert op.process([("a", 1, 3), ("b", 2, 12)]) == []
    assert results(op.process([("a", 3, 14)])) == []
    assert results(op.process([("a", 4, 15)])) == [("a", 0, 10, [1])]
    assert results(op.process([("c", 5, 24), ("c", 6, 25)])) == [
        ("a", 10, 20, [3, 4]),
        ("b", 10, 20, [2]),
    ]
    ctx.close()


def test_window_closed_between_checkpoints_leaves_no_tombstone(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(tumbling(ms=10))
    op.open(ctx)
    op.process([("a", 1, 1), ("b", 2, 12)])  # opens [0, 10) and [10, 20), closes [0, 10)
    changes = ctx.views["w"].take_changes()
    # [0, 10) never reached the store: nothing to delete. [10, 20) is open.
    assert sorted(map(repr, changes.keys)) == ["('m', 'watermark')", "('w', 'b', 10)"]
    ctx.store.write({"w": changes.encoded})
    assert results(op.process([("c", 3, 25)])) == [("b", 10, 20, [2])]
    changes = ctx.views["w"].take_changes()
    # [10, 20) was stored, so closing it deletes it; [20, 30) is new.
    assert dict(zip(map(repr, changes.keys), changes.values, strict=True)) == {
        "('w', 'b', 10)": None,
        "('m', 'watermark')": 25,
        "('w', 'c', 20)": [3],
    }
    ctx.close()


@pytest.mark.parametrize("window", [tumbling(ms=10), hopping(size_ms=10, step_ms=5)])
def test_aligned_windows_keep_keys_apart_that_msgpack_stores_apart(
    tmp_path: Path, window: WindowSpec
) -> None:
    items: list[Item] = [(None, "n", 1), (1, "i", 2), (True, "t", 3), (1.0, "f", 4)]
    items += [(("a", 1), "tuple", 5), (["a", 1], "list", 6)]
    split, late, ctx = run(tmp_path / "split", window, [items[:3], items[3:]])
    assert late == []
    firsts = {repr(key): value for key, start, _, value in split if start == 0}
    assert firsts == {
        "None": ["n"],
        "1": ["i"],
        "True": ["t"],
        "1.0": ["f"],
        "('a', 1)": ["tuple", "list"],  # a tuple and a list are the same stored key
    }
    # A restart in the middle gives the same results.
    first = LocalContext(tmp_path / "restart", ["w"])
    op = collect(window)
    op.open(first)
    out = op.process(items[:3])
    first.commit()
    first.close()
    second = LocalContext(tmp_path / "restart", ["w"])
    op = collect(window)
    op.open(second)
    out += op.process(items[3:]) + op.finish()
    assert results(out) == split
    ctx.close()
    second.close()


def test_late_record_between_two_of_an_open_window_does_not_make_the_next_late(
    tmp_path: Path,
) -> None:
    # Found by test_results_do_not_depend_on_batching: the late record (window
    # [0, 10), closed at 15) sits between two records of the open [10, 20).
    items: list[Item] = [("a", 1, 15), ("a", 2, 0), ("a", 3, 10)]
    out, late, ctx = run(tmp_path, tumbling(ms=10), [items], grace_ms=5)
    assert out == [("a", 10, 20, [1, 3])]
    assert late == [("a", 2, 0)]
    ctx.close()


@pytest.mark.parametrize("window", [tumbling(ms=10), hopping(size_ms=10, step_ms=5)])
def test_window_keeps_folding_after_each_checkpoint(tmp_path: Path, window: WindowSpec) -> None:
    ctx = LocalContext(tmp_path / "state", ["w"])
    op = collect(window)
    op.open(ctx)
    assert op.process([("a", 1, 1), (("t", 1), 2, 2)]) == []
    ctx.commit()
    assert op.process([("a", 3, 3), (("t", 1), 4, 4)]) == []
    ctx.commit()
    out = results(op.process([("a", 5, 5)]) + op.finish())
    # msgpack puts a 2-array (0x92) before a 1-char str (0xa1)
    whole = [(("t", 1), 0, 10, [2, 4]), ("a", 0, 10, [1, 3, 5])]
    if window.kind == "hopping":
        whole = [(("t", 1), -5, 5, [2, 4]), ("a", -5, 5, [1, 3]), *whole, ("a", 5, 15, [5])]
    assert out == whole
    ctx.commit()
    assert ctx.store.count("w") == 1  # only the watermark
    ctx.close()


def packed(key: Any) -> bytes:
    return msgpack.packb(key, use_bin_type=True)


def model_aligned(
    window: WindowSpec, grace_ms: int, items: Sequence[Item]
) -> tuple[list[tuple[bytes, int, int, Any]], list[Item]]:
    """Tumbling and hopping windows by brute force (module docstring of ``windows``)."""
    size = window.size_ms
    accs: dict[tuple[int, bytes], list[Any]] = {}
    out: list[tuple[bytes, int, int, Any]] = []
    late: list[Item] = []
    wm: int | None = None

    def close(limit: int) -> None:
        # Results come in (end, start, msgpack bytes of the key) order.
        for start, kb in sorted(w for w in accs if w[0] + size <= limit):
            out.append((kb, start, start + size, accs.pop((start, kb))))

    for key, value, ts in items:
        if wm is None or ts > wm:
            wm = ts
            close(wm - grace_ms)
        missed = False
        for start in range(ts - ts % window.step_ms, ts - size, -window.step_ms):
            if start + size + grace_ms <= wm:
                missed = True
            else:
                accs.setdefault((start, packed(key)), []).append(value)
        if missed:
            late.append((key, value, ts))
    if accs:
        close(max(start for start, _ in accs) + size)
    return out, late


window_keys = st.one_of(
    st.lists(st.integers(0, 300) | st.just((1 << 64) - 1), min_size=1, max_size=5),
    st.lists(st.integers(-(1 << 63), (1 << 64) - 1), min_size=1, max_size=5),
    st.lists(
        st.text("ab", max_size=3) | st.text("ab", min_size=30, max_size=34), min_size=1, max_size=5
    ),
    st.lists(st.text("aé\U0001f600", max_size=3), min_size=1, max_size=5),
    st.lists(
        st.none()
        | st.booleans()
        | st.integers(-40, 40)
        | st.text("ab", max_size=2)
        | st.binary(max_size=2)
        | st.tuples(st.integers(0, 2)),
        min_size=1,
        max_size=6,
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    keys=window_keys,
    hopping_window=st.booleans(),
    grace_ms=st.integers(0, 12),
    cuts=st.lists(st.integers(0, 60), max_size=8),
)
def test_aligned_windows_match_a_brute_force_model_across_checkpoints_and_restarts(
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    keys: list[Any],
    hopping_window: bool,
    grace_ms: int,
    cuts: list[int],
) -> None:
    items = data.draw(
        st.lists(
            st.tuples(st.sampled_from(keys), st.integers(0, 99), st.integers(0, 60)),
            max_size=60,
        )
    )
    window = hopping(size_ms=10, step_ms=4) if hopping_window else tumbling(ms=10)
    want, want_late = model_aligned(window, grace_ms, items)
    # Each cut is a checkpoint; every other one is also a restart from the store.
    path = tmp_path_factory.mktemp("aligned") / "state"
    bounds = sorted({0, len(items), *(c for c in cuts if c < len(items))})
    ctx = LocalContext(path, ["w"])
    op = collect(window, grace_ms)
    op.open(ctx)
    out: list[Item] = []
    late: list[Item] = []
    for n, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        out += op.process(items[a:b])
        ctx.commit()
        if n % 2:
            late += [item for _, item in ctx.late_items]
            ctx.close()
            ctx = LocalContext(path, ["w"])
            op = collect(window, grace_ms)
            op.open(ctx)
    out += op.finish()
    late += [item for _, item in ctx.late_items]
    ctx.commit()
    assert ctx.store.count("w") == (1 if items else 0)  # only the watermark is left
    ctx.close()
    assert [(packed(k), s, e, v) for k, s, e, v in results(out)] == want
    assert late == want_late


key_ids = (
    st.integers(0, (1 << 64) - 1),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.text("ab", max_size=3) | st.text("ab", min_size=30, max_size=300),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=3),
    st.builds(packed, st.floats(allow_nan=False) | st.tuples(st.integers(-5, 300))),
)


@given(
    ids=st.one_of(
        *(st.lists(kind, unique=True) for kind in key_ids),
        st.lists(st.one_of(*key_ids), unique=True),
    )
)
def test_key_ids_sort_as_their_keys_msgpack_bytes(ids: list[Any]) -> None:
    want = sorted(ids, key=lambda kid: kid if type(kid) is bytes else packed(kid))
    assert _sorted_as_packed(ids) == want
