"""Compact closed segments: keep the newest record per key, drop expired tombstones.

Like Kafka's cleaner: the newest record per key is found by offset across the
closed segments (the active segment is not consulted); every closed segment
with something to drop is rewritten with the same base offset, the kept batches
keeping their ``base_offset``, ``last_offset_delta`` and producer fields, so
offsets and producer sequences never change. Records without a key are kept.
A tombstone (value None) is dropped once its segment's newest timestamp is
older than the cutoff (``now - delete_retention_ms``).

Swap, per segment: write ``<segment>.log.tmp`` and fsync it, remove the old
index files, rename the new file over the old one, fsync the directory. A crash
leaves the old or the new segment (never neither); missing indexes are rebuilt
at open. Blocking; the caller holds the partition's cleaning lock, so closed
segments cannot change underneath.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgpack

from streamflow.failpoint import failpoint

from .batch import frame, pack_payload
from .durable import remove_quietly
from .naming import TMP_SUFFIX, index_path, time_index_path
from .segment import Segment

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .batch import BatchHeader
    from .record import RecordBatch


def newest_offsets(segments: Sequence[Segment]) -> dict[bytes, int]:
    """Map each key (as msgpack bytes) to the offset of its newest record. Blocking."""
    latest: dict[bytes, int] = {}
    packb = msgpack.packb
    for segment in segments:
        for _, _, batch in segment.iter_batches(segment.size):
            for key, offset in zip(batch.keys, batch.offsets, strict=True):
                if key is not None:
                    latest[packb(key)] = offset
    return latest


def _rebuild(header: BatchHeader, batch: RecordBatch, keep: list[int]) -> bytes:
    base, first = header.base_offset, header.first_timestamp
    payload = pack_payload(
        [batch.offsets[i] - base for i in keep],
        [batch.timestamps[i] - first for i in keep],
        [batch.keys[i] for i in keep],
        [batch.values[i] for i in keep],
        None if batch.headers is None else [batch.headers[i] for i in keep],
    )
    head = frame(
        payload,
        base_offset=base,
        last_offset_delta=header.last_offset_delta,
        record_count=len(keep),
        first_timestamp=first,
        max_timestamp=header.max_timestamp,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
    )
    return head + payload


def _rewrite(segment: Segment, latest: dict[bytes, int], cutoff: int) -> tuple[list[bytes], int]:
    drop_tombstones = segment.max_timestamp < cutoff
    packb = msgpack.packb
    parts: list[bytes] = []
    removed = 0
    for header, raw, batch in segment.iter_batches(segment.size):
        keep = [
            i
            for i, (key, value, offset) in enumerate(
                zip(batch.keys, batch.values, batch.offsets, strict=True)
            )
            if key is None
            or (latest[packb(key)] == offset and not (value is None and drop_tombstones))
        ]
        if len(keep) == len(batch):
            parts.append(raw)
            continue
        removed += len(batch) - len(keep)
        if keep:
            parts.append(_rebuild(header, batch, keep))
    return parts, removed


def _swap(segment: Segment, parts: list[bytes]) -> Segment:
    files, directory, base = segment.files, segment.directory, segment.base_offset
    tmp = segment.path.with_name(segment.path.name + TMP_SUFFIX)
    handle = files.open(tmp, create=True, truncate=True)
    try:
        files.pwrite(handle, parts, 0)
        files.fsync(handle)
    finally:
        files.close(handle)
    remove_quietly(files, index_path(directory, base))
    remove_quietly(files, time_index_path(directory, base))
    failpoint("log.mid_compaction_swap")
    files.rename(tmp, segment.path)
    files.fsync_dir(directory)
    new = Segment.open(directory, base, files)
    new.scan(verify=False)
    new.write_indexes()
    return new


def compact_segments(
    segments: Sequence[Segment], cutoff: int, replacements: dict[int, Segment]
) -> int:
    """Rewrite the closed *segments* that have records to drop. Blocking.

    Each rewritten segment is put into *replacements* (by base offset) as soon
    as it is on disk, so the caller can swap in what was done even when a
    later segment fails. Returns the number of records removed.
    """
    latest = newest_offsets(segments)
    removed_total = 0
    for segment in segments:
        parts, removed = _rewrite(segment, latest, cutoff)
        if removed:
            replacements[segment.base_offset] = _swap(segment, parts)
            removed_total += removed
    return removed_total
