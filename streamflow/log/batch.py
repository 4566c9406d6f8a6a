"""Encode and decode record batches, the on-disk unit of the log (pure bytes).

A segment file is a sequence of batches. One batch, every integer big-endian::

    position  size  field
    0         4     length             u32  bytes after this field (56 + payload size)
    4         4     crc                u32  zlib.crc32 (CRC-32/ISO-HDLC, the zip/PNG CRC) of
                                            every byte after this field, positions 8 to the end
    8         1     magic              u8   format version, 1
    9         1     attributes         u8   0 (reserved)
    10        8     base_offset        i64  offset of the batch's first record slot
    18        4     last_offset_delta  u32  last slot's offset minus base_offset; kept when
                                            compaction removes records, so offsets never move
    22        8     first_timestamp    i64  ms since the epoch; timestamps are stored relative to it
    30        8     max_timestamp      i64  largest timestamp in the batch
    38        8     producer_id        i64  -1 when the append was not idempotent
    46        2     producer_epoch     i16  -1 when none
    48        8     base_sequence      i64  sequence number of the first slot, -1 when none
    56        4     record_count       u32  records actually stored in the payload
    60        ...   payload            one msgpack array, packed with use_bin_type=True:
                                       [offset_deltas, timestamp_deltas, keys, values, headers]

In the payload, ``offset_deltas`` is nil when the records are contiguous (record i
has offset ``base_offset + i``; only compaction writes a list), ``timestamp_deltas``
is nil when every record has ``first_timestamp``, else a list of
``timestamp - first_timestamp``, and ``headers`` is nil when no record has headers,
else a list of maps or nils. ``keys`` and ``values`` are lists of any msgpack value.
The payload is columnar on purpose: encoding or decoding a batch is one msgpack
call, and the decoded lists become ``RecordBatch`` columns as they are.

The sequence number of record slot i is ``base_sequence + i``, so the last sequence
of a batch is ``base_sequence + last_offset_delta`` even after compaction.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack

from streamflow.errors import CorruptBatch, NotSerializable

from .record import RecordBatch

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from .record import Headers

HEADER: Final = struct.Struct(">IIBBqIqqqhqI")
HEADER_SIZE: Final = HEADER.size
LENGTH_SIZE: Final = 4
CRC_END: Final = 8
MAGIC: Final = 1
NO_PRODUCER: Final = -1
MIN_LENGTH: Final = HEADER_SIZE - LENGTH_SIZE
MAX_I16: Final = (1 << 15) - 1
MAX_U32: Final = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The fixed fields of one batch (layout in the module docstring)."""

    length: int
    crc: int
    magic: int
    attributes: int
    base_offset: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Return the batch's size in bytes, length field included."""
        return LENGTH_SIZE + self.length

    @property
    def last_offset(self) -> int:
        """Return the offset of the batch's last record slot."""
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        """Return the offset just after the batch."""
        return self.base_offset + self.last_offset_delta + 1

    @property
    def last_sequence(self) -> int:
        """Return the sequence number of the last slot (-1 without a producer)."""
        if self.base_sequence < 0:
            return -1
        return self.base_sequence + self.last_offset_delta


def find_unencodable(value: object) -> object:
    """Return the innermost part of *value* that msgpack refuses (or *value*).

    >>> type(find_unencodable({"a": [1, {2, 3}]})).__name__
    'set'
    """
    if isinstance(value, dict):
        for k, v in value.items():
            for part in (k, v):
                if not _encodable(part):
                    return find_unencodable(part)
    elif isinstance(value, list | tuple):
        for item in value:
            if not _encodable(item):
                return find_unencodable(item)
    return value


def _encodable(value: object) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def pack_payload(
    offset_deltas: Sequence[int] | None,
    timestamp_deltas: Sequence[int] | None,
    keys: Sequence[Any],
    values: Sequence[Any],
    headers: Sequence[Headers | None] | None,
) -> bytes:
    """Encode the payload of a batch in one msgpack call.

    Raises:
        NotSerializable: if a key, value or header cannot be encoded; it names
            the type msgpack refused.

    >>> len(pack_payload(None, None, [1], ["a"], None))
    9
    """
    try:
        return msgpack.packb(
            [offset_deltas, timestamp_deltas, keys, values, headers], use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        for what, column in (("key", keys), ("value", values), ("header", headers or ())):
            for item in column:
                if not _encodable(item):
                    raise NotSerializable(find_unencodable(item), what) from exc
        raise NotSerializable(timestamp_deltas, "timestamp") from exc


#: Values packed per msgpack call by ``pack_payload_bounded``.
VALUE_CHUNK: Final = 1024


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def pack_payload_bounded(
    offset_deltas: Sequence[int] | None,
    timestamp_deltas: Sequence[int] | None,
    keys: Sequence[Any],
    values: Sequence[Any],
    headers: Sequence[Headers | None] | None,
    limit: int,
) -> tuple[bytes, int]:
    """Encode the payload as ``pack_payload`` does, and find a value packed larger than *limit*.

    The values are packed in chunks of ``VALUE_CHUNK`` (one msgpack call each)
    and the chunks' elements joined under one array header, which gives the
    same bytes as packing the whole payload at once. A chunk of at most
    *limit* bytes cannot hold a larger value, so only a bigger chunk is
    measured value by value: the size check costs nothing on ordinary batches.

    Returns:
        The payload, and the packed size of the largest value when some value
        is larger than *limit* (else 0).

    Raises:
        NotSerializable: as ``pack_payload``.

    >>> payload, biggest = pack_payload_bounded(None, None, [1, 2], ["a", "bc"], None, 2)
    >>> payload == pack_payload(None, None, [1, 2], ["a", "bc"], None), biggest
    (True, 3)
    """
    packer = msgpack.Packer(use_bin_type=True)
    pack = packer.pack
    n = len(values)
    biggest = 0
    try:
        parts: list[bytes | memoryview] = [
            packer.pack_array_header(5),
            pack(offset_deltas),
            pack(timestamp_deltas),
            pack(keys),
            packer.pack_array_header(n),
        ]
        for i in range(0, n, VALUE_CHUNK):
            chunk = values[i : i + VALUE_CHUNK]
            body = memoryview(pack(chunk))[_array_header_size(len(chunk)) :]
            if len(body) > limit:
                biggest = max(biggest, *map(len, map(pack, chunk)))
            parts.append(body)
        parts.append(pack(headers))
    except (TypeError, ValueError, OverflowError):
        # pack_payload raises the NotSerializable that names the culprit
        return pack_payload(offset_deltas, timestamp_deltas, keys, values, headers), 0
    return b"".join(parts), biggest if biggest > limit else 0


def frame(
    payload: bytes,
    *,
    base_offset: int,
    last_offset_delta: int,
    record_count: int,
    first_timestamp: int,
    max_timestamp: int,
    producer_id: int = NO_PRODUCER,
    producer_epoch: int = NO_PRODUCER,
    base_sequence: int = NO_PRODUCER,
) -> bytes:
    """Return the 60-byte header that frames *payload* as one batch.

    The batch on disk is ``header + payload``; writing the two parts with one
    ``pwritev`` avoids copying the payload.

    Raises:
        TypeError: if a timestamp is not an integer.
        ValueError: if a field does not fit its width.
    """
    rest = HEADER.pack(
        0,
        0,
        MAGIC,
        0,
        base_offset,
        last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    )[CRC_END:]
    crc = zlib.crc32(payload, zlib.crc32(rest))
    length = HEADER_SIZE - LENGTH_SIZE + len(payload)
    if length > MAX_U32:
        raise ValueError(f"batch of {length} bytes does not fit a segment; append fewer records")
    return struct.pack(">II", length, crc) + rest


def encode_batch(base_offset: int, keys: Sequence[Any], values: Sequence[Any]) -> bytes:
    """Encode a simple batch (timestamps 0, no headers, no producer): for tests and tools.

    >>> parse_header(encode_batch(7, [1], ["a"])).base_offset
    7
    """
    payload = pack_payload(None, None, keys, values, None)
    n = len(values)
    header = frame(
        payload,
        base_offset=base_offset,
        last_offset_delta=max(n - 1, 0),
        record_count=n,
        first_timestamp=0,
        max_timestamp=0,
    )
    return header + payload


def parse_header(buf: bytes | bytearray | memoryview, position: int = 0) -> BatchHeader:
    """Read the fixed header at *position* of *buf* (which must hold 60 bytes there).

    The fields are not checked; ``looks_valid`` and ``crc_matches`` do that.
    """
    return BatchHeader(*HEADER.unpack_from(buf, position))


def looks_valid(header: BatchHeader) -> bool:
    """Return whether the header's fields are possible (before the CRC check)."""
    return (
        header.magic == MAGIC
        and header.length >= MIN_LENGTH
        and header.base_offset >= 0
        and header.record_count <= header.last_offset_delta + 1
    )


def crc_matches(buf: bytes | bytearray | memoryview, position: int, header: BatchHeader) -> bool:
    """Return whether the batch at *position* of *buf* (whole in *buf*) has a good CRC."""
    end = position + LENGTH_SIZE + header.length
    return zlib.crc32(memoryview(buf)[position + CRC_END : end]) == header.crc


def decode(buf: bytes | bytearray | memoryview, position: int, header: BatchHeader) -> RecordBatch:
    """Decode the records of the batch at *position* of *buf* (CRC already checked).

    Raises:
        ValueError: if the payload is not the array the header promises.
    """
    start = position + HEADER_SIZE
    end = position + LENGTH_SIZE + header.length
    try:
        parts = msgpack.unpackb(memoryview(buf)[start:end], raw=False, strict_map_key=False)
    except Exception as exc:  # any msgpack failure means the payload is not ours
        raise ValueError(f"payload does not decode: {exc}") from exc
    if not isinstance(parts, list) or len(parts) != 5:
        raise ValueError("payload is not a 5-element array")
    offset_deltas, timestamp_deltas, keys, values, headers = parts
    n = header.record_count
    if not isinstance(keys, list) or not isinstance(values, list):
        raise ValueError("keys or values column is not an array")
    if len(keys) != n or len(values) != n:
        raise ValueError("column lengths differ from record_count")
    base = header.base_offset
    if offset_deltas is None:
        offsets = list(range(base, base + n))
    else:
        offsets = [base + d for d in offset_deltas]
    first = header.first_timestamp
    if timestamp_deltas is None:
        timestamps = [first] * n
    else:
        timestamps = [first + d for d in timestamp_deltas]
    if len(offsets) != n or len(timestamps) != n or (headers is not None and len(headers) != n):
        raise ValueError("column lengths differ from record_count")
    return RecordBatch(offsets, timestamps, keys, values, headers)


def checked_header(buf: bytes | bytearray | memoryview, position: int = 0) -> BatchHeader:
    """Return the header of the batch at *position* of *buf* once the whole batch passes.

    The batch must lie whole in *buf*, have a possible header and a good CRC.

    Raises:
        ValueError: naming what is wrong (the reasons ``CorruptBatch`` gives).

    >>> checked_header(encode_batch(7, [1], ["a"])).next_offset
    8
    """
    if len(buf) - position < HEADER_SIZE:
        raise ValueError("batch header cut short")
    header = parse_header(buf, position)
    if not looks_valid(header):
        raise ValueError("impossible batch header")
    if position + header.size > len(buf):
        raise ValueError("batch runs past the end of the data")
    if not crc_matches(buf, position, header):
        raise ValueError("bad CRC")
    return header


def trim(batch: RecordBatch, offset: int) -> RecordBatch:
    """Return the records of *batch* at or after *offset* (the batch itself if all are).

    >>> trim(RecordBatch([4, 5, 7], [1, 1, 2], ["a", "b", "c"], [1, 2, 3]), 6).offsets
    [7]
    """
    offsets = batch.offsets
    if not offsets or offsets[0] >= offset:
        return batch
    i = bisect_left(offsets, offset)
    return RecordBatch(
        offsets[i:],
        batch.timestamps[i:],
        batch.keys[i:],
        batch.values[i:],
        None if batch.headers is None else batch.headers[i:],
    )


def decode_run(
    data: bytes | memoryview,
    path: Path,
    position: int,
    offset: int,
    floor: int,
    label: str,
    out: list[RecordBatch],
) -> int:
    """Check and decode whole batches laid end to end in *data*; append them to *out*.

    *data* is the bytes of segment file *path* from byte *position* (a stored
    run). Each batch must lie whole in *data*, pass ``checked_header``, end at
    or after *offset* and start at or after *floor* (where the batch before it
    ended). Records before *offset* are dropped (a read may start inside a
    stored batch, and compacted batches have gaps), and so are batches left empty.

    Returns:
        The offset after the last batch: the *floor* for the next run.

    Raises:
        CorruptBatch: naming *path*, the batch's byte position in it, and in its
            reason *label* (the topic and partition) and the offset reached.
    """
    at = 0
    while at < len(data):
        try:
            header = checked_header(data, at)
            if header.base_offset < floor or header.last_offset < offset:
                raise ValueError("batch offsets out of order")
            batch = decode(data, at, header)
        except ValueError as exc:
            reached = max(offset, floor)
            raise CorruptBatch(
                path, position + at, f"{exc} ({label}, reading from offset {reached})"
            ) from exc
        at += header.size
        floor = header.next_offset
        batch = trim(batch, offset)
        if batch.offsets:
            out.append(batch)
    return floor
