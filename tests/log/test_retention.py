from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

import pytest
import trio

from streamflow.errors import OffsetOutOfRange
from streamflow.log import Log, Message, run_cleaner

from .helpers import segment_files

if TYPE_CHECKING:
    from pathlib import Path

HOUR = 3600 * 1000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_time_retention_deletes_whole_old_segments(tmp_path: Path) -> None:
    clock = Clock(100 * HOUR)
    with Log.open(tmp_path, clock=clock) as log:
        log.create_topic("t", retention_ms=10 * HOUR)
        p = log.partition("t", 0)
        p.append([Message(None, "old-1"), Message(None, "old-2")])
        p.roll()
        clock.now = 105 * HOUR
        p.append([Message(None, "newer")])
        p.roll()
        p.append(
            [Message(None, "active")],
        )
        assert log.enforce_retention() == 0
        clock.now = 110 * HOUR + 1
        assert log.enforce_retention() == 1
        assert p.start_offset == 2
        assert [r.value for r in p.read(2)] == ["newer", "active"]
        with pytest.raises(OffsetOutOfRange):
            p.read(0)
        # the active segment is never deleted, however old
        clock.now = 1_000 * HOUR
        assert log.enforce_retention() == 1
        assert (p.start_offset, p.end_offset) == (3, 4)
        assert log.enforce_retention() == 0
    assert len(segment_files(tmp_path)) == 1
    with Log.open(tmp_path, clock=clock) as log:
        p = log.partition("t", 0)
        assert (p.start_offset, p.end_offset) == (3, 4)
        assert p.append([Message(None, "after")]) == 4


def test_record_timestamps_decide_not_the_clock_at_append(tmp_path: Path) -> None:
    clock = Clock(1_000 * HOUR)
    with Log.open(tmp_path, clock=clock) as log:
        log.create_topic("t", retention_ms=HOUR)
        p = log.partition("t", 0)
        p.append([Message(None, "event-time-old", timestamp=1)])
        p.roll()
        p.append([Message(None, "now")])
        assert log.enforce_retention(now_ms=clock.now) == 1
        assert p.start_offset == 1


def test_internal_topics_skip_time_retention(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 10 * HOUR) as log:
        log.create_topic("r", retention_ms=HOUR, internal=True)
        p = log.partition("r", 0)
        p.append([Message(None, 1, timestamp=0)])
        p.roll()
        p.append([Message(None, 2)])
        assert log.enforce_retention() == 0
        assert p.start_offset == 0


def test_size_retention_drops_oldest_segments(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096, retention_bytes=10_000, retention_ms=None)
        p = log.partition("t", 0)
        for i in range(300):
            p.append([Message(i, b"x" * 100)])
        before = p.size_bytes
        assert before > 30_000
        deleted = log.enforce_retention()
        assert deleted > 0
        assert 10_000 <= p.size_bytes < 10_000 + 4096 + 200
        assert [r.key for r in p.read(p.start_offset, max_records=1000)] == list(
            range(p.start_offset, 300)
        )
        assert log.enforce_retention() == 0


def test_compact_only_topics_are_not_trimmed_by_retention(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 10 * HOUR) as log:
        log.create_topic("c", retention_ms=1, cleanup_policy="compact")
        p = log.partition("c", 0)
        p.append([Message("k", 1, timestamp=0)])
        p.roll()
        assert log.enforce_retention() == 0


def test_reader_keeps_reading_a_segment_retention_deleted(tmp_path: Path) -> None:
    clock = Clock(0)
    with Log.open(tmp_path, clock=clock) as log:
        log.create_topic("t", segment_bytes=4096, retention_ms=HOUR)
        p = log.partition("t", 0)
        for i in range(200):
            p.append([Message(i, b"y" * 100)])
        assert p.segment_count > 3
        clock.now = 10 * HOUR
        p.append([Message("last", 1)])
        start = threading.Event()
        finish = threading.Event()
        seen: list[int] = []

        def slow_reader() -> None:
            segments, limit, _ = p._snapshot(0)
            start.set()
            finish.wait(timeout=60)
            seg = segments[0]
            batches, _, _, _ = seg.read(0, seg.size, 1 << 30, 1 << 30)
            seen.extend(o for b in batches for o in b.offsets)

        t = threading.Thread(target=slow_reader)
        t.start()
        assert start.wait(timeout=60)
        assert log.enforce_retention() > 3
        assert not segment_files(tmp_path)[0].name.startswith("00000000000000000000")
        finish.set()
        t.join(timeout=60)
        assert seen
        assert seen[0] == 0


async def test_cleaner_syncs_retains_and_compacts(tmp_path: Path) -> None:
    # real trio time: the cleaner's work runs in threads, which a mock clock would race
    clock = Clock(0)
    log = Log.open(tmp_path, clock=clock)
    try:
        log.create_topic("t", retention_ms=HOUR)
        log.create_topic("c", cleanup_policy="compact")
        t = log.partition("t", 0)
        t.append([Message(None, "old")])
        t.roll()
        t.append([Message(None, "new")])
        c = log.partition("c", 0)
        c.append([Message("k", 1), Message("k", 2)])
        c.roll()
        clock.now = 2 * HOUR
        t.append([Message(None, "newer")])  # the interval is due: fsynced inline
        t.append([Message(None, "newest")])
        assert t._recovery_point < t.end_offset
        clock.now += 1000
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(run_cleaner, log, interval=0.01))
                # the cleaner signals nothing; watch the files it changes
                while t.start_offset == 0 or len(c.read(0)) != 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert t._recovery_point == t.end_offset
        assert [r.value for r in c.read(0)] == [2]
    finally:
        log.close()
