from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from streamflow.errors import (
    InvalidConfig,
    InvalidTopicName,
    LogClosed,
    LogLocked,
    TopicExists,
    UnknownTopic,
)
from streamflow.log import Log, Message, partition_for

if TYPE_CHECKING:
    from pathlib import Path


def test_topics_survive_reopen_with_their_settings(tmp_path: Path) -> None:
    with Log.open(tmp_path / "data") as log:
        log.create_topic("payments", partitions=3, retention_ms=1_000, cleanup_policy="compact")
        log.create_topic("a.b_c-d")
        assert log.topics() == ["a.b_c-d", "payments"]
        log.partition("payments", 2).append([Message(key=None, value="x")])
    with Log.open(tmp_path / "data") as log:
        assert log.topics() == ["a.b_c-d", "payments"]
        assert log.has_topic("payments")
        assert not log.has_topic("nope")
        d = log.describe("payments")
        assert d.config["retention_ms"] == 1_000
        assert d.config["cleanup_policy"] == "compact"
        assert [(i.partition, i.start_offset, i.end_offset) for i in d.partitions] == [
            (0, 0, 0),
            (1, 0, 0),
            (2, 0, 1),
        ]
        assert (tmp_path / "data" / "topics" / "payments" / "2").is_dir()


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "a\x00b", "x" * 201, "", "é"])
def test_bad_topic_names_are_refused(tmp_path: Path, name: str) -> None:
    with Log.open(tmp_path) as log:
        with pytest.raises(InvalidTopicName):
            log.create_topic(name)
        with pytest.raises(InvalidTopicName):
            log.partition(name, 0)
        log.create_topic("x" * 200)
        assert log.topics() == ["x" * 200]
    assert sorted(os.listdir(tmp_path / "topics")) == ["x" * 200]


@pytest.mark.parametrize(
    "settings",
    [
        {"partitions": 0},
        {"segment_bytes": 4095},
        {"cleanup_policy": "forever"},
        {"fsync": "sometimes"},
        {"retention_ms": "1d"},
        {"max_record_bytes": 0},
        {"partitions": True},
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, settings: dict[str, object]) -> None:
    with Log.open(tmp_path) as log:
        with pytest.raises(InvalidConfig):
            log.create_topic("t", **settings)  # type: ignore[arg-type]
        assert log.topics() == []
        log.create_topic("t", segment_bytes=4096, cleanup_policy="delete,compact")
        assert log.describe("t").config["cleanup_policy"] == "compact,delete"


def test_unknown_topic_and_partition(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", partitions=2)
        with pytest.raises(TopicExists):
            log.create_topic("t")
        with pytest.raises(UnknownTopic) as info:
            log.partition("t", 2)
        assert info.value.partition == 2
        with pytest.raises(UnknownTopic):
            log.partition("t", -1)
        with pytest.raises(UnknownTopic):
            log.partition("missing", 0)
        with pytest.raises(UnknownTopic):
            log.describe("missing")
        with pytest.raises(UnknownTopic):
            log.append("missing", [Message(None, 1)])
        assert log.partition("t", 1).append([Message(None, 1)]) == 0


def test_delete_topic_removes_files_and_name_can_be_reused(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t")
        old = log.partition("t", 0)
        old.append([Message(None, "old")])
        log.delete_topic("t")
        assert log.topics() == []
        assert not (tmp_path / "topics" / "t").exists()
        with pytest.raises(LogClosed):
            old.read(0)
        with pytest.raises(UnknownTopic):
            log.delete_topic("t")
        log.create_topic("t")
        assert log.partition("t", 0).read(0) == []


def test_keyed_append_routes_by_partitioner_and_unkeyed_round_robin(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", partitions=4)
        keys = [f"user-{i}" for i in range(20)]
        placed = log.append("t", [Message(k, i) for i, k in enumerate(keys)])
        assert [p for p, _ in placed] == [partition_for(k, 4) for k in keys]
        for (p, offset), (i, k) in zip(placed, enumerate(keys), strict=True):
            record = log.partition("t", p).read(offset, max_records=1)[0]
            assert (record.key, record.value) == (k, i)
        spread = log.append("t", [Message(None, i) for i in range(8)])
        assert sorted(p for p, _ in spread) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_second_process_gets_log_locked_naming_the_holder(tmp_path: Path) -> None:
    with Log.open(tmp_path):
        code = (
            "import sys\n"
            "from streamflow.log import Log\n"
            "from streamflow.errors import LogLocked\n"
            "try:\n"
            f"    Log.open({str(tmp_path)!r})\n"
            "except LogLocked as exc:\n"
            "    print(exc.holder)\n"
            "    sys.exit(3)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout.startswith(f"pid {os.getpid()} on host ")
        with pytest.raises(LogLocked):
            Log.open(tmp_path)
    # released at close, also for this process
    with Log.open(tmp_path) as log:
        assert log.topics() == []


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from streamflow.log import Log\n"
        f"log = Log.open({str(tmp_path)!r})\n"
        "print('READY', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        with pytest.raises(LogLocked, match=f"pid {child.pid}"):
            Log.open(tmp_path)
    finally:
        child.kill()
        assert child.wait(timeout=60) == -9
        child.stdout.close()  # type: ignore[union-attr]
    with Log.open(tmp_path) as log:
        assert log.topics() == []


def test_closed_log_refuses_calls(tmp_path: Path) -> None:
    log = Log.open(tmp_path)
    log.create_topic("t")
    p = log.partition("t", 0)
    log.close()
    log.close()
    with pytest.raises(LogClosed):
        log.topics()
    with pytest.raises(LogClosed):
        p.append([Message(None, 1)])
