from __future__ import annotations

from typing import TYPE_CHECKING

from streamflow.log import Log, Message

from .helpers import partition_dir, segment_files

if TYPE_CHECKING:
    from pathlib import Path

DAY = 24 * 3600 * 1000


def kept(log: Log, topic: str = "c") -> list[tuple[int, object, object]]:
    p = log.partition(topic, 0)
    return [(r.offset, r.key, r.value) for r in p.read(p.start_offset, max_records=10_000)]


def test_compaction_keeps_newest_record_per_key_and_offsets(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 10 * DAY) as log:
        log.create_topic("c", cleanup_policy="compact")
        p = log.partition("c", 0)
        p.append([Message("a", 1), Message("b", 1), Message("a", 2)])
        p.append([Message(None, "unkeyed"), Message({"k": [1]}, "map-key")])
        p.roll()
        p.append([Message("b", 2), Message({"k": [1]}, "map-key-2")])
        p.roll()
        p.append([Message("a", 3)])  # active: not consulted, not compacted
        assert log.compact("c") == 3
        assert kept(log) == [
            (2, "a", 2),
            (3, None, "unkeyed"),
            (5, "b", 2),
            (6, {"k": [1]}, "map-key-2"),
            (7, "a", 3),
        ]
        assert log.compact("c") == 0
        assert p.read(0, max_records=1)[0].offset == 2
        assert p.read(1)[0].offset == 2  # the gap is skipped
        assert [b.offsets for b in p.read_batches(0)] == [[2], [3], [5, 6], [7]]
        assert (p.start_offset, p.end_offset) == (0, 8)
    with Log.open(tmp_path) as log:
        assert [o for o, _, _ in kept(log)] == [2, 3, 5, 6, 7]


def test_tombstones_are_kept_then_removed_after_delete_retention(tmp_path: Path) -> None:
    now = [0]
    with Log.open(tmp_path, clock=lambda: now[0]) as log:
        log.create_topic("c", cleanup_policy="compact", delete_retention_ms=DAY)
        p = log.partition("c", 0)
        now[0] = 1 * DAY
        p.append([Message("a", 1), Message("b", 1)])
        p.append([Message("a", None)])
        p.roll()
        p.append([Message("z", 0)])
        now[0] = int(1.5 * DAY)
        assert log.compact("c") == 1
        assert kept(log) == [(1, "b", 1), (2, "a", None), (3, "z", 0)]
    # tombstones survive a reopen, and go once delete_retention_ms has passed
    with Log.open(tmp_path, clock=lambda: now[0]) as log:
        assert kept(log) == [(1, "b", 1), (2, "a", None), (3, "z", 0)]
        now[0] = 2 * DAY + 1
        assert log.compact("c") == 1
        assert kept(log) == [(1, "b", 1), (3, "z", 0)]
    with Log.open(tmp_path) as log:
        assert kept(log) == [(1, "b", 1), (3, "z", 0)]
        assert log.partition("c", 0).append([Message("a", "back")]) == 4


def test_compaction_swaps_files_atomically_and_rebuilds_indexes(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("c", cleanup_policy="compact,delete", segment_bytes=4096)
        p = log.partition("c", 0)
        for i in range(600):
            p.append([Message(i % 10, i)])
        segments = p.segment_count
        removed = log.compact("c")
        assert removed > 500
        assert p.segment_count == segments
        values = [r.value for r in p.read(0, max_records=1000)]
        assert values[-10:] == list(range(590, 600))
        assert sorted(set(values[:-10])) == values[:-10]
    names = {f.name for f in partition_dir(tmp_path, "c").iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]
    assert len(segment_files(tmp_path, topic="c", suffix=".index")) == segments
    with Log.open(tmp_path) as log:
        assert [r.value for r in log.partition("c", 0).read(0, max_records=1000)] == values


def test_compaction_of_delete_topic_does_nothing(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        p = log.partition("t", 0)
        p.append([Message("a", 1), Message("a", 2)])
        p.roll()
        assert log.compact("t") == 0
        assert log.compacted_topics() == []
        assert len(p.read(0)) == 2
