"""Encode and decode the broker's wire frames (the byte layout is below).

Every frame is a 4-byte unsigned big-endian length followed by that many
bytes of msgpack, the *body*. A body is an array whose first element says what
it is::

    request   [0, request_id, op, args]          op: str, args: map (str keys)
    response  [1, request_id, result]
    error     [2, request_id, error_name, message, attrs]

``request_id`` is a non-negative integer chosen by the client; responses carry
the id of the request they answer, so several requests can be in flight on
one connection and be answered out of order. The first request on a
connection must be ``hello`` with ``{"version": 1, "versions": [1, 2],
"token": str | None}``; the broker answers with the highest version both
speak, ``{"version": 2}`` (a version-1 broker ignores ``versions`` and answers
``{"version": 1}``), or an error frame (``ProtocolError`` or
``AuthenticationFailed``) and closes.

Bodies are decoded with ``strict_map_key=True`` and size limits. Record data
(keys, values, headers) is user data whose maps may have any key type, so it
travels as a nested msgpack blob (``bin``) inside the body:

    append args["columns"]   packb([keys, values, timestamps, headers])
    fetch result (v1)        packb([offsets, timestamps, keys, values, headers]) per batch
    fetch result (v2)        [segment, position, bin] per run: whole batches exactly as
                             stored (``batch.py``), which the client checks and decodes

Errors cross the wire by class name: ``error_name`` is the name of a
``streamflow.errors`` class (or ``ValueError``/``TypeError``), ``message`` its
text and ``attrs`` its public attributes, so the client raises the same class
the embedded target would. ``docs/protocol.md`` lists every operation.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack
import trio

from .. import errors
from ..errors import FrameTooLarge, NotSerializable, ProtocolError, StreamflowError
from .batch import decode_run
from .naming import TOPICS_DIR, log_path
from .record import RecordBatch
from .transport import (
    Assignment,
    Columns,
    Committed,
    GroupDescription,
    MemberDescription,
    PartitionInfo,
    TopicDescription,
)

if TYPE_CHECKING:
    from .segment import StoredRun
    from .transport import TopicPartition

#: The newest protocol version; the broker also speaks every one in ``VERSIONS``.
PROTOCOL_VERSION: Final = 2
VERSIONS: Final = (1, 2)
#: The first version whose fetch carries stored batches as they are on disk.
STORED_FETCH_VERSION: Final = 2
MAX_FRAME_BYTES: Final = 64 << 20
HEADER: Final = struct.Struct(">I")
#: Largest array or map one body (or record blob) may declare.
MAX_CONTAINER_LEN: Final = 1 << 20
RECEIVE_BYTES: Final = 1 << 16

REQUEST: Final = 0
RESPONSE: Final = 1
ERROR: Final = 2


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request body."""

    request_id: int
    op: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response body."""

    request_id: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A decoded error body; ``error()`` rebuilds the exception."""

    request_id: int
    name: str
    message: str
    attrs: dict[str, Any]

    def error(self) -> Exception:
        """Rebuild the exception the peer raised (see ``error_from_wire``)."""
        return error_from_wire(self.name, self.message, self.attrs)


Body = Request | Response | ErrorReply


def pack(obj: object) -> bytes:
    r"""Encode *obj* with msgpack; raise ``NotSerializable`` if it cannot be.

    >>> pack([1, "a"])
    b'\x92\x01\xa1a'
    """
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(_first_unpackable(obj)) from exc


def _first_unpackable(obj: object) -> object:
    """Find the innermost value msgpack refuses, for a useful error message."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            for part in (k, v):
                try:
                    msgpack.packb(part, use_bin_type=True)
                except (TypeError, ValueError, OverflowError):
                    return _first_unpackable(part)
    elif isinstance(obj, list | tuple):
        for item in obj:
            try:
                msgpack.packb(item, use_bin_type=True)
            except (TypeError, ValueError, OverflowError):
                return _first_unpackable(item)
    return obj


def unpack(data: bytes, *, strict_map_key: bool = True) -> Any:
    r"""Decode msgpack bytes we did not write, with limits; raise ``ProtocolError``.

    >>> unpack(b'\x92\x01\xa1a')
    [1, 'a']
    """
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=strict_map_key,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
        )
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"undecodable msgpack ({type(exc).__name__}: {exc})") from exc


def encode_frame(body: list[Any]) -> bytes:
    r"""Frame *body* with its 4-byte length prefix.

    >>> encode_frame([1, 5, None])
    b'\x00\x00\x00\x04\x93\x01\x05\xc0'
    """
    data = pack(body)
    return HEADER.pack(len(data)) + data


def request_frame(request_id: int, op: str, args: dict[str, Any]) -> bytes:
    """Encode a request frame."""
    return encode_frame([REQUEST, request_id, op, args])


def response_frame(request_id: int, result: Any) -> bytes:
    """Encode a response frame."""
    return encode_frame([RESPONSE, request_id, result])


def error_frame(request_id: int, exc: BaseException) -> bytes:
    """Encode *exc* as an error frame for request *request_id*."""
    name, message, attrs = error_to_wire(exc)
    return encode_frame([ERROR, request_id, name, message, attrs])


def decode_body(data: bytes) -> Body:
    r"""Decode and validate one frame body; raise ``ProtocolError`` if malformed.

    >>> decode_body(b'\x94\x00\x07\xa6topics\x80')
    Request(request_id=7, op='topics', args={})
    """
    body = unpack(data)
    if not isinstance(body, list) or not body:
        raise ProtocolError("a frame body must be a non-empty msgpack array")
    kind = body[0]
    request_id = body[1] if len(body) > 1 else None
    if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0:
        raise ProtocolError("a frame needs a non-negative integer request id")
    if kind == REQUEST and len(body) == 4:
        op, args = body[2], body[3]
        if not isinstance(op, str) or not isinstance(args, dict):
            raise ProtocolError("a request is [0, request_id, op: str, args: map]")
        return Request(request_id, op, args)
    if kind == RESPONSE and len(body) == 3:
        return Response(request_id, body[2])
    if kind == ERROR and len(body) == 5:
        name, message, attrs = body[2], body[3], body[4]
        if isinstance(name, str) and isinstance(message, str) and isinstance(attrs, dict):
            return ErrorReply(request_id, name, message, attrs)
    raise ProtocolError(f"unknown frame kind or length (kind {kind!r}, {len(body)} elements)")


# -- errors ---------------------------------------------------------------------------

_BUILTIN_ERRORS: Final[dict[str, type[Exception]]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
}


def _error_classes() -> dict[str, type[Exception]]:
    found: dict[str, type[Exception]] = dict(_BUILTIN_ERRORS)
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, StreamflowError):
            found[name] = obj
    return found


_ERROR_CLASSES: Final = _error_classes()


def error_to_wire(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """Describe *exc* as ``(class name, message, attributes)`` for an error frame.

    Exceptions that are not ours (a server bug) travel as ``StreamflowError``.

    >>> error_to_wire(errors.UnknownTopic("t", 3))[0]
    'UnknownTopic'
    """
    name = type(exc).__name__
    if _ERROR_CLASSES.get(name) is not type(exc):
        return "StreamflowError", f"broker error: {type(exc).__name__}: {exc}", {}
    attrs: dict[str, Any] = {}
    for key, value in vars(exc).items():
        if key.startswith("_"):
            continue
        if isinstance(value, Path):
            value = str(value)
        if value is None or isinstance(value, bool | int | float | str | bytes):
            attrs[key] = value
    return name, str(exc), attrs


def error_from_wire(name: str, message: str, attrs: dict[str, Any]) -> Exception:
    """Rebuild an exception from an error frame, with its class and attributes.

    >>> exc = error_from_wire(*error_to_wire(errors.UnknownTopic("t")))
    >>> type(exc).__name__, exc.topic, str(exc)
    ('UnknownTopic', 't', "topic 't' does not exist; create it first")
    """
    cls = _ERROR_CLASSES.get(name, StreamflowError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in attrs.items():
        if isinstance(key, str) and not key.startswith("_"):
            setattr(exc, key, value)
    return exc


# -- value encodings ------------------------------------------------------------------


def encode_columns(columns: Columns) -> bytes:
    """Pack a ``Columns`` as the record blob of an append request."""
    return pack([columns.keys, columns.values, columns.timestamps, columns.headers])


def decode_columns(blob: object) -> Columns:
    """Unpack an append request's record blob; raise ``ProtocolError`` if malformed.

    >>> decode_columns(encode_columns(Columns([1], [{2: "x"}]))).values
    [{2: 'x'}]
    """
    if not isinstance(blob, bytes):
        raise ProtocolError("append columns must be a msgpack bin blob")
    parts = unpack(blob, strict_map_key=False)
    if not (isinstance(parts, list) and len(parts) == 4):
        raise ProtocolError("append columns are [keys, values, timestamps, headers]")
    keys, values, timestamps, headers = parts
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise ProtocolError("append keys and values must be lists of equal length")
    for extra in (timestamps, headers):
        if extra is not None and (not isinstance(extra, list) or len(extra) != len(values)):
            raise ProtocolError("append timestamps and headers must be None or per record")
    if timestamps is not None and not all(
        t is None or (isinstance(t, int) and not isinstance(t, bool)) for t in timestamps
    ):
        raise ProtocolError("append timestamps must be integers (ms) or None")
    if headers is not None and not all(h is None or isinstance(h, dict) for h in headers):
        raise ProtocolError("append headers must be maps or None")
    return Columns(keys, values, timestamps, headers)


def encode_batch(batch: RecordBatch) -> bytes:
    """Pack a ``RecordBatch`` as a record blob of a fetch response."""
    return pack([batch.offsets, batch.timestamps, batch.keys, batch.values, batch.headers])


def decode_batch(blob: object) -> RecordBatch:
    """Unpack a fetch response's record blob.

    >>> decode_batch(encode_batch(RecordBatch([3], [9], [None], ["v"]))).offsets
    [3]
    """
    if not isinstance(blob, bytes):
        raise ProtocolError("a fetched batch must be a msgpack bin blob")
    parts = unpack(blob, strict_map_key=False)
    if not (isinstance(parts, list) and len(parts) == 5):
        raise ProtocolError("a fetched batch is [offsets, timestamps, keys, values, headers]")
    return RecordBatch(parts[0], parts[1], parts[2], parts[3], parts[4])


def negotiate_version(args: dict[str, Any]) -> int:
    """Return the highest version a ``hello`` request's *args* and this side both speak.

    ``version`` is one version the peer speaks and ``versions`` (optional, since
    version 2) lists all of them.

    Raises:
        ProtocolError: if no version is shared (the message names ours).

    >>> negotiate_version({"version": 1, "versions": [1, 2, 3]})
    2
    """
    offered = [args.get("version")]
    extra = args.get("versions")
    if isinstance(extra, list):
        offered.extend(extra)
    shared = [
        v for v in offered if isinstance(v, int) and not isinstance(v, bool) and v in VERSIONS
    ]
    if not shared:
        raise ProtocolError(
            f"protocol version {args.get('version')!r} is not supported; this broker speaks "
            f"versions {list(VERSIONS)}: upgrade the client or the broker"
        )
    return max(shared)


def encode_stored(runs: list[StoredRun]) -> list[list[Any]]:
    """Encode stored runs as ``[[segment, position, bytes], ...]`` for a version-2 fetch."""
    return [[run.segment, run.position, run.data] for run in runs]


def decode_stored(topic: str, partition: int, offset: int, rows: object) -> list[RecordBatch]:
    """Check and decode the stored runs a version-2 fetch of *offset* returned.

    Records before *offset* are dropped (see ``batch.decode_run``).

    Raises:
        CorruptBatch: a batch fails its checks; it names the broker's segment
            file (relative to its log directory), the byte position, the topic,
            partition and the offset the read had reached.
        ProtocolError: the rows are not stored runs.
    """
    if not isinstance(rows, list):
        raise ProtocolError("a fetched partition must be a list of stored runs")
    out: list[RecordBatch] = []
    floor = 0
    directory = Path(TOPICS_DIR, topic, str(partition))
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in row[:2])
            and isinstance(row[2], bytes)
        ):
            raise ProtocolError("a stored run is [segment: int, position: int, data: bin]")
        segment, position, data = row
        path = log_path(directory, segment)
        label = f"topic {topic!r} partition {partition}"
        floor = decode_run(data, path, position, offset, floor, label, out)
    return out


def encode_positions(positions: dict[TopicPartition, Any]) -> list[list[Any]]:
    """Turn a map keyed by ``(topic, partition)`` into ``[[topic, partition, value]]``."""
    return [[topic, partition, value] for (topic, partition), value in positions.items()]


def decode_positions(rows: object) -> dict[TopicPartition, Any]:
    """Invert ``encode_positions``; raise ``ProtocolError`` if malformed.

    >>> decode_positions(encode_positions({("t", 1): 5}))
    {('t', 1): 5}
    """
    if not isinstance(rows, list):
        raise ProtocolError("partition rows must be a list")
    out: dict[TopicPartition, Any] = {}
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], int)
            and not isinstance(row[1], bool)
        ):
            raise ProtocolError("a partition row is [topic: str, partition: int, value]")
        out[(row[0], row[1])] = row[2]
    return out


def decode_partitions(rows: object) -> list[TopicPartition]:
    """Decode ``[[topic, partition], ...]``; raise ``ProtocolError`` if malformed."""
    if not isinstance(rows, list):
        raise ProtocolError("partitions must be a list")
    out: list[TopicPartition] = []
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 2
            and isinstance(row[0], str)
            and isinstance(row[1], int)
            and not isinstance(row[1], bool)
        ):
            raise ProtocolError("a partition is [topic: str, partition: int]")
        out.append((row[0], row[1]))
    return out


def encode_description(desc: TopicDescription) -> dict[str, Any]:
    """Encode a ``TopicDescription`` as a map."""
    return {
        "name": desc.name,
        "config": desc.config,
        "partitions": [
            [p.partition, p.start_offset, p.end_offset, p.size_bytes] for p in desc.partitions
        ],
    }


def decode_description(obj: Any) -> TopicDescription:
    """Decode a ``TopicDescription``.

    >>> d = TopicDescription("t", {"partitions": 1}, [PartitionInfo(0, 0, 4, 99)])
    >>> decode_description(encode_description(d)) == d
    True
    """
    try:
        parts = [PartitionInfo(*map(int, row)) for row in obj["partitions"]]
        return TopicDescription(str(obj["name"]), dict(obj["config"]), parts)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed topic description: {exc}") from exc


def encode_assignment(assignment: Assignment) -> dict[str, Any]:
    """Encode an ``Assignment`` as a map."""
    return {
        "member_id": assignment.member_id,
        "generation": assignment.generation,
        "partitions": [list(tp) for tp in assignment.partitions],
    }


def decode_assignment(obj: Any) -> Assignment:
    """Decode an ``Assignment``.

    >>> a = Assignment("m-1", 3, [("t", 0)])
    >>> decode_assignment(encode_assignment(a)) == a
    True
    """
    try:
        return Assignment(
            str(obj["member_id"]), int(obj["generation"]), decode_partitions(obj["partitions"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed assignment: {exc}") from exc


def encode_group(desc: GroupDescription) -> dict[str, Any]:
    """Encode a ``GroupDescription`` as a map (members as ``[id, topics, partitions]``)."""
    return {
        "group": desc.group,
        "state": desc.state,
        "generation": desc.generation,
        "members": [
            [m.member_id, list(m.topics), [list(tp) for tp in m.partitions]] for m in desc.members
        ],
    }


def decode_group(obj: Any) -> GroupDescription:
    """Decode a ``GroupDescription``; raise ``ProtocolError`` if malformed.

    >>> d = GroupDescription("g", "stable", 2, [MemberDescription("m", ["t"], [("t", 0)])])
    >>> decode_group(encode_group(d)) == d
    True
    """
    try:
        members = []
        for member_id, topics, partitions in obj["members"]:
            if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
                raise ProtocolError("a group member's topics must be strings")
            members.append(
                MemberDescription(str(member_id), list(topics), decode_partitions(partitions))
            )
        return GroupDescription(
            str(obj["group"]), str(obj["state"]), int(obj["generation"]), members
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed group description: {exc}") from exc


def encode_committed(offsets: dict[TopicPartition, Committed]) -> list[list[Any]]:
    """Encode committed offsets as ``[[topic, partition, [offset, metadata]]]``."""
    return encode_positions({tp: [c.offset, c.metadata] for tp, c in offsets.items()})


def decode_committed(rows: object) -> dict[TopicPartition, Committed]:
    """Decode committed offsets; raise ``ProtocolError`` if malformed.

    >>> decode_committed(encode_committed({("t", 0): Committed(5, "m")}))
    {('t', 0): Committed(offset=5, metadata='m')}
    """
    out: dict[TopicPartition, Committed] = {}
    for tp, value in decode_positions(rows).items():
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int)
            and not isinstance(value[0], bool)
        ):
            raise ProtocolError("a committed offset is [offset: int, metadata]")
        out[tp] = Committed(value[0], value[1])
    return out


# -- reading frames from a stream -----------------------------------------------------


class FrameReader:
    """Read length-prefixed frames from a trio stream, with limits.

    One reader task at a time. The length prefix is checked against
    *max_frame_bytes* before any of the body is read, and a frame whose first
    byte has arrived must be complete within *frame_timeout* seconds.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        frame_timeout: float = math.inf,
    ) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout = frame_timeout

    async def receive(self) -> bytes | None:
        """Return the next frame's body, or ``None`` at a clean end of stream.

        Raises:
            FrameTooLarge: the length prefix exceeds the limit (nothing more is read).
            ProtocolError: the stream ended inside a frame, or the frame was not
                finished within ``frame_timeout``.
        """
        if not self._buffer and not await self._fill():
            return None
        try:
            with trio.fail_after(self.frame_timeout):
                while len(self._buffer) < HEADER.size:
                    if not await self._fill():
                        raise ProtocolError("connection closed inside a frame header")
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self.max_frame_bytes:
                    raise FrameTooLarge(length, self.max_frame_bytes)
                end = HEADER.size + length
                while len(self._buffer) < end:
                    if not await self._fill(end - len(self._buffer)):
                        raise ProtocolError("connection closed inside a frame body")
        except trio.TooSlowError:
            raise ProtocolError(
                f"frame not completed within {self.frame_timeout} s of its first byte"
            ) from None
        body = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return body

    async def _fill(self, wanted: int = RECEIVE_BYTES) -> bool:
        chunk = await self._stream.receive_some(max(RECEIVE_BYTES, min(wanted, 1 << 22)))
        if not chunk:
            return False
        self._buffer += chunk
        return True
