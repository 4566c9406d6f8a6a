"""Keep one partition: append, read, roll, recover, retain and compact its segments.

Concurrency: a ``Partition`` is safe from many threads. Appends, rolls,
retention and compaction swaps are serialised by one ``threading.Lock``;
retention and compaction also share a second lock so they never overlap.
A reader takes the segment list and the published end position under the lock
and reads with ``os.pread`` outside it, so it sees whole batches only, never
waits for a slow fsync of an append, and keeps reading a segment retention
removed meanwhile. Blocking: every method does disk I/O.

Disk errors: a failed write raises ``StorageError`` and nothing of it is
acknowledged or left behind; the partition keeps going, so writes resume once
space returns. A failed fsync (file or directory) takes the partition offline
for good: every later write raises ``PartitionOffline`` until the log is
reopened and recovered, because a retried fsync can succeed after the kernel
has already dropped the data.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import msgpack

from streamflow.errors import (
    LogClosed,
    OffsetOutOfRange,
    PartitionOffline,
    RecordTooLarge,
    StorageError,
)
from streamflow.failpoint import failpoint

from .batch import VALUE_CHUNK, frame, pack_payload, pack_payload_bounded, parse_header
from .compaction import compact_segments
from .durable import write_atomically
from .fileio import OS_FILES, FsyncFailed
from .naming import CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE
from .producers import ProducerTable, load_snapshot, write_snapshot
from .recovery import recover
from .segment import Segment, StoredRun, read_stored_runs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from .config import TopicConfig
    from .fileio import FileIO
    from .record import Headers, Message, Record, RecordBatch

logger = logging.getLogger("streamflow.log")

UNLIMITED: Final = 1 << 62


class Partition:
    """One partition of a topic: an ordered list of segments (contract: module docstring)."""

    def __init__(
        self,
        topic: str,
        number: int,
        directory: Path,
        config: TopicConfig,
        clock: Callable[[], int],
        segments: list[Segment],
        producers: ProducerTable,
        recovery_point: int,
        files: FileIO = OS_FILES,
    ) -> None:
        self.topic = topic
        self.number = number
        self.directory = directory
        self.config = config
        self.files = files
        self.label = f"{topic}[{number}]"
        self._failure: OSError | None = None
        self._clock = clock
        self._segments: tuple[Segment, ...] = tuple(segments)
        self._bases: tuple[int, ...] = tuple(s.base_offset for s in segments)
        self._producers = producers
        self._recovery_point = recovery_point
        self._saved_recovery_point = recovery_point
        self._last_sync_ms = clock()
        self._lock = threading.Lock()
        self._clean_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        topic: str,
        number: int,
        directory: Path,
        config: TopicConfig,
        clock: Callable[[], int],
        files: FileIO = OS_FILES,
    ) -> Partition:
        """Open (creating if needed) the partition in *directory*, recovering it. Blocking.

        All file I/O goes through *files* (``fileio.py``).

        Raises:
            CorruptBatch: if a batch below the recovery point is damaged.
        """
        directory.mkdir(parents=True, exist_ok=True)
        segments, recovery_point = recover(
            files, directory, f"{topic}[{number}]", gaps_allowed=config.compacted
        )
        end = segments[-1].next_offset
        snapshot_offset, producers = load_snapshot(files, directory, end)
        i = max(bisect_right([s.base_offset for s in segments], snapshot_offset) - 1, 0)
        for segment in segments[i:]:
            limit = segment.size
            for header in segment.headers(snapshot_offset, limit):
                if header.producer_id >= 0 and header.base_offset >= snapshot_offset:
                    producers.record(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence,
                        header.last_sequence,
                        header.base_offset,
                    )
        return cls(
            topic, number, directory, config, clock, segments, producers, recovery_point, files
        )

    # -- offsets ------------------------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        """Return the first offset kept (records may be missing after it if compacted)."""
        return self._segments[0].base_offset if self._segments else 0

    @property
    def end_offset(self) -> int:
        """Return the offset the next appended record will get."""
        return self._segments[-1].next_offset if self._segments else 0

    @property
    def size_bytes(self) -> int:
        """Return the bytes of all segment files."""
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        """Return the number of segments (the last one is the active one)."""
        return len(self._segments)

    @property
    def offline(self) -> bool:
        """Return whether a failed fsync took the partition offline."""
        return self._failure is not None

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"{self.label} is closed; open the log again")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise PartitionOffline(self.label, self._failure)

    @contextmanager
    def _disk(self, what: str) -> Iterator[None]:
        """Translate disk errors: a failed fsync takes the partition offline."""
        try:
            yield
        except FsyncFailed as exc:
            self._failure = exc
            logger.error("%s: fsync failed in %s (%s); partition offline", self.label, what, exc)
            raise PartitionOffline(self.label, exc) from exc
        except OSError as exc:
            if self._segments and self._segments[-1].dirty_tail:
                # the partial batch could not be cut off; stop before writing after it
                self._failure = exc
                raise PartitionOffline(self.label, exc) from exc
            raise StorageError(f"{what} on {self.label}", exc) from exc

    # -- appending ----------------------------------------------------------------------------

    def append(
        self,
        messages: Sequence[Message],
        *,
        producer_id: int | None = None,
        producer_epoch: int = 0,
        sequence: int = -1,
    ) -> int:
        """Append *messages* as one batch and return the offset of the first. Blocking.

        See ``append_columns`` for idempotence, durability and errors.
        """
        return self.append_columns(
            [m.key for m in messages],
            [m.value for m in messages],
            [m.timestamp for m in messages],
            [m.headers for m in messages],
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            sequence=sequence,
        )

    def append_columns(
        self,
        keys: Sequence[Any],
        values: Sequence[Any],
        timestamps: Sequence[int | None] | None = None,
        headers: Sequence[Headers | None] | None = None,
        *,
        producer_id: int | None = None,
        producer_epoch: int = 0,
        sequence: int = -1,
    ) -> int:
        """Append records given as parallel columns, as one batch. Blocking.

        Returns once the batch is visible to readers (and fsynced first when the
        topic's ``fsync`` is ``"always"``). A timestamp of None means "now".

        With *producer_id*, record i has sequence number ``sequence + i``: records
        whose sequence is at or below the highest one stored for that producer
        are dropped and only the new tail is written. When nothing is new, the
        offset the first record was stored at is returned (-1 if no longer known).

        Returns:
            The offset of the first written record (``end_offset`` when empty).

        Raises:
            ValueError: if the columns differ in length or a number is out of range.
            NotSerializable: if a key, value or header cannot be encoded.
            RecordTooLarge: if a record is larger than ``max_record_bytes``.
            ProducerFenced: if *producer_epoch* is older than the newest seen.
            LogClosed: if the log was closed.
        """
        n = len(values)
        if len(keys) != n:
            raise ValueError(f"append: {len(keys)} keys for {n} values; pass one key per value")
        if timestamps is not None and len(timestamps) != n:
            raise ValueError(f"append: {len(timestamps)} timestamps for {n} values")
        if headers is not None and len(headers) != n:
            raise ValueError(f"append: {len(headers)} headers for {n} values")
        if producer_id is not None and (producer_id < 0 or not 0 <= producer_epoch < 1 << 15):
            raise ValueError("append: producer_id must be >= 0 and producer_epoch in [0, 32767]")
        if n == 0:
            self._check_writable()
            return self.end_offset
        now = self._clock()
        if timestamps is None:
            stamps: Sequence[int] = [now] * n
            first = low = high = now
        else:
            if None in timestamps:
                stamps = [now if t is None else t for t in timestamps]
            else:
                stamps = timestamps  # type: ignore[assignment]
            first, low, high = stamps[0], min(stamps), max(stamps)
        if headers is not None and headers.count(None) == n:
            headers = None
        payload = self._encode(keys, values, stamps, first, low == high, headers, n)
        with self._lock, self._disk("append"):
            self._check_writable()
            skip = 0
            if producer_id is not None:
                skip, original = self._producers.check(producer_id, producer_epoch, sequence, n)
                if skip == n:
                    return original
                if skip:
                    keys, values, stamps = keys[skip:], values[skip:], stamps[skip:]
                    headers = None if headers is None else headers[skip:]
                    first = stamps[0]
                    same = min(stamps) == max(stamps)
                    payload = self._encode(keys, values, stamps, first, same, headers, n - skip)
                    high = max(stamps)
            return self._write(
                payload,
                n - skip,
                first,
                high,
                producer_id,
                producer_epoch,
                sequence + skip if sequence >= 0 else -1,
            )

    def _encode(
        self,
        keys: Sequence[Any],
        values: Sequence[Any],
        stamps: Sequence[int],
        first: int,
        same_time: bool,
        headers: Sequence[Headers | None] | None,
        n: int,
    ) -> bytes:
        deltas = None if same_time else [t - first for t in stamps]
        limit = self.config.max_record_bytes
        if n > VALUE_CHUNK:
            # big batch: the values are sized chunk by chunk while they are encoded
            payload, biggest = pack_payload_bounded(None, deltas, keys, values, headers, limit)
            if biggest:
                raise RecordTooLarge(biggest, limit, self.topic)
            return payload
        payload = pack_payload(None, deltas, keys, values, headers)
        if len(payload) > limit:
            if len(payload) > limit * n or n == 1:
                raise RecordTooLarge(
                    len(payload) // n if n > 1 else len(payload), limit, self.topic
                )
            # exact check, only for batches bigger than one record may be
            pack = msgpack.Packer(use_bin_type=True).pack
            biggest = max(map(len, map(pack, values)))
            if biggest > limit:
                raise RecordTooLarge(biggest, limit, self.topic)
        return payload

    def _write(
        self,
        payload: bytes,
        n: int,
        first_timestamp: int,
        max_timestamp: int,
        producer_id: int | None,
        producer_epoch: int,
        base_sequence: int,
    ) -> int:
        active = self._segments[-1]
        if active.size > 0 and (
            active.size + len(payload) > self.config.segment_bytes
            or max_timestamp - active.first_max_timestamp > self.config.segment_ms
        ):
            self._roll()
            active = self._segments[-1]
        base = active.next_offset
        try:
            header_bytes = frame(
                payload,
                base_offset=base,
                last_offset_delta=n - 1,
                record_count=n,
                first_timestamp=first_timestamp,
                max_timestamp=max_timestamp,
                producer_id=-1 if producer_id is None else producer_id,
                producer_epoch=-1 if producer_id is None else producer_epoch,
                base_sequence=base_sequence if producer_id is not None else -1,
            )
        except Exception as exc:  # struct.error: a field does not fit its width
            raise ValueError(
                f"append: timestamps must be integer ms and sequence fit 64 bits ({exc})"
            ) from exc
        active.append(header_bytes, payload, parse_header(header_bytes))
        if producer_id is not None:
            last_sequence = base_sequence + n - 1 if base_sequence >= 0 else -1
            self._producers.record(producer_id, producer_epoch, base_sequence, last_sequence, base)
        failpoint("log.after_write")
        policy = self.config.fsync
        if policy == "always":
            active.flush()
            self._recovery_point = active.next_offset
            failpoint("log.after_fsync")
        elif policy == "interval" and self._clock() - self._last_sync_ms >= self.config.flush_ms:
            self._flush_locked()
        return base

    # -- rolling and syncing -------------------------------------------------------------------

    def roll(self) -> None:
        """Close the active segment and start a new one (no-op if it is empty). Blocking."""
        with self._lock, self._disk("roll"):
            self._check_writable()
            if self._segments[-1].size > 0:
                self._roll()

    def _roll(self) -> None:
        old = self._segments[-1]
        old.flush()
        old.write_indexes()
        new = Segment.create(self.directory, old.next_offset, self.files)
        # copy-on-write: readers keep the tuple they took
        self._segments = (*self._segments, new)
        self._bases = (*self._bases, new.base_offset)
        failpoint("log.mid_roll")
        write_snapshot(self.files, self.directory, self._producers, new.base_offset)
        self._recovery_point = new.base_offset
        self._save_recovery_point()

    def _save_recovery_point(self) -> None:
        if self._recovery_point != self._saved_recovery_point:
            point = self._recovery_point
            write_atomically(self.files, self.directory / RECOVERY_POINT_FILE, msgpack.packb(point))
            self._saved_recovery_point = point

    def _flush_locked(self) -> None:
        active = self._segments[-1]
        active.flush()
        self._last_sync_ms = self._clock()
        self._recovery_point = active.next_offset

    def flush(self) -> None:
        """Fsync everything appended so far and save the recovery point. Blocking."""
        with self._lock, self._disk("flush"):
            self._check_writable()
            self._flush_locked()
            self._save_recovery_point()

    def sync_due(self, now_ms: int) -> bool:
        """Fsync if the topic's ``"interval"`` is due; save a stale recovery point. Blocking.

        Returns whether an fsync ran.
        """
        with self._lock, self._disk("fsync"):
            if self._closed or self._failure is not None:
                return False
            synced = False
            if (
                self.config.fsync == "interval"
                and self._recovery_point < self.end_offset
                and now_ms - self._last_sync_ms >= self.config.flush_ms
            ):
                self._flush_locked()
                synced = True
            if now_ms - self._last_sync_ms >= self.config.flush_ms or synced:
                self._save_recovery_point()
            return synced

    # -- reading -------------------------------------------------------------------------------

    def _snapshot(self, offset: int) -> tuple[tuple[Segment, ...], int, int]:
        with self._lock:
            self._check_open()
            segments = self._segments
            bases = self._bases
            limit = segments[-1].size
            end = segments[-1].next_offset
        start = segments[0].base_offset
        if offset < start or offset > end:
            raise OffsetOutOfRange(self.topic, self.number, offset, start, end)
        i = max(bisect_right(bases, offset) - 1, 0)
        return segments[i:], limit, end

    def read_batches(
        self, offset: int, *, max_bytes: int = 1 << 20, max_records: int | None = None
    ) -> list[RecordBatch]:
        """Read whole batches from *offset* on, trimmed so every record is at or after it.

        Blocking. Returns at least one batch when there is a record at or after
        *offset*, even one larger than *max_bytes*; ``[]`` at ``end_offset``.

        Raises:
            OffsetOutOfRange: if *offset* is below ``start_offset`` or above ``end_offset``.
            CorruptBatch: if a batch read fails its CRC.
        """
        segments, limit, end = self._snapshot(offset)
        if offset == end:
            return []
        if max_records is not None and max_records < 1:
            raise ValueError(f"read: max_records={max_records}; ask for at least one record")
        records_left = UNLIMITED if max_records is None else max_records
        bytes_left = max_bytes
        out: list[RecordBatch] = []
        last = segments[-1]
        for segment in segments:
            seg_limit = limit if segment is last else segment.size
            batches, used, count, complete = segment.read(
                offset, seg_limit, bytes_left if not out else max(bytes_left, 0), records_left
            )
            if out and used > bytes_left:
                break
            out.extend(batches)
            bytes_left -= used
            records_left -= count
            # A segment that stopped early (budget or record limit) ends the read:
            # going on to the next one would skip the rest of this one.
            if not complete or records_left <= 0 or (out and bytes_left <= 0):
                break
        return out

    def read_stored(self, offset: int, *, max_bytes: int = 1 << 20) -> list[StoredRun]:
        """Read the batches ``read_batches`` would return, as the bytes stored on disk.

        Blocking. Nothing is decoded or CRC-checked here; the reader does both and
        drops the records before *offset* (see ``batch.decode_stored``).

        Raises:
            OffsetOutOfRange: if *offset* is below ``start_offset`` or above ``end_offset``.
            CorruptBatch: if a batch header is impossible.
        """
        segments, limit, end = self._snapshot(offset)
        return [] if offset == end else read_stored_runs(segments, limit, offset, max_bytes)

    def read(self, offset: int, max_records: int = 500) -> list[Record]:
        """Read up to *max_records* records from *offset* on, skipping compacted gaps.

        Blocking. Returns ``[]`` at ``end_offset``.

        Raises:
            OffsetOutOfRange: if *offset* is below ``start_offset`` or above ``end_offset``.
            CorruptBatch: if a batch read fails its CRC.
        """
        batches = self.read_batches(offset, max_bytes=UNLIMITED, max_records=max_records)
        out: list[Record] = []
        for batch in batches:
            out.extend(batch.records(self.topic, self.number))
        return out

    def offset_for_timestamp(self, timestamp: int) -> int:
        """Return the first offset with a timestamp >= *timestamp*, else ``end_offset``.

        Blocking.
        """
        segments, limit, end = self._snapshot(self.start_offset)
        last = segments[-1]
        for segment in segments:
            if segment.max_timestamp < timestamp:
                continue
            found = segment.offset_for_timestamp(
                timestamp, limit if segment is last else segment.size
            )
            if found is not None:
                return found
        return end

    # -- cleaning ------------------------------------------------------------------------------

    def enforce_retention(self, now_ms: int) -> int:
        """Delete old closed segments by time and size; return how many. Blocking.

        A closed segment goes when its newest timestamp is older than
        ``now_ms - retention_ms`` (not for internal topics), and the oldest go
        while what stays is still at least ``retention_bytes`` (as Kafka does).
        """
        config = self.config
        if not config.deletes:
            return 0
        with self._clean_lock, self._lock, self._disk("retention"):
            if self._closed or self._failure is not None:
                return 0
            deleted = 0
            size = self.size_bytes
            segments = self._segments
            while len(segments) > 1:
                oldest = segments[0]
                expired = (
                    not config.internal
                    and config.retention_ms is not None
                    and oldest.max_timestamp < now_ms - config.retention_ms
                )
                too_big = (
                    config.retention_bytes is not None
                    and size - oldest.size >= config.retention_bytes
                )
                if not (expired or too_big):
                    break
                # drop it from the list first: its .log may be gone even if a later step fails
                segments = segments[1:]
                self._segments = segments
                self._bases = self._bases[1:]
                size -= oldest.size
                deleted += 1
                oldest.delete("log.mid_retention_delete")
            if deleted:
                self.files.fsync_dir(self.directory)
            return deleted

    def compact(self, now_ms: int) -> int:
        """Keep only the newest record per key in the closed segments; return records removed.

        Blocking. Tombstones (value None) go once their segment's newest
        timestamp is older than ``now_ms - delete_retention_ms``. Offsets never
        change. Appends and reads go on meanwhile; the lock is held only to swap
        in the rewritten segments.
        """
        with self._clean_lock:
            with self._lock:
                self._check_open()
                closed = self._segments[:-1]
                if self._failure is not None:
                    return 0
            if not closed:
                return 0
            cutoff = now_ms - self.config.delete_retention_ms
            replacements: dict[int, Segment] = {}
            try:
                with self._disk("compaction"):
                    return compact_segments(closed, cutoff, replacements)
            finally:
                # swap in whatever was rewritten, even when a later segment failed
                if replacements:
                    with self._lock:
                        self._segments = tuple(
                            replacements.get(s.base_offset, s) for s in self._segments
                        )

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Fsync, write indexes, producer snapshot and the clean-shutdown marker. Blocking."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failure is None:
                    with self._disk("close"):
                        self._close_files()
            finally:
                self._release()

    def _close_files(self) -> None:
        active = self._segments[-1]
        active.flush()
        active.write_indexes()
        write_snapshot(self.files, self.directory, self._producers, active.next_offset)
        self._recovery_point = active.next_offset
        self._save_recovery_point()
        marker = {
            "base_offset": active.base_offset,
            "size": active.size,
            "last_position": active.last_batch_position,
            "end_offset": active.next_offset,
        }
        write_atomically(self.files, self.directory / CLEAN_SHUTDOWN_FILE, msgpack.packb(marker))

    def abandon(self) -> None:
        """Drop the partition without any closing writes, as a killed process would."""
        with self._lock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        # readers holding a segment keep its descriptor alive; the rest close now
        self._segments = ()
        self._bases = ()
