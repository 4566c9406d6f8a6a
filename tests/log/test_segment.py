from __future__ import annotations

import os
from typing import TYPE_CHECKING

from streamflow.log.batch import encode_batch, parse_header
from streamflow.log.segment import Segment

if TYPE_CHECKING:
    from pathlib import Path


def fill(segment: Segment, base: int, n: int) -> list[int]:
    """Append n one-record batches; return their positions."""
    positions = []
    for i in range(base, base + n):
        data = encode_batch(i, [i], [b"v" * 300])
        positions.append(segment.size)
        segment.append(data[:56], data[56:], parse_header(data))
    return positions


def test_append_read_and_sparse_index(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 100)
    positions = fill(segment, 100, 50)
    assert segment.next_offset == 150
    assert segment.size == segment.file_size
    assert 1 < len(segment.index) < 50
    assert segment.index.positions[0] == 0
    batches, used, count, complete = segment.read(120, segment.size, 1 << 20, 5)
    assert [b.offsets[0] for b in batches] == [120, 121, 122, 123, 124]
    assert count == 5
    assert not complete
    assert used == 5 * (positions[1] - positions[0])
    # a byte limit taken earlier hides later batches
    batches, _, _, complete = segment.read(100, positions[3], 1 << 20, 1000)
    assert [b.offsets[0] for b in batches] == [100, 101, 102]
    assert complete
    # a byte budget that ends inside the segment says the read is incomplete
    one = positions[1] - positions[0]
    batches, used, _, complete = segment.read(100, segment.size, 2 * one, 1000)
    assert [b.offsets[0] for b in batches] == [100, 101]
    assert (used, complete) == (2 * one, False)


def test_scan_rebuilds_the_same_indexes_and_stops_at_a_torn_batch(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 0)
    positions = fill(segment, 0, 40)
    index = (list(segment.index.offsets), list(segment.index.positions))
    segment.write_indexes()
    reopened = Segment.open(tmp_path, 0)
    assert reopened.load_indexes()
    assert (reopened.index.offsets, reopened.index.positions) == index
    assert (reopened.next_offset, reopened.size) == (40, segment.size)
    os.truncate(reopened.path, positions[-1] + 100)
    result = reopened.scan(verify=True)
    assert (result.end, result.reaches_eof) == (positions[-1], True)
    assert result.problem is not None
    assert reopened.next_offset == 39
    reopened.truncate(result.end)
    assert reopened.scan(verify=True).problem is None
    assert (reopened.index.offsets, reopened.index.positions) == index


def test_deleted_segment_stays_readable_by_its_holder(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 0)
    fill(segment, 0, 3)
    segment.delete()
    assert not segment.path.exists()
    batches, _, _, _ = segment.read(0, segment.size, 1 << 20, 10)
    assert [b.offsets[0] for b in batches] == [0, 1, 2]
    segment.close()
