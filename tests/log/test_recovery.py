from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamflow.errors import CorruptBatch
from streamflow.log import Log, Message

from .helpers import batch_positions, chop_tail, flip_byte, partition_dir, segment_files

if TYPE_CHECKING:
    from pathlib import Path


def fill(path: Path, n: int, *, segment_bytes: int = 64 << 20, fsync: str = "interval") -> None:
    with Log.open(path) as log:
        log.create_topic("t", segment_bytes=segment_bytes, fsync=fsync)
        for i in range(n):
            log.partition("t", 0).append([Message(key=i, value=f"value-{i}")])


def values(path: Path) -> list[str]:
    with Log.open(path) as log:
        return [r.value for r in log.partition("t", 0).read(0, max_records=100_000)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vals=st.lists(st.binary(max_size=64), max_size=40), cut=st.integers(0, 4096))
def test_recovery_keeps_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, vals: list[bytes], cut: int
) -> None:
    path = tmp_path_factory.mktemp("log")
    with Log.open(path) as log:
        log.create_topic("t", partitions=1)
        for value in vals:
            log.partition("t", 0).append([Message(key=None, value=value)])
    chop_tail(path, cut)
    with Log.open(path) as log:
        kept = [r.value for r in log.partition("t", 0).read(0, max_records=100)]
        assert log.partition("t", 0).end_offset == len(kept)
    assert kept == vals[: len(kept)]


def test_torn_tail_is_truncated_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path, 10)
    segment = segment_files(tmp_path)[0]
    size = segment.stat().st_size
    last = batch_positions(segment)[-1]
    chop_tail(tmp_path, (size - last) // 2)
    with caplog.at_level(logging.WARNING, logger="streamflow.log"):
        assert values(tmp_path) == [f"value-{i}" for i in range(9)]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert segment.name in warning.getMessage()
    assert f"at byte {last}" in warning.getMessage()
    assert segment.stat().st_size == last
    # the log goes on from the cut, and a second recovery finds nothing to do
    with Log.open(tmp_path) as log:
        assert log.partition("t", 0).append([Message(None, "new")]) == 9
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamflow.log"):
        assert values(tmp_path)[-2:] == ["value-8", "new"]
    assert not caplog.records


def test_header_cut_short_is_truncated(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    segment = segment_files(tmp_path)[0]
    last = batch_positions(segment)[-1]
    os.truncate(segment, last + 20)
    assert values(tmp_path) == ["value-0", "value-1"]
    assert segment.stat().st_size == last


@pytest.mark.parametrize("clean", [True, False])
def test_bit_flip_in_last_batch_is_truncated(tmp_path: Path, clean: bool) -> None:
    fill(tmp_path, 5)
    if not clean:
        os.unlink(partition_dir(tmp_path) / "clean-shutdown")
    segment = segment_files(tmp_path)[0]
    last = batch_positions(segment)[-1]
    flip_byte(segment, segment.stat().st_size - 2)
    assert values(tmp_path) == [f"value-{i}" for i in range(4)]
    assert segment.stat().st_size == last


def test_bit_flip_in_the_middle_is_an_error_naming_file_and_position(tmp_path: Path) -> None:
    fill(tmp_path, 5)
    segment = segment_files(tmp_path)[0]
    third = batch_positions(segment)[2]
    flip_byte(segment, third + 60)
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert [r.value for r in p.read(0, max_records=2)] == ["value-0", "value-1"]
        with pytest.raises(CorruptBatch) as info:
            p.read(0)
        assert info.value.path == segment
        assert info.value.position == third
        assert str(segment) in str(info.value)
        with pytest.raises(CorruptBatch):
            p.read(2)
        # a reader past the damage does not need the damaged batch
        assert [r.value for r in p.read(3)] == ["value-3", "value-4"]
    assert segment.stat().st_size > third  # nothing was truncated


def test_corruption_below_the_recovery_point_fails_the_open(tmp_path: Path) -> None:
    fill(tmp_path, 5)
    os.unlink(partition_dir(tmp_path) / "clean-shutdown")  # as after a crash
    segment = segment_files(tmp_path)[0]
    second = batch_positions(segment)[1]
    flip_byte(segment, second + 60)
    with pytest.raises(CorruptBatch) as info:
        Log.open(tmp_path)
    assert (info.value.path, info.value.position) == (segment, second)
    assert segment.stat().st_size > second
    # the failed open released the directory
    with pytest.raises(CorruptBatch):
        Log.open(tmp_path)


def test_corruption_above_the_recovery_point_is_truncated(tmp_path: Path) -> None:
    path = tmp_path
    with Log.open(path) as log:
        log.create_topic("t", fsync="never")
        p = log.partition("t", 0)
        p.append([Message(None, "durable")])
        p.flush()  # recovery point 1
        for i in range(4):
            p.append([Message(None, i)])
        log.abandon()
    segment = segment_files(path)[0]
    second = batch_positions(segment)[2]
    flip_byte(segment, second + 60)
    assert values(path) == ["durable", 0]
    assert segment.stat().st_size == second


def test_unclean_open_validates_and_keeps_everything_good(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        for i in range(200):
            p.append([Message(i, "x" * 50)])
        log.abandon()
    assert not (partition_dir(tmp_path) / "clean-shutdown").exists()
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert p.end_offset == 200
        assert [r.key for r in p.read(0, max_records=1000)] == list(range(200))


@pytest.mark.parametrize("damage", ["delete", "garbage", "shifted", "truncated"])
def test_damaged_index_files_are_rebuilt(tmp_path: Path, damage: str) -> None:
    fill(tmp_path, 400, segment_bytes=16384)
    indexes = segment_files(tmp_path, suffix=".index") + segment_files(
        tmp_path, suffix=".timeindex"
    )
    assert len(indexes) >= 4
    for index in indexes:
        data = index.read_bytes()
        if damage == "delete":
            index.unlink()
        elif damage == "garbage":
            index.write_bytes(os.urandom(len(data) or 16))
        elif damage == "shifted":
            # plausible entries pointing at wrong positions
            index.write_bytes(
                b"".join(
                    (i).to_bytes(4, "big") + (i * 1000 + 1).to_bytes(4, "big") for i in range(3)
                )
            )
        else:
            index.write_bytes(data[: len(data) // 2 + 3])
    with Log.open(tmp_path) as log:
        p = log.partition("t", 0)
        assert [r.value for r in p.read(0, max_records=1000)] == [f"value-{i}" for i in range(400)]
        for offset in (0, 123, 250, 399):
            assert p.read(offset, max_records=1)[0].value == f"value-{offset}"
        assert p.offset_for_timestamp(0) == 0
    # rebuilt files are consistent again after a clean close
    assert values(tmp_path)[399] == "value-399"


def test_clean_shutdown_marker_is_removed_while_open(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    marker = partition_dir(tmp_path) / "clean-shutdown"
    assert marker.exists()
    with Log.open(tmp_path) as log:
        assert not marker.exists()
        log.partition("t", 0).append([Message(None, "x")])
    assert marker.exists()


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    pdir = partition_dir(tmp_path)
    (pdir / "00000000000000000000.log.tmp").write_bytes(b"junk")
    (pdir / "00000000000000000099.index").write_bytes(b"orphan")
    assert values(tmp_path) == ["value-0", "value-1"]
    assert sorted(p.name for p in pdir.iterdir() if "tmp" in p.name or "99" in p.name) == []
