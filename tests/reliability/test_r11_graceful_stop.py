"""R11: SIGTERM during load stops the broker cleanly, and the next start trusts that.

The topic is pre-filled with 16 MiB (4 partitions, large segments, so each
partition's active segment holds 4 MiB), then two producer processes load the
broker and it gets SIGTERM:

* it exits with status 0 within 10 s and leaves a ``clean-shutdown`` marker
  matching the active segment in every partition;
* the next start skips the full recovery: it reads (``/proc/<pid>/io``
  ``rchar``, compared with a start on an empty directory) less than a tenth of
  the data, and has already deleted every marker when it prints ``READY``;
* that start is armed to SIGKILL itself at its first write (``log.after_write:1``):
  afterwards no marker is left, so the start after it scans every batch again
  (reads more than half of the data); a stale marker never skips recovery;
* the producers ride through all of it: no acknowledged value is lost or
  duplicated.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import msgpack
import pytest
import trio

from streamflow.log import Log, Message

from .harness import Broker, count_acks, load_sends, read_topic, report, start_producer
from .history import History

if TYPE_CHECKING:
    from pathlib import Path

    from .harness import Child

PARTITIONS = 4
PREFILL_BYTES = 4 << 20
VALUE_BYTES = 1024
PREFILLED = PREFILL_BYTES // VALUE_BYTES // 100 * 100  # records per partition
MARKER = "clean-shutdown"
STOP_WITHIN = 10.0


def rchar(pid: int) -> int:
    """Return the bytes process *pid* has read so far (``/proc/<pid>/io``)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def prefill(data: Path) -> int:
    """Create the topic and write PREFILL_BYTES of values to each partition; return bytes."""
    with Log.open(data) as log:
        log.create_topic("events", partitions=PARTITIONS, segment_bytes=256 << 20, fsync="interval")
        for p in range(PARTITIONS):
            part = log.partition("events", p)
            for _ in range(PREFILLED // 100):
                part.append([Message(key=None, value="x" * VALUE_BYTES)] * 100)
    return sum(f.stat().st_size for f in (data / "topics" / "events").rglob("*.log"))


def markers(data: Path) -> dict[int, object]:
    """Return ``{partition: marker contents}`` for the partitions of ``events`` that have one."""
    found: dict[int, object] = {}
    for p in range(PARTITIONS):
        path = data / "topics" / "events" / str(p) / MARKER
        if path.exists():
            found[p] = msgpack.unpackb(path.read_bytes())
    return found


def start_reads(broker: Broker, failpoint: str | None = None) -> int:
    """Start *broker* and return how many bytes it read up to ``READY``."""
    broker.start(failpoint)
    assert broker.child is not None
    return rchar(broker.child.pid)


def wait_for_acks(paths: list[Path], more: int, producers: list[Child]) -> None:
    """Wait until *more* acknowledgements arrived (from now) across *paths*."""
    positions = [count_acks(p)[1] for p in paths]
    seen = 0
    deadline = time.monotonic() + 120
    while seen < more:
        for i, path in enumerate(paths):
            n, positions[i] = count_acks(path, positions[i])
            seen += n
        for child in producers:
            assert child.alive(), child.tail_log()
        assert time.monotonic() < deadline, "producers made no progress"
        time.sleep(0.02)


@pytest.mark.timeout(300)
def test_sigterm_writes_the_marker_and_the_next_start_skips_recovery(
    tmp_path: Path, seed: int
) -> None:
    empty = Broker(tmp_path / "empty")
    baseline = start_reads(empty)
    empty.kill()

    data = tmp_path / "data"
    data_bytes = prefill(data)
    broker = Broker(data)
    broker.start()
    stop = tmp_path / "stop"
    sends = [tmp_path / f"sends-{i}.jsonl" for i in range(2)]
    producers = [
        start_producer(
            broker.url,
            "events",
            f"p{i}",
            sends[i],
            log_path=tmp_path / f"producer-{i}.log",
            stop_path=stop,
            chunk=50,
        )
        for i in range(2)
    ]
    try:
        for child in producers:
            child.wait_ready()
        wait_for_acks(sends, 2000, producers)

        assert broker.child is not None
        terminated = time.monotonic()
        os.kill(broker.child.pid, signal.SIGTERM)
        code = broker.child.wait(60)
        stop_seconds = time.monotonic() - terminated
        broker.child.close()
        assert code == 0, broker.child.tail_log()
        clean = markers(data)
        assert sorted(clean) == list(range(PARTITIONS))
        for p, marker in clean.items():
            assert isinstance(marker, dict)
            active = sorted((data / "topics" / "events" / str(p)).glob("*.log"))[-1]
            assert marker["size"] == active.stat().st_size

        clean_read = start_reads(broker, failpoint="log.after_write:1") - baseline
        left_at_ready = markers(data)
        assert broker.child is not None
        code = broker.child.process.wait(60)  # the producers' first append kills it
        broker.child.close()
        assert code == -signal.SIGKILL
        left_after_kill = markers(data)

        full_read = start_reads(broker) - baseline
        wait_for_acks(sends, 1000, producers)
        stop.write_text("stop")
        for child in producers:
            assert child.readline(120).strip() == "DONE", child.tail_log()
            assert child.wait(60) == 0
        final = trio.run(read_topic, broker.url, "events")
    finally:
        for child in producers:
            child.kill()
        broker.kill()

    history = History()
    acked = sum(load_sends(history, path) for path in sends)
    for partition, records in final.items():
        history.read_final(partition, [(o, v) for o, v in records if o >= PREFILLED])
    found = history.check(order=True)
    report(
        "R11",
        seed,
        stop_seconds=round(stop_seconds, 2),
        data_bytes=data_bytes,
        clean_start_read_bytes=clean_read,
        unclean_start_read_bytes=full_read,
        markers_written=len(clean),
        markers_left_at_ready=len(left_at_ready),
        markers_left_after_kill=len(left_after_kill),
        clean_start_ms=round(broker.recovery_seconds[1] * 1000, 1),
        unclean_start_ms=round(broker.recovery_seconds[2] * 1000, 1),
        acked=acked,
        lost=len(found.lost),
        duplicated=len(found.duplicated),
    )
    assert stop_seconds < STOP_WITHIN
    assert left_at_ready == {}
    assert left_after_kill == {}
    assert clean_read < data_bytes / 10, (clean_read, data_bytes)
    assert full_read > data_bytes / 2, (full_read, data_bytes)
    assert found.ok, found.summary()
