from __future__ import annotations

from streamflow.log.index import OffsetIndex, TimeIndex


def test_offset_index_round_trip_and_lookup() -> None:
    index = OffsetIndex(100)
    for i in range(10):
        index.add(100 + i * 7, i * 5000)
    copy = OffsetIndex.decode(100, index.encode(), 50_000)
    assert copy is not None
    assert (copy.offsets, copy.positions) == (index.offsets, index.positions)
    assert copy.lookup(99) == (100, 0)
    assert copy.lookup(100) == (100, 0)
    assert copy.lookup(115) == (114, 10_000)
    assert copy.lookup(10**9) == (163, 45_000)
    copy.truncate(10_000)
    assert copy.offsets == [100, 107]


def test_offset_index_refuses_impossible_contents() -> None:
    index = OffsetIndex(0)
    index.add(0, 0)
    index.add(5, 4096)
    data = index.encode()
    assert OffsetIndex.decode(0, data[:-1], 10_000) is None  # not whole entries
    assert OffsetIndex.decode(0, data, 4096) is None  # points past the log
    assert OffsetIndex.decode(0, data[8:] + data[:8], 10_000) is None  # not increasing


def test_time_index_lookup_and_round_trip() -> None:
    index = TimeIndex(0)
    index.add(100, 10)
    index.add(100, 20)  # never decreasing
    index.add(300, 30)
    copy = TimeIndex.decode(0, index.encode(), 40)
    assert copy is not None
    assert copy.lookup(50) == 0
    assert copy.lookup(101) == 20
    assert copy.lookup(301) == 30
    assert TimeIndex.decode(0, index.encode(), 25) is None
    copy.truncate(20)
    assert copy.offsets == [10]
