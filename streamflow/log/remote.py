"""Serve the ``Transport`` protocol from a broker over one TCP connection.

Requests carry ids, so many tasks share the connection with several requests
in flight: each caller writes its frame and waits on its own event, and one
reader task per connection hands every response to its caller. When the
connection breaks, the calls in flight fail with ``BrokerUnavailable`` and the
next call reconnects, retrying with backoff for up to ``reconnect_timeout``
seconds. The frame format is described in ``wire.py`` and ``docs/protocol.md``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from ..errors import AuthenticationFailed, BrokerUnavailable, FrameTooLarge, ProtocolError
from .wire import (
    MAX_FRAME_BYTES,
    STORED_FETCH_VERSION,
    VERSIONS,
    ErrorReply,
    FrameReader,
    Response,
    decode_assignment,
    decode_batch,
    decode_body,
    decode_committed,
    decode_description,
    decode_group,
    decode_positions,
    decode_stored,
    encode_columns,
    encode_committed,
    encode_positions,
    request_frame,
)

if TYPE_CHECKING:
    from .record import RecordBatch
    from .transport import (
        Assignment,
        Columns,
        Committed,
        GroupDescription,
        ProducerIdentity,
        TopicDescription,
        TopicPartition,
    )

MAX_BACKOFF: Final = 1.0
#: Errors that mean "the connection is gone", not "the request was refused".
_CONNECTION_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ProtocolError,
    FrameTooLarge,
    BrokerUnavailable,
)
#: Errors worth another connection attempt (a refused token or version is not).
_RETRYABLE: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    BrokerUnavailable,
)


@dataclass(slots=True, eq=False)
class _Call:
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class _Connection:
    stream: trio.SocketStream
    reader: FrameReader
    pending: dict[int, _Call] = field(default_factory=dict)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    broken: BaseException | None = None
    version: int = 1


class RemoteTransport:
    """A ``Transport`` talking to a broker. Safe from many tasks.

    Its reader tasks run in *nursery*, which must outlive the transport
    (``streamflow.connect`` arranges this).

    Args:
        host: Broker address.
        port: Broker port.
        nursery: Where connection reader tasks run.
        token: Shared secret the broker was started with, if any.
        request_timeout: Seconds to wait for an answer (beyond a fetch's own
            long-poll time) before the call fails with ``BrokerUnavailable``.
        reconnect_timeout: Seconds a call keeps trying to reconnect.
        max_frame_bytes: Largest response frame accepted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        nursery: trio.Nursery,
        token: str | None = None,
        request_timeout: float = 30.0,
        reconnect_timeout: float = 30.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"tcp://{host}:{port}"
        self._nursery = nursery
        self._token = token
        self.request_timeout = request_timeout
        self.reconnect_timeout = reconnect_timeout
        self.max_frame_bytes = max_frame_bytes
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._closed = False

    # -- connection -----------------------------------------------------------------

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.broken is None:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.broken is None:
                return conn
            deadline = trio.current_time() + self.reconnect_timeout
            backoff = 0.02
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the client is closed")
                try:
                    conn = await self._open(deadline)
                except _RETRYABLE as exc:
                    if trio.current_time() + backoff >= deadline:
                        raise BrokerUnavailable(
                            self.address, f"{type(exc).__name__}: {exc}; is the broker running?"
                        ) from exc
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                self._conn = conn
                return conn

    async def _open(self, deadline: float) -> _Connection:
        with trio.fail_at(deadline):
            stream = await trio.open_tcp_stream(self.host, self.port)
        conn = _Connection(stream, FrameReader(stream, max_frame_bytes=self.max_frame_bytes))
        self._nursery.start_soon(self._run_reader, conn)
        try:
            # "version": 1 lets a version-1 broker accept the hello; "versions" offers the rest
            hello = await self._roundtrip(
                conn,
                "hello",
                {"version": VERSIONS[0], "versions": list(VERSIONS), "token": self._token},
                self.request_timeout,
            )
        except AuthenticationFailed:
            self._drop(conn, BrokerUnavailable(self.address, "authentication failed"))
            raise
        except BaseException as exc:
            self._drop(conn, exc)
            raise
        version = hello.get("version") if isinstance(hello, dict) else None
        if version not in VERSIONS or isinstance(version, bool):
            self._drop(conn, ProtocolError("bad hello"))
            raise ProtocolError(f"broker {self.address} speaks another protocol: {hello!r}")
        conn.version = version
        return conn

    async def _run_reader(self, conn: _Connection) -> None:
        """Hand every response on *conn* to its caller until the connection ends."""
        try:
            while True:
                body = await conn.reader.receive()
                if body is None:
                    raise BrokerUnavailable(self.address, "the broker closed the connection")
                message = decode_body(body)
                call = conn.pending.get(message.request_id)
                if call is None:
                    if isinstance(message, ErrorReply) and message.request_id == 0:
                        raise message.error()
                    continue
                if isinstance(message, Response):
                    call.result = message.result
                elif isinstance(message, ErrorReply):
                    call.error = message.error()
                else:
                    raise ProtocolError("the broker sent a request")
                call.done.set()
        except Exception as exc:  # any failure ends this connection only
            self._drop(conn, exc)

    def _drop(self, conn: _Connection, exc: BaseException) -> None:
        """Mark *conn* broken, fail its pending calls and close its socket."""
        if conn.broken is None:
            conn.broken = exc
        if self._conn is conn:
            self._conn = None
        reason = f"connection lost ({type(exc).__name__}: {exc})"
        for call in conn.pending.values():
            if not call.done.is_set():
                call.error = BrokerUnavailable(self.address, reason)
                call.done.set()
        conn.pending.clear()
        conn.stream.socket.close()

    async def _roundtrip(
        self, conn: _Connection, op: str, args: dict[str, Any], timeout: float
    ) -> Any:
        request_id = next(self._ids)
        frame = request_frame(request_id, op, args)
        if len(frame) - 4 > self.max_frame_bytes:
            # the broker would refuse it and drop the connection; a retry cannot help
            raise FrameTooLarge(len(frame) - 4, self.max_frame_bytes)
        call = conn.pending[request_id] = _Call()
        try:
            try:
                async with conn.send_lock:
                    # A frame cut short would desynchronise the stream that every task
                    # shares, so a caller's cancellation never interrupts a send: the
                    # send is shielded and bounded by its own timeout instead.
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(self.request_timeout) as sending:
                            await conn.stream.send_all(frame)
                    if sending.cancelled_caught:
                        raise trio.BrokenResourceError(
                            f"could not send {op} within {self.request_timeout} s"
                        )
            except _CONNECTION_ERRORS as exc:
                self._drop(conn, exc)
                raise BrokerUnavailable(self.address, f"send failed: {exc}") from exc
            with trio.move_on_after(timeout) as scope:
                await call.done.wait()
            if scope.cancelled_caught:
                self._drop(conn, trio.TooSlowError(f"no answer to {op} in {timeout} s"))
                raise BrokerUnavailable(self.address, f"no answer to {op} within {timeout} s")
        finally:
            conn.pending.pop(request_id, None)
        if call.error is not None:
            raise call.error
        return call.result

    async def _call(self, op: str, args: dict[str, Any], extra_timeout: float = 0.0) -> Any:
        _, result = await self._call_versioned(op, args, extra_timeout)
        return result

    async def _call_versioned(
        self, op: str, args: dict[str, Any], extra_timeout: float = 0.0
    ) -> tuple[int, Any]:
        """Call *op*; return the answering connection's protocol version and the result."""
        if self._closed:
            raise trio.ClosedResourceError("the client is closed")
        conn = await self._connection()
        result = await self._roundtrip(conn, op, args, self.request_timeout + extra_timeout)
        return conn.version, result

    async def open(self) -> None:
        """Connect now (rather than on the first call); raise ``BrokerUnavailable``."""
        await self._connection()

    # -- Transport ------------------------------------------------------------------

    async def create_topic(self, name: str, **config: Any) -> None:
        """Create *name*; see ``Transport.create_topic``."""
        await self._call("create_topic", {"name": name, "config": config})

    async def delete_topic(self, name: str) -> None:
        """Delete *name* and its data."""
        await self._call("delete_topic", {"name": name})

    async def topics(self) -> list[str]:
        """List the topic names, sorted."""
        return list(await self._call("topics", {}))

    async def describe(self, name: str) -> TopicDescription:
        """Return the settings and per-partition offsets of *name*."""
        return decode_description(await self._call("describe", {"name": name}))

    async def append(
        self,
        topic: str,
        partition: int,
        columns: Columns,
        *,
        producer: ProducerIdentity | None = None,
        sequence: int = -1,
    ) -> int:
        """Append *columns* as one batch; see ``Transport.append``."""
        args: dict[str, Any] = {
            "topic": topic,
            "partition": partition,
            "columns": encode_columns(columns),
        }
        if producer is not None:
            args["producer_id"] = producer.producer_id
            args["epoch"] = producer.epoch
            args["sequence"] = sequence
        result = await self._call("append", args)
        if not isinstance(result, int):
            raise ProtocolError(f"append answered {result!r}, not an offset")
        return result

    async def fetch(
        self,
        positions: dict[TopicPartition, int],
        *,
        max_bytes: int = 1 << 20,
        timeout: float = 0.5,
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Read batches at *positions*, waiting up to *timeout* s; see ``Transport.fetch``."""
        timeout = max(0.0, timeout) if math.isfinite(timeout) else self.request_timeout
        version, rows = await self._call_versioned(
            "fetch",
            {"positions": encode_positions(positions), "max_bytes": max_bytes, "timeout": timeout},
            extra_timeout=timeout,
        )
        found: dict[TopicPartition, list[RecordBatch]] = {}
        for tp, blobs in decode_positions(rows).items():
            if version >= STORED_FETCH_VERSION:
                offset = positions.get(tp)
                if offset is None:
                    raise ProtocolError(f"fetch answered {tp}, which was not asked for")
                batches = decode_stored(tp[0], tp[1], offset, blobs)
                if batches:
                    found[tp] = batches
                continue
            if not isinstance(blobs, list):
                raise ProtocolError("fetch batches must be a list")
            found[tp] = [decode_batch(blob) for blob in blobs]
        return found

    async def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """Return ``(start_offset, end_offset)`` of a partition."""
        start, end = await self._call("offsets", {"topic": topic, "partition": partition})
        return int(start), int(end)

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Store committed offsets for *group*; see ``Transport.commit``."""
        await self._call(
            "commit",
            {
                "group": group,
                "offsets": encode_committed(offsets),
                "member_id": member_id,
                "generation": generation,
            },
        )

    async def committed(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Committed]:
        """Return the committed offsets of *group*; partitions without one are left out."""
        rows = await self._call(
            "committed", {"group": group, "partitions": [list(tp) for tp in partitions]}
        )
        return decode_committed(rows)

    async def join_group(
        self,
        group: str,
        topics: list[str],
        *,
        member_id: str | None = None,
        session_timeout_ms: int = 10_000,
    ) -> Assignment:
        """Join (or rejoin) *group*; return once the group has a new assignment."""
        result = await self._call(
            "join_group",
            {
                "group": group,
                "topics": list(topics),
                "member_id": member_id,
                "session_timeout_ms": session_timeout_ms,
            },
            extra_timeout=2 * session_timeout_ms / 1000,
        )
        return decode_assignment(result)

    async def heartbeat(self, group: str, member_id: str, generation: int) -> bool:
        """Keep the membership alive; return False when the member must rejoin."""
        result = await self._call(
            "heartbeat", {"group": group, "member_id": member_id, "generation": generation}
        )
        return bool(result)

    async def leave_group(self, group: str, member_id: str) -> None:
        """Leave *group* so that its partitions move at once."""
        await self._call("leave_group", {"group": group, "member_id": member_id})

    async def describe_group(self, group: str) -> GroupDescription:
        """Return the members of *group*, their partitions, its generation and state."""
        return decode_group(await self._call("describe_group", {"group": group}))

    async def list_groups(self) -> list[str]:
        """List the groups with members or committed offsets, sorted."""
        names = await self._call("list_groups", {})
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError(f"list_groups answered {names!r}, not a list of names")
        return names

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with ``BrokerUnavailable``."""
        self._closed = True
        if self._conn is not None:
            self._drop(self._conn, trio.ClosedResourceError("client closed"))
