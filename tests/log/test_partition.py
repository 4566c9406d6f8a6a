from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from streamflow.errors import NotSerializable, OffsetOutOfRange, RecordTooLarge
from streamflow.log import Log, Message, RecordBatch

if TYPE_CHECKING:
    from pathlib import Path


def test_append_and_read_round_trip(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 1_000) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        first = p.append(
            [
                Message(key=1, value={"amount": 9.5}),
                Message(key="k", value=[1, 2], timestamp=7, headers={"h": b"x"}),
            ]
        )
        assert first == 0
        assert p.append_columns([None, b"k"], [None, "v"]) == 2
        records = p.read(0)
    assert [r.offset for r in records] == [0, 1, 2, 3]
    assert [r.value for r in records] == [{"amount": 9.5}, [1, 2], None, "v"]
    assert [r.key for r in records] == [1, "k", None, b"k"]
    assert [r.timestamp for r in records] == [1_000, 7, 1_000, 1_000]
    assert [r.headers for r in records] == [None, {"h": b"x"}, None, None]
    assert {(r.topic, r.partition) for r in records} == {("t", 0)}


def test_read_batches_is_columnar_and_trimmed(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append_columns(list(range(5)), [f"v{i}" for i in range(5)], [10, 11, 12, 13, 14])
        p.append_columns([5], ["v5"], [15])
        batches = p.read_batches(3)
    assert batches == [
        RecordBatch([3, 4], [13, 14], [3, 4], ["v3", "v4"], None),
        RecordBatch([5], [15], [5], ["v5"], None),
    ]


def test_read_batches_returns_one_batch_bigger_than_max_bytes(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append_columns([None] * 3, [b"x" * 1000] * 3)
        p.append_columns([None], [b"y"])
        batches = p.read_batches(0, max_bytes=10)
        assert [len(b) for b in batches] == [3]
        assert [len(b) for b in p.read_batches(0, max_records=2)] == [2]
        assert [len(b) for b in p.read_batches(0)] == [3, 1]


def test_read_limits_records_across_batches_and_segments(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        for i in range(100):
            p.append_columns([i], [b"z" * 100])
        assert p.segment_count > 2
        assert [r.offset for r in p.read(10, max_records=60)] == list(range(10, 70))
        assert [r.offset for r in p.read(95)] == list(range(95, 100))


def test_a_byte_budget_ending_inside_a_segment_never_skips_records(tmp_path: Path) -> None:
    # Batches of 1 to 9 records over 4 KiB segments: a budget that runs out in
    # one segment must end the read there, not go on with the next segment.
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        offset = 0
        for n in [1, 9, 3, 7, 2, 8, 5, 4, 6] * 12:
            p.append_columns(list(range(offset, offset + n)), ["v" * (offset % 50)] * n)
            offset += n
        assert p.segment_count > 3
        for start in range(0, p.end_offset, 7):
            for max_bytes in (1, 200, 700, 1500, 5000):
                got: list[int] = []
                position = start
                while position < p.end_offset:
                    batches = p.read_batches(position, max_bytes=max_bytes)
                    got.extend(o for b in batches for o in b.offsets)
                    position = batches[-1].next_offset
                assert got == list(range(start, p.end_offset)), (start, max_bytes)


def test_offsets_out_of_range(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append_columns([None], [1])
        assert p.read(1) == []
        with pytest.raises(OffsetOutOfRange):
            p.read(2)
        with pytest.raises(OffsetOutOfRange):
            p.read(-1)
        with pytest.raises(OffsetOutOfRange):
            p.read_batches(5)
        assert p.read(0)[0].value == 1


def test_offset_for_timestamp(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        for i in range(200):
            p.append_columns([None, None], [b"q" * 40, b"r"], [i * 10, i * 10 + 5])
        assert p.offset_for_timestamp(0) == 0
        assert p.offset_for_timestamp(5) == 1
        assert p.offset_for_timestamp(6) == 2
        assert p.offset_for_timestamp(1_000) == 200
        assert p.offset_for_timestamp(1_996) == 400 == p.end_offset
        # not sorted inside a batch: the first record in log order wins
        p.append_columns([None, None], [1, 2], [9_000, 8_000])
        assert p.offset_for_timestamp(8_500) == 400


def test_unencodable_value_is_refused_and_log_stays_usable(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append_columns([None], [1])
        with pytest.raises(NotSerializable, match="set") as info:
            p.append_columns([None, None], [2, {"a": {1, 2}}])
        assert info.value.type_name == "set"
        with pytest.raises(NotSerializable, match="key of type object"):
            p.append_columns([object()], [2])
        assert p.end_offset == 1
        assert p.append_columns([None], [3]) == 1
        assert [r.value for r in p.read(0)] == [1, 3]


def test_oversized_record_is_refused(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", max_record_bytes=1000)
        p = log.partition("t", 0)
        with pytest.raises(RecordTooLarge):
            p.append_columns([None], [b"x" * 1001])
        # one big record among small ones is found too
        with pytest.raises(RecordTooLarge):
            p.append_columns([None] * 3, [b"a", b"x" * 1500, b"b"])
        assert p.end_offset == 0
        p.append_columns([None] * 3, [b"x" * 900] * 3)
        assert p.end_offset == 3


def test_bad_columns_are_refused(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        with pytest.raises(ValueError, match="keys"):
            p.append_columns([1], [1, 2])
        with pytest.raises(ValueError, match="timestamps"):
            p.append_columns([1], [1], [1, 2])
        assert p.append_columns([], []) == 0
        assert p.end_offset == 0


def test_concurrent_appends_and_reads_see_whole_batches(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=8192)
        p = log.partition("t", 0)
        errors: list[BaseException] = []
        done = threading.Event()

        def write() -> None:
            try:
                for i in range(300):
                    p.append_columns([i] * 5, [i] * 5)
            finally:
                done.set()

        def read() -> None:
            try:
                while not done.is_set():
                    offset = 0
                    while True:
                        batches = p.read_batches(offset, max_bytes=2048)
                        if not batches:
                            break
                        for b in batches:
                            assert len(b) == 5 or b.offsets[0] == offset
                            assert b.values == [b.offsets[0] // 5] * len(b)
                        offset = batches[-1].next_offset
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write)] + [
            threading.Thread(target=read) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert p.end_offset == 1500
