"""Store one segment file: append batches, read them back, validate and truncate.

A segment is ``<base_offset:020d>.log`` (batches, layout in ``batch.py``) plus its
derived indexes (``index.py``). Blocking.

Concurrency: appends, truncation and index writes happen under the owning
partition's lock, one writer at a time. Reads are safe from many threads at
once: they ``pread`` the segment's own file handle up to a byte limit the
caller took under that lock, so they only ever see whole batches. The handle
stays open until the ``Segment`` object is garbage, so a reader that holds a
segment keeps reading it even after retention deleted the file or compaction
replaced it. All I/O goes through the partition's ``FileIO`` (``fileio.py``).

A failed append cuts its partial batch off again, so a full disk leaves no
garbage between batches; if even that cut fails, ``dirty_tail`` is set and
the owner must stop writing to the segment.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from streamflow.errors import CorruptBatch
from streamflow.failpoint import failpoint

from .batch import (
    HEADER_SIZE,
    BatchHeader,
    crc_matches,
    decode,
    looks_valid,
    parse_header,
)
from .durable import remove_quietly, write_atomically
from .fileio import OS_FILES
from .index import INDEX_INTERVAL_BYTES, OffsetIndex, TimeIndex
from .naming import TMP_SUFFIX, index_path, log_path, time_index_path
from .record import RecordBatch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from .fileio import FileIO

NO_TIMESTAMP: Final = -(1 << 63)
READ_CHUNK: Final = 64 << 10
SCAN_CHUNK: Final = 1 << 20
MAX_READ_CHUNK: Final = 8 << 20
UNLIMITED: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class ScanResult:
    """How far a scan found whole, valid batches, and what stopped it."""

    end: int
    problem: str | None = None
    reaches_eof: bool = False


class _Window:
    """A pread-backed window over a file, refilled in chunks."""

    __slots__ = ("files", "handle", "limit", "chunk", "buf", "start")

    def __init__(self, files: FileIO, handle: int, limit: int, chunk: int) -> None:
        self.files = files
        self.handle = handle
        self.limit = limit
        self.chunk = chunk
        self.buf = b""
        self.start = 0

    def get(self, position: int, n: int) -> tuple[bytes, int] | None:
        """Return ``(buffer, index)`` with bytes ``[position, position + n)`` at *index*."""
        if position + n > self.limit:
            return None
        if position < self.start or position + n > self.start + len(self.buf):
            want = min(max(n, self.chunk), self.limit - position)
            self.buf = self.files.pread(self.handle, want, position)
            self.start = position
            if len(self.buf) < n:
                return None
        return self.buf, position - self.start


@dataclass(frozen=True, slots=True)
class StoredRun:
    """Whole batches exactly as stored: the bytes of segment *segment* from byte *position*.

    ``segment`` is the segment's base offset (its file is ``<segment:020d>.log``).
    """

    segment: int
    position: int
    data: bytes | memoryview


def holds_from(header: BatchHeader, offset: int) -> bool:
    """Return whether a batch whose last slot is at or after *offset* surely has a record there.

    Only the header is looked at: a batch that starts at or after *offset*
    holds records, and so does a straddling batch with every slot filled; a
    straddling compacted batch may have lost the records at or after *offset*.
    """
    return header.record_count > 0 and (
        header.base_offset >= offset or header.record_count == header.last_offset_delta + 1
    )


def slice_batch(batch: RecordBatch, i: int, j: int) -> RecordBatch:
    """Return records ``[i, j)`` of *batch*."""
    return RecordBatch(
        batch.offsets[i:j],
        batch.timestamps[i:j],
        batch.keys[i:j],
        batch.values[i:j],
        None if batch.headers is None else batch.headers[i:j],
    )


class Segment:
    """One segment file and its indexes (concurrency contract: module docstring)."""

    def __init__(
        self, directory: Path, base_offset: int, handle: int, files: FileIO = OS_FILES
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.path = log_path(directory, base_offset)
        self.files = files
        self.handle = handle
        self.dirty_tail = False
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.first_max_timestamp = NO_TIMESTAMP
        self.last_batch_position = -1
        self.index = OffsetIndex(base_offset)
        self.time_index = TimeIndex(base_offset)
        self._close = weakref.finalize(self, files.close, handle)

    @classmethod
    def create(cls, directory: Path, base_offset: int, files: FileIO = OS_FILES) -> Segment:
        """Create an empty segment file at *base_offset*, durably. Blocking."""
        path = log_path(directory, base_offset)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        handle = files.open(tmp, create=True, truncate=True)
        try:
            files.fsync(handle)
            files.rename(tmp, path)
            for stale in (
                index_path(directory, base_offset),
                time_index_path(directory, base_offset),
            ):
                remove_quietly(files, stale)
            files.fsync_dir(directory)
        except BaseException:
            files.close(handle)
            raise
        return cls(directory, base_offset, handle, files)

    @classmethod
    def open(cls, directory: Path, base_offset: int, files: FileIO = OS_FILES) -> Segment:
        """Open an existing segment file; its indexes are not loaded yet. Blocking."""
        handle = files.open(log_path(directory, base_offset))
        return cls(directory, base_offset, handle, files)

    def close(self) -> None:
        """Close the file descriptor now (only when no reader can hold the segment)."""
        self._close()

    @property
    def file_size(self) -> int:
        """Return the file's size on disk. Blocking."""
        return self.files.size(self.handle)

    # -- writing (partition lock held) ---------------------------------------------------

    def track(self, position: int, header: BatchHeader) -> None:
        """Account for the batch at *position*: indexes, counters, then the published size."""
        if not self.index.offsets or position - self.index.positions[-1] >= INDEX_INTERVAL_BYTES:
            times = self.time_index.timestamps
            if self.max_timestamp != NO_TIMESTAMP and (not times or self.max_timestamp > times[-1]):
                self.time_index.add(self.max_timestamp, header.base_offset)
            self.index.add(header.base_offset, position)
        if self.first_max_timestamp == NO_TIMESTAMP:
            self.first_max_timestamp = header.max_timestamp
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
        self.last_batch_position = position
        self.next_offset = header.next_offset
        self.size = position + header.size

    def append(self, header_bytes: bytes, payload: bytes, header: BatchHeader) -> None:
        """Write one framed batch at the end of the file and publish it. Blocking."""
        position = self.size
        try:
            self.files.pwrite(self.handle, [header_bytes, payload], position)
        except OSError:
            # cut the partial batch off, or a later batch would sit behind garbage
            try:
                self.files.truncate(self.handle, position)
            except OSError:
                self.dirty_tail = True
            raise
        self.track(position, header)

    def flush(self) -> None:
        """Fsync the segment's data. Blocking.

        Raises:
            FsyncFailed: if the fsync fails (fatal for the segment's partition).
        """
        self.files.fsync(self.handle)

    def write_indexes(self) -> None:
        """Write the ``.index`` and ``.timeindex`` files from memory. Blocking."""
        files = self.files
        write_atomically(files, index_path(self.directory, self.base_offset), self.index.encode())
        failpoint("log.mid_index_write")
        write_atomically(
            files, time_index_path(self.directory, self.base_offset), self.time_index.encode()
        )

    def truncate(self, position: int) -> None:
        """Cut the file at *position* (a batch boundary found by ``scan``). Blocking."""
        self.files.truncate(self.handle, position)
        self.files.fsync(self.handle)
        self.index.truncate(position)
        self.time_index.truncate(self.next_offset)
        self.size = position

    def delete(self, failpoint_name: str | None = None) -> None:
        """Remove the segment's files; open readers keep their view. Blocking.

        *failpoint_name* is hit after the ``.log`` is removed, before the indexes.
        """
        # the .log first: an index left without its log is cleaned at open
        remove_quietly(self.files, self.path)
        if failpoint_name is not None:
            failpoint(failpoint_name)
        remove_quietly(self.files, index_path(self.directory, self.base_offset))
        remove_quietly(self.files, time_index_path(self.directory, self.base_offset))

    # -- validation -----------------------------------------------------------------------

    def _reset(self) -> None:
        self.size = 0
        self.next_offset = self.base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.first_max_timestamp = NO_TIMESTAMP
        self.last_batch_position = -1
        self.index = OffsetIndex(self.base_offset)
        self.time_index = TimeIndex(self.base_offset)

    def scan(
        self,
        *,
        verify: bool,
        start: int = 0,
        on_batch: Callable[[BatchHeader], None] | None = None,
    ) -> ScanResult:
        """Walk the batches from byte *start*, tracking each whole, valid one. Blocking.

        With *start* 0 the indexes and counters are rebuilt from scratch; a
        non-zero *start* must be a batch boundary already tracked up to. With
        *verify*, every batch's CRC is checked too. Stops at the first batch
        that is cut short, impossible or (with *verify*) corrupt; the result says
        where and why. Nothing is truncated here.
        """
        if start == 0:
            self._reset()
        file_size = self.file_size
        window = _Window(self.files, self.handle, file_size, SCAN_CHUNK)
        position = start
        while position < file_size:
            got = window.get(position, HEADER_SIZE)
            if got is None:
                return ScanResult(position, "batch header cut short", True)
            header = parse_header(*got)
            if not looks_valid(header) or header.base_offset < self.next_offset:
                return ScanResult(position, "impossible batch header", False)
            end = position + header.size
            if end > file_size:
                return ScanResult(position, "batch runs past the end of the file", True)
            if verify:
                got = window.get(position, header.size)
                if got is None or not crc_matches(got[0], got[1], header):
                    return ScanResult(position, "bad CRC", end == file_size)
            self.track(position, header)
            if on_batch is not None:
                on_batch(header)
            position = end
        return ScanResult(position)

    def load_indexes(self) -> bool:
        """Load the index files and scan the tail after the last entry. Blocking.

        Returns False (and leaves the segment reset) when an index file is
        missing or does not match the log; the caller then rebuilds with ``scan``.
        """
        try:
            index_data = self.files.read_file(index_path(self.directory, self.base_offset))
            time_data = self.files.read_file(time_index_path(self.directory, self.base_offset))
        except FileNotFoundError:
            return False
        file_size = self.file_size
        index = OffsetIndex.decode(self.base_offset, index_data, file_size)
        if index is None or (file_size > 0 and not index.offsets):
            return False
        self._reset()
        if not index.offsets:
            return file_size == 0
        # the last entry must land on a batch with its offset; the tail after it is scanned
        last_offset, last_position = index.offsets[-1], index.positions[-1]
        head = self.files.pread(self.handle, HEADER_SIZE, last_position)
        if len(head) < HEADER_SIZE:
            return False
        header = parse_header(head)
        if not looks_valid(header) or header.base_offset != last_offset:
            return False
        time_index = TimeIndex.decode(self.base_offset, time_data, header.next_offset)
        if time_index is None:
            return False
        first = parse_header(self.files.pread(self.handle, HEADER_SIZE, 0))
        self.index = index
        self.time_index = time_index
        self.first_max_timestamp = first.max_timestamp
        self.max_timestamp = time_index.timestamps[-1] if time_index.timestamps else NO_TIMESTAMP
        self.next_offset = last_offset
        self.size = last_position
        result = self.scan(verify=False, start=last_position)
        if result.problem is not None or result.end != file_size:
            self._reset()
            return False
        return True

    # -- reading (no lock; *limit* taken under the partition lock) -------------------------

    def _batches(
        self, offset: int, limit: int, chunk: int
    ) -> Iterator[tuple[int, BatchHeader, _Window]]:
        """Yield ``(position, header, window)`` for batches that may hold offsets >= *offset*."""
        entry_offset, position = self.index.lookup(offset)
        window = _Window(self.files, self.handle, limit, chunk)
        checked = False
        while position < limit:
            got = window.get(position, HEADER_SIZE)
            if got is None:
                raise CorruptBatch(self.path, position, "batch header cut short")
            header = parse_header(*got)
            if not checked:
                checked = True
                if position != 0 and (
                    header.base_offset != entry_offset or not looks_valid(header)
                ):
                    # the index does not match the log; fall back to a walk from the start
                    position = 0
                    continue
            if not looks_valid(header) or position + header.size > limit:
                raise CorruptBatch(self.path, position, "impossible batch header")
            if header.last_offset >= offset:
                yield position, header, window
            position += header.size

    def read_batch(self, position: int, header: BatchHeader, window: _Window) -> RecordBatch:
        """Check and decode the batch at *position*; raise ``CorruptBatch`` if it is bad."""
        got = window.get(position, header.size)
        if got is None or not crc_matches(got[0], got[1], header):
            raise CorruptBatch(self.path, position)
        try:
            return decode(got[0], got[1], header)
        except ValueError as exc:
            raise CorruptBatch(self.path, position, str(exc)) from exc

    def read(
        self, offset: int, limit: int, max_bytes: int, max_records: int
    ) -> tuple[list[RecordBatch], int, int, bool]:
        """Return the batches holding offsets >= *offset*, below byte *limit*. Blocking.

        Stops before a batch that would take the total past *max_bytes* (except
        the first) or once *max_records* records are in hand; the last batch is
        cut to fit. Returns ``(batches, bytes, records, complete)``, where
        *complete* says that every batch up to *limit* was read: a caller that
        goes on to the next segment after an incomplete read would skip records.
        """
        chunk = max(READ_CHUNK, min(max_bytes, MAX_READ_CHUNK))
        out: list[RecordBatch] = []
        used = count = 0
        for position, header, window in self._batches(offset, limit, chunk):
            if out and used + header.size > max_bytes:
                return out, used, count, False
            batch = self.read_batch(position, header, window)
            used += header.size
            if header.base_offset < offset:
                batch = slice_batch(batch, bisect_left(batch.offsets, offset), len(batch))
            if not batch.offsets:
                continue
            if count + len(batch) >= max_records:
                out.append(slice_batch(batch, 0, max_records - count))
                return out, used, max_records, False
            out.append(batch)
            count += len(batch)
            if used >= max_bytes:
                return out, used, count, position + header.size >= limit
        return out, used, count, True

    def read_stored(
        self, offset: int, limit: int, max_bytes: int, found: bool
    ) -> tuple[StoredRun | None, int, bool, bool]:
        """Return the batches holding offsets >= *offset* below byte *limit*, as stored. Blocking.

        Only headers are checked (the reader checks CRCs and decodes). Stops
        before a batch that would take the total past *max_bytes* once a batch
        that surely has a record at or after *offset* is in hand (*found* says
        an earlier segment gave one). The batches are contiguous, so they come
        back as one run, read with one ``pread`` where the header walk's window
        does not already hold them. Returns ``(run, bytes, found, complete)``
        as ``read`` does.
        """
        chunk = max(READ_CHUNK, min(max_bytes + INDEX_INTERVAL_BYTES, MAX_READ_CHUNK))
        start = end = -1
        complete = True
        window = None
        for position, header, walked in self._batches(offset, limit, chunk):
            window = walked
            if found and end - start + header.size > max_bytes:
                complete = False
                break
            if start < 0:
                start = position
            end = position + header.size
            found = found or holds_from(header, offset)
            if found and end - start >= max_bytes:
                complete = end >= limit
                break
        if window is None or start < 0:
            return None, 0, found, complete
        if window.start <= start and end <= window.start + len(window.buf):
            data: bytes | memoryview = memoryview(window.buf)[
                start - window.start : end - window.start
            ]
        else:
            data = self.files.pread(self.handle, end - start, start)
            if len(data) < end - start:
                raise CorruptBatch(self.path, start, "batches cut short")
        return StoredRun(self.base_offset, start, data), end - start, found, complete

    def last_batch_ok(self) -> bool:
        """Return whether the last tracked batch passes its CRC. Blocking."""
        position = self.last_batch_position
        if position < 0:
            return True
        window = _Window(self.files, self.handle, self.size, READ_CHUNK)
        got = window.get(position, HEADER_SIZE)
        if got is None:
            return False
        header = parse_header(*got)
        got = window.get(position, header.size)
        return got is not None and crc_matches(got[0], got[1], header)

    def headers(self, offset: int, limit: int) -> Iterator[BatchHeader]:
        """Yield the headers of the batches below *limit* that hold offsets >= *offset*."""
        for _, header, _ in self._batches(offset, limit, SCAN_CHUNK):
            yield header

    def iter_batches(self, limit: int) -> Iterator[tuple[BatchHeader, bytes, RecordBatch]]:
        """Yield every batch below *limit* as ``(header, raw bytes, records)``. Blocking."""
        for position, header, window in self._batches(self.base_offset, limit, SCAN_CHUNK):
            batch = self.read_batch(position, header, window)
            got = window.get(position, header.size)
            assert got is not None
            raw = got[0][got[1] : got[1] + header.size]
            yield header, raw, batch

    def offset_for_timestamp(self, timestamp: int, limit: int) -> int | None:
        """Return the first offset below *limit* with a timestamp >= *timestamp*. Blocking."""
        start = self.time_index.lookup(timestamp)
        for position, header, window in self._batches(start, limit, READ_CHUNK):
            if header.max_timestamp < timestamp:
                continue
            batch = self.read_batch(position, header, window)
            for offset, ts in zip(batch.offsets, batch.timestamps, strict=True):
                if ts >= timestamp and offset >= start:
                    return offset
        return None


def read_stored_runs(
    segments: Sequence[Segment], limit: int, offset: int, max_bytes: int
) -> list[StoredRun]:
    """Read the stored batches holding offsets >= *offset* across *segments*. Blocking.

    *limit* is the published size of the last segment. One run per segment;
    the byte budget spans them as in ``Partition.read_batches``, and a
    segment that stopped early ends the read (going on would skip records).
    """
    runs: list[StoredRun] = []
    bytes_left = max_bytes
    found = False
    last = segments[-1]
    for segment in segments:
        seg_limit = limit if segment is last else segment.size
        run, used, found, complete = segment.read_stored(offset, seg_limit, bytes_left, found)
        if run is not None:
            runs.append(run)
        bytes_left -= used
        if not complete or (found and bytes_left <= 0):
            break
    if runs and not found:
        # All that came back is a straddling compacted batch at the end of the
        # data; only decoding it tells whether a record at or after *offset* is
        # left. Without one the read must be empty, so that a long poll waits.
        segment = next(s for s in segments if s.base_offset == runs[0].segment)
        seg_limit = limit if segment is last else segment.size
        if not segment.read(offset, seg_limit, UNLIMITED, UNLIMITED)[0]:
            return []
    return runs
