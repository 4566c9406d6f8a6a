"""Open a log directory as a ``Log``: topics of partitions, one process at a time.

Layout: ``naming.py``. Opening takes an exclusive ``fcntl.flock`` on
``<dir>/.lock`` (the OS drops it when the process dies, even by SIGKILL) and
writes ``pid N on host H`` into it, so a second opener gets ``LogLocked``
naming the holder. A topic is created in ``<dir>/.staging/`` and renamed into
``<dir>/topics/``, so a crash never leaves half a topic.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.errors import (
    InvalidConfig,
    LogClosed,
    LogLocked,
    StreamflowError,
    TopicExists,
    UnknownTopic,
)

from .config import DAY_MS, TopicConfig
from .durable import write_atomically
from .fileio import OS_FILES
from .naming import (
    CONFIG_FILE,
    LOCK_FILE,
    STAGING_DIR,
    TOPIC_NAME,
    TOPICS_DIR,
    check_topic_name,
)
from .partition import Partition
from .partitioner import partition_for
from .transport import PartitionInfo, TopicDescription

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from .fileio import FileIO
    from .record import Message


def wall_clock_ms() -> int:
    """Return the current time in ms since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Topic:
    config: TopicConfig
    partitions: list[Partition]
    round_robin: Iterator[int]


def _lock_directory(path: Path) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LogLocked(path, holder or "unknown process") from exc
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    return fd


class Log:
    """A log directory: named topics, each of N partitions (DESIGN §1).

    Blocking: every method does disk I/O; async code calls it through
    ``trio.to_thread.run_sync``. Safe from many threads: topic creation,
    deletion and lookup are serialised by a lock, and each ``Partition``
    guards itself. Use as a context manager, or call ``close``.
    """

    def __init__(
        self, path: Path, lock_fd: int, clock: Callable[[], int], files: FileIO = OS_FILES
    ) -> None:
        self._path = path
        self._lock_fd = lock_fd
        self._clock = clock
        self._files = files
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], int] | None = None,
        files: FileIO | None = None,
    ) -> Log:
        """Open the log in *path*, creating the directory if missing. Blocking.

        Every partition is recovered (see ``recovery.py``) before this returns.

        Args:
            path: The log directory.
            clock: Returns "now" in ms since the epoch; used for record
                timestamps, segment age, retention and fsync intervals.
            files: The file interface partitions do their I/O through
                (``fileio.py``); the real file system by default.

        Raises:
            LogLocked: if another process has the directory open.
            CorruptBatch: if a partition has a damaged batch below its recovery point.
        """
        root = Path(path)
        # private: anyone who can read the directory can read every record
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = _lock_directory(root)
        log = cls(root, lock_fd, clock or wall_clock_ms, files or OS_FILES)
        try:
            log._load()
        except BaseException:
            log.abandon()
            raise
        return log

    def _load(self) -> None:
        staging = self._path / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        topics_dir = self._path / TOPICS_DIR
        topics_dir.mkdir(exist_ok=True)
        for entry in sorted(os.listdir(topics_dir)):
            if (topics_dir / entry).is_symlink() or not TOPIC_NAME.fullmatch(entry):
                # a planted symlink (or odd name) must not lead reads and writes elsewhere
                logging.getLogger("streamflow.log").warning(
                    "ignoring %s: a topic directory must be a real directory with a "
                    "valid topic name; move it away",
                    topics_dir / entry,
                )
                continue
            config_file = topics_dir / entry / CONFIG_FILE
            if not config_file.is_file():
                continue
            try:
                settings = json.loads(config_file.read_text())
                config = TopicConfig.from_settings(settings)
            except ValueError as exc:
                raise InvalidConfig(
                    str(config_file), "unreadable", f"a topic config ({exc})"
                ) from exc
            self._topics[entry] = self._open_topic(entry, config)

    def _open_topic(self, name: str, config: TopicConfig) -> _Topic:
        base = self._path / TOPICS_DIR / name
        partitions: list[Partition] = []
        try:
            for i in range(config.partitions):
                partitions.append(
                    Partition.open(name, i, base / str(i), config, self._clock, self._files)
                )
        except BaseException:
            for p in partitions:
                p.abandon()
            raise
        return _Topic(config, partitions, itertools.count())

    @property
    def path(self) -> Path:
        """Return the log directory."""
        return self._path

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"the log in {self._path} is closed; open it again")

    def __enter__(self) -> Log:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topics ---------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        retention_ms: int | None = 7 * DAY_MS,
        retention_bytes: int | None = None,
        segment_bytes: int = 64 << 20,
        segment_ms: int = 7 * DAY_MS,
        cleanup_policy: str = "delete",
        delete_retention_ms: int = DAY_MS,
        fsync: str = "interval",
        flush_ms: int = 1000,
        max_record_bytes: int = 1 << 20,
        internal: bool = False,
    ) -> None:
        """Create topic *name* with its partitions. Blocking.

        The settings are those of DESIGN §1 (``TopicConfig``); ``internal=True``
        marks a repartition topic, which time retention never trims.

        Raises:
            InvalidTopicName: if *name* breaks the naming rule.
            InvalidConfig: if a setting has a bad value.
            TopicExists: if the topic exists.
        """
        check_topic_name(name)
        config = TopicConfig(
            partitions=partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            segment_bytes=segment_bytes,
            segment_ms=segment_ms,
            cleanup_policy=cleanup_policy,
            delete_retention_ms=delete_retention_ms,
            fsync=fsync,
            flush_ms=flush_ms,
            max_record_bytes=max_record_bytes,
            internal=internal,
        )
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExists(name)
            staging = self._path / STAGING_DIR / name
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            files = self._files
            write_atomically(files, staging / CONFIG_FILE, json.dumps(config.to_dict()).encode())
            for i in range(config.partitions):
                (staging / str(i)).mkdir()
            files.fsync_dir(staging)
            topics_dir = self._path / TOPICS_DIR
            os.rename(staging, topics_dir / name)
            files.fsync_dir(topics_dir)
            self._topics[name] = self._open_topic(name, config)

    def topics(self) -> list[str]:
        """Return the topic names, sorted."""
        with self._lock:
            self._check_open()
            return sorted(self._topics)

    def has_topic(self, name: str) -> bool:
        """Return whether topic *name* exists."""
        with self._lock:
            self._check_open()
            return name in self._topics

    def _topic(self, name: str) -> _Topic:
        check_topic_name(name)
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopic(name)
        return topic

    def config(self, name: str) -> TopicConfig:
        """Return the settings of topic *name*.

        Raises:
            UnknownTopic: if it does not exist.
        """
        return self._topic(name).config

    def describe(self, name: str) -> TopicDescription:
        """Return the settings and per-partition offsets of topic *name*. Blocking.

        Raises:
            UnknownTopic: if it does not exist.
        """
        topic = self._topic(name)
        infos = [
            PartitionInfo(p.number, p.start_offset, p.end_offset, p.size_bytes)
            for p in topic.partitions
        ]
        return TopicDescription(name, topic.config.to_dict(), infos)

    def delete_topic(self, name: str) -> None:
        """Delete topic *name* and its files. Blocking.

        Readers in the middle of a read finish it; later calls on the topic's
        partitions raise ``LogClosed``.

        Raises:
            UnknownTopic: if it does not exist.
        """
        check_topic_name(name)
        with self._lock:
            self._check_open()
            topic = self._topics.pop(name, None)
            if topic is None:
                raise UnknownTopic(name)
            for p in topic.partitions:
                p.abandon()
            staging = self._path / STAGING_DIR
            staging.mkdir(exist_ok=True)
            doomed = staging / f"deleted-{name}"
            shutil.rmtree(doomed, ignore_errors=True)
            topics_dir = self._path / TOPICS_DIR
            os.rename(topics_dir / name, doomed)
            self._files.fsync_dir(topics_dir)
            shutil.rmtree(doomed, ignore_errors=True)

    def partition(self, name: str, number: int) -> Partition:
        """Return partition *number* of topic *name*.

        Raises:
            UnknownTopic: if the topic or the partition does not exist.
        """
        topic = self._topic(name)
        if (
            not isinstance(number, int)
            or isinstance(number, bool)
            or not 0 <= number < len(topic.partitions)
        ):
            raise UnknownTopic(name, number)
        return topic.partitions[number]

    def partitions(self, name: str) -> list[Partition]:
        """Return all partitions of topic *name*, in order."""
        return list(self._topic(name).partitions)

    # -- records --------------------------------------------------------------------------

    def append(self, topic: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        """Append *messages* to *topic*, routing each to a partition. Blocking.

        A keyed message goes to ``partition_for(key, partitions)``; unkeyed ones
        go round-robin. Each partition gets one batch.

        Returns:
            ``(partition, offset)`` for each message, in order.
        """
        t = self._topic(topic)
        n = len(t.partitions)
        chosen = [
            next(t.round_robin) % n if m.key is None else partition_for(m.key, n) for m in messages
        ]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(chosen):
            groups[p].append(i)
        result: list[tuple[int, int]] = [(0, 0)] * len(messages)
        for p, indexes in groups.items():
            base = t.partitions[p].append([messages[i] for i in indexes])
            for j, i in enumerate(indexes):
                result[i] = (p, base + j)
        return result

    # -- housekeeping ---------------------------------------------------------------------

    def _all_partitions(self) -> list[Partition]:
        with self._lock:
            self._check_open()
            return [p for t in self._topics.values() for p in t.partitions]

    def now_ms(self) -> int:
        """Return the log clock's current time in ms."""
        return self._clock()

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Apply every topic's retention; return the number of segments deleted. Blocking."""
        now = self._clock() if now_ms is None else now_ms
        return sum(p.enforce_retention(now) for p in self._all_partitions())

    def compacted_topics(self) -> list[str]:
        """Return the topics whose cleanup policy includes compaction."""
        with self._lock:
            self._check_open()
            return sorted(n for n, t in self._topics.items() if t.config.compacted)

    def compact(self, topic: str, now_ms: int | None = None) -> int:
        """Compact *topic* (if its policy says so); return the records removed. Blocking.

        Raises:
            UnknownTopic: if it does not exist.
        """
        t = self._topic(topic)
        if not t.config.compacted:
            return 0
        now = self._clock() if now_ms is None else now_ms
        return sum(p.compact(now) for p in t.partitions)

    def sync_due(self, now_ms: int | None = None) -> int:
        """Fsync partitions whose ``"interval"`` is due; return how many. Blocking."""
        now = self._clock() if now_ms is None else now_ms
        return sum(p.sync_due(now) for p in self._all_partitions())

    def close(self) -> None:
        """Flush and close every partition, then release the directory. Blocking.

        Idempotent. A clean close lets the next open skip validating the tail.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            partitions = [p for t in self._topics.values() for p in t.partitions]
        try:
            errors: list[BaseException] = []
            for p in partitions:
                try:
                    p.close()
                except (OSError, StreamflowError) as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        finally:
            os.close(self._lock_fd)

    def abandon(self) -> None:
        """Release the directory without any closing writes, as a killed process would.

        For crash tests and for cleaning up after a failed open.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for t in self._topics.values():
                for p in t.partitions:
                    p.abandon()
        os.close(self._lock_fd)
