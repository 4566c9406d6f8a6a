from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from streamflow.errors import ProducerFenced
from streamflow.log import Log
from streamflow.log.producers import ProducerTable

from .helpers import partition_dir

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log import Partition


def send(p: Partition, values: list[int], sequence: int, epoch: int = 0, pid: int = 7) -> int:
    return p.append_columns(
        [None] * len(values), values, producer_id=pid, producer_epoch=epoch, sequence=sequence
    )


def test_duplicates_are_dropped_and_the_original_offset_returned(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append_columns([None], ["someone else"])
        assert send(p, [0, 1, 2], sequence=0) == 1
        assert send(p, [0, 1, 2], sequence=0) == 1  # a retry
        assert send(p, [1, 2], sequence=1) == 2
        assert p.end_offset == 4
        # partial overlap: only the new tail is written
        assert send(p, [2, 3, 4], sequence=2) == 4
        assert [r.value for r in p.read(0)] == ["someone else", 0, 1, 2, 3, 4]
        # other producers are independent
        assert send(p, [0], sequence=0, pid=8) == 6
        # appends without a producer are never deduplicated
        p.append_columns([None], [0])
        assert p.end_offset == 8


def test_original_offset_is_forgotten_after_five_batches(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        for i in range(7):
            send(p, [i], sequence=i)
        assert send(p, [1], sequence=1) == -1
        assert send(p, [6], sequence=6) == 6
        assert p.end_offset == 7


def test_older_epoch_is_fenced_and_newer_epoch_resets(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        send(p, [0, 1], sequence=0, epoch=1)
        assert send(p, [0], sequence=0, epoch=2) == 2  # new epoch starts over
        with pytest.raises(ProducerFenced) as info:
            send(p, [9], sequence=5, epoch=1)
        assert (info.value.epoch, info.value.current_epoch) == (1, 2)
        assert p.end_offset == 3
        assert send(p, [0], sequence=0, epoch=2) == 2


@pytest.mark.parametrize("how", ["close", "crash"])
def test_state_survives_reopen(tmp_path: Path, how: str) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        for i in range(100):
            send(p, [i] * 10, sequence=i * 10, epoch=3)
        if how == "crash":
            log.abandon()
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert send(p, [99] * 10, sequence=990, epoch=3) == 990
        assert send(p, [0], sequence=0, epoch=3) == -1
        with pytest.raises(ProducerFenced):
            send(p, [0], sequence=1000, epoch=2)
        assert p.end_offset == 1000
        assert send(p, [100], sequence=1000, epoch=3) == 1000


def test_state_survives_retention_and_compaction(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 10**9) as log:
        log.create_topic(
            "t", retention_ms=1000, segment_bytes=4096, cleanup_policy="compact,delete"
        )
        p = log.partition("t", 0)
        for i in range(100):
            p.append_columns(["k"] * 5, [i] * 5, producer_id=1, producer_epoch=0, sequence=i * 5)
        assert log.compact("t") > 0
        assert log.enforce_retention(now_ms=10**9 + 10**6) > 0
        assert p.start_offset > 0
    for snapshot in partition_dir(tmp_path).glob("*.producers"):
        assert ProducerTable.decode(snapshot.read_bytes()) is not None
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert send(p, [0], sequence=3, pid=1) == -1
        assert send(p, [0] * 5, sequence=495, pid=1) == 495
        assert p.end_offset == 500


def test_damaged_snapshot_falls_back_to_scanning(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        send(p, [0, 1], sequence=0)
    for snapshot in partition_dir(tmp_path).glob("*.producers"):
        snapshot.write_bytes(b"\x00garbage")
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert send(p, [1], sequence=1) == 1
        assert p.end_offset == 2


def test_snapshot_round_trip() -> None:
    table = ProducerTable()
    table.record(5, 2, 0, 9, 100)
    table.record(5, 2, 10, 14, 110)
    data = table.encode(115)
    parsed = ProducerTable.decode(data)
    assert parsed is not None
    offset, copy = parsed
    assert offset == 115
    assert copy.check(5, 2, 12, 3) == (3, 112)
    assert copy.check(5, 2, 13, 4) == (2, -1)
    assert ProducerTable.decode(data[:-1]) is None
