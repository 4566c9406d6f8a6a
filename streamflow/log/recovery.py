"""Recover a partition directory on open: validate the tail, truncate a torn one, rebuild indexes.

Kafka-style. Each partition keeps a ``recovery-point``: an offset below which
everything is known to be fsynced. On open:

1. temporary files and index files without a segment are removed;
2. if a ``clean-shutdown`` marker matches the active segment (same base offset
   and file size) and the last batch passes its CRC, only the indexes are
   loaded (rebuilt if missing or inconsistent) and no batch is scanned;
3. otherwise every batch from the segment holding the recovery point onwards is
   validated (header, length, CRC). The first bad or torn batch, and everything
   after it, is truncated and a WARNING names the file, position and bytes
   dropped, unless the batch sits below the recovery point with good data after
   it: that is ``CorruptBatch(path, position)``, never skipped.

The marker is deleted (and the directory fsynced) before anything is written, so
a later crash can never leave a stale one. Recovery is idempotent: a second run
finds nothing to truncate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgpack

from streamflow.errors import CorruptBatch

from .durable import remove_quietly, write_atomically
from .naming import (
    CLEAN_SHUTDOWN_FILE,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    RECOVERY_POINT_FILE,
    TIME_INDEX_SUFFIX,
    TMP_SUFFIX,
    parse_stem,
)
from .segment import Segment

if TYPE_CHECKING:
    from pathlib import Path

    from .fileio import FileIO

logger = logging.getLogger("streamflow.log")


def clear_leftovers(files: FileIO, directory: Path) -> list[int]:
    """Remove temporary files and orphaned indexes; return the segment base offsets.

    Blocking.
    """
    names = files.listdir(directory)
    found = (parse_stem(n, LOG_SUFFIX) for n in names)
    bases = sorted(b for b in found if b is not None)
    kept = set(bases)
    for name in names:
        if name.endswith(TMP_SUFFIX):
            remove_quietly(files, directory / name)
            continue
        for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            base = parse_stem(name, suffix)
            if base is not None and base not in kept:
                remove_quietly(files, directory / name)
    return bases


def read_small(files: FileIO, path: Path) -> object:
    """Return the msgpack value stored in *path*, or None if missing or unreadable.

    Blocking.
    """
    try:
        return msgpack.unpackb(files.read_file(path), raw=False)
    except FileNotFoundError:
        return None
    except Exception:  # a damaged small file only costs a longer recovery
        logger.info("ignoring unreadable %s", path)
        return None


def _load_or_rebuild(segment: Segment, label: str) -> None:
    if segment.load_indexes():
        return
    logger.info("%s: rebuilding the indexes of %s", label, segment.path.name)
    result = segment.scan(verify=False)
    if result.problem is not None:
        raise CorruptBatch(segment.path, result.end, result.problem)


def _open_clean(segments: list[Segment], marker: object, label: str) -> bool:
    active = segments[-1]
    if (
        not isinstance(marker, dict)
        or marker.get("base_offset") != active.base_offset
        or marker.get("size") != active.file_size
    ):
        return False
    try:
        for segment in segments:
            _load_or_rebuild(segment, label)
    except CorruptBatch:
        return False
    return active.last_batch_ok()


def _check_contiguous(segments: list[Segment]) -> None:
    """Raise if a closed segment ends before the next one starts (records missing)."""
    for segment, after in zip(segments, segments[1:], strict=False):
        if segment.next_offset != after.base_offset:
            raise CorruptBatch(
                segment.path,
                segment.size,
                f"segment ends at offset {segment.next_offset} but the next one starts at "
                f"{after.base_offset} (records are missing)",
            )


def recover(
    files: FileIO, directory: Path, label: str, *, gaps_allowed: bool = False
) -> tuple[list[Segment], int]:
    """Open the segments of a partition directory, recovering as the module says.

    Blocking. Returns the segments (oldest first, the last one active) and the
    recovery point. Unless *gaps_allowed* (compacted topics, where a closed
    segment may lose its last records), a closed segment must end where the
    next one starts.

    Raises:
        CorruptBatch: if a batch below the recovery point is damaged and valid
            data follows it, or a closed segment lost records at its end.
    """
    bases = clear_leftovers(files, directory)
    marker_path = directory / CLEAN_SHUTDOWN_FILE
    marker = read_small(files, marker_path)
    if remove_quietly(files, marker_path):
        files.fsync_dir(directory)
    point = read_small(files, directory / RECOVERY_POINT_FILE)
    recovery_point = point if isinstance(point, int) and point >= 0 else 0
    if not bases:
        return [Segment.create(directory, 0, files)], 0
    segments = [Segment.open(directory, base, files) for base in bases]
    if _open_clean(segments, marker, label):
        if not gaps_allowed:
            _check_contiguous(segments)
        return segments, min(recovery_point, segments[-1].next_offset)
    first = 0
    for i, segment in enumerate(segments):
        if segment.base_offset <= recovery_point:
            first = i
    for segment in segments[:first]:
        _load_or_rebuild(segment, label)
    truncated = False
    for k in range(first, len(segments)):
        segment = segments[k]
        result = segment.scan(verify=True)
        if result.problem is None:
            continue
        tail = k == len(segments) - 1 and result.reaches_eof
        if not tail and segment.next_offset < recovery_point:
            raise CorruptBatch(segment.path, result.end, result.problem)
        later = segments[k + 1 :]
        dropped = segment.file_size - result.end + sum(s.file_size for s in later)
        logger.warning(
            "%s: %s at byte %d of %s; truncating %d bytes from there on",
            label,
            result.problem,
            result.end,
            segment.path,
            dropped,
        )
        segment.truncate(result.end)
        for stale in later:
            stale.delete()
            stale.close()
        del segments[k + 1 :]
        files.fsync_dir(directory)
        truncated = True
        break
    if not gaps_allowed:
        _check_contiguous(segments)
    end = segments[-1].next_offset
    if recovery_point > end and not truncated:
        logger.warning(
            "%s: the log ends at offset %d, below its recovery point %d: records that "
            "were fsynced are missing from %s",
            label,
            end,
            recovery_point,
            segments[-1].path,
        )
    if recovery_point > end:
        # a stale, higher point would make a later torn tail below it look like
        # corruption in the middle of the log
        write_atomically(files, directory / RECOVERY_POINT_FILE, msgpack.packb(end))
        recovery_point = end
    return segments, recovery_point
