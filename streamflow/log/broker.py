"""Serve a log directory to many processes over TCP: the broker.

The broker is a thin shell: each request is decoded (``wire.py``), handed to
the one ``EmbeddedTransport`` of the log, and its result or error encoded
back; a version-2 fetch ships the stored batch bytes as they are
(``EmbeddedTransport.fetch_stored``), and the client checks and decodes them.
It binds loopback unless told otherwise, settles the protocol version and
checks the optional token (``hmac.compare_digest``) at the handshake, checks
a frame's length before it reads the body, bounds the requests in flight per
connection (it stops reading while at the limit), and closes connections that
stay idle or take too long to finish a frame. A failure while serving a
connection closes that connection only. ``python -m streamflow.log.broker
--data DIR --port 0`` prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from ..errors import AuthenticationFailed, FrameTooLarge, ProtocolError, StreamflowError
from ..failpoint import failpoint
from .embedded import EmbeddedTransport
from .transport import ProducerIdentity
from .wire import (
    MAX_FRAME_BYTES,
    STORED_FETCH_VERSION,
    FrameReader,
    Request,
    decode_body,
    decode_columns,
    decode_committed,
    decode_partitions,
    decode_positions,
    encode_assignment,
    encode_batch,
    encode_committed,
    encode_description,
    encode_group,
    encode_positions,
    encode_stored,
    error_frame,
    negotiate_version,
    response_frame,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .fileio import FileIO
    from .transport import TopicPartition

logger = logging.getLogger("streamflow.broker")

DEFAULT_PORT: Final = 7070
MAX_IN_FLIGHT: Final = 64
IDLE_TIMEOUT: Final = 600.0
FRAME_TIMEOUT: Final = 30.0
SEND_TIMEOUT: Final = 60.0
MAX_FETCH_BYTES: Final = 16 << 20
MAX_FETCH_WAIT: Final = 60.0
SHUTDOWN_GRACE: Final = 5.0


def _arg(
    args: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"argument {name!r} is missing or of the wrong type")
    return value


def _fetch_args(args: dict[str, Any]) -> tuple[dict[TopicPartition, int], int, float]:
    """Return a fetch's positions, byte budget and wait, both limits capped."""
    positions = decode_positions(args.get("positions"))
    if not all(isinstance(o, int) and not isinstance(o, bool) for o in positions.values()):
        raise ProtocolError("fetch positions must be integer offsets")
    max_bytes = min(_arg(args, "max_bytes", int, optional=True) or 1 << 20, MAX_FETCH_BYTES)
    timeout = _arg(args, "timeout", (int, float), optional=True) or 0.0
    timeout = min(max(0.0, float(timeout)), MAX_FETCH_WAIT) if math.isfinite(timeout) else 0.0
    return positions, max_bytes, timeout


class Handlers:
    """Turn decoded requests into calls on an ``EmbeddedTransport``. Safe from many tasks."""

    def __init__(self, transport: EmbeddedTransport) -> None:
        self.transport = transport
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "create_topic": self.create_topic,
            "delete_topic": self.delete_topic,
            "topics": self.topics,
            "describe": self.describe,
            "append": self.append,
            "fetch": self.fetch,
            "offsets": self.offsets,
            "commit": self.commit,
            "committed": self.committed,
            "join_group": self.join_group,
            "heartbeat": self.heartbeat,
            "leave_group": self.leave_group,
            "describe_group": self.describe_group,
            "list_groups": self.list_groups,
        }

    async def handle(self, op: str, args: dict[str, Any], version: int = 1) -> Any:
        """Run operation *op* as protocol *version* defines it.

        Raises:
            ProtocolError: for an unknown op or bad arguments.
        """
        if op == "fetch" and version >= STORED_FETCH_VERSION:
            return await self.fetch_stored(args)
        handler = self._ops.get(op)
        if handler is None:
            raise ProtocolError(f"unknown operation {op!r}; see docs/protocol.md")
        return await handler(args)

    async def create_topic(self, args: dict[str, Any]) -> None:
        """Handle ``create_topic {name, config}``."""
        config = _arg(args, "config", dict, optional=True) or {}
        if not all(isinstance(k, str) for k in config):
            raise ProtocolError("topic settings must be named by strings")
        await self.transport.create_topic(_arg(args, "name", str), **config)

    async def delete_topic(self, args: dict[str, Any]) -> None:
        """Handle ``delete_topic {name}``."""
        await self.transport.delete_topic(_arg(args, "name", str))

    async def topics(self, args: dict[str, Any]) -> list[str]:
        """Handle ``topics {}``."""
        return await self.transport.topics()

    async def describe(self, args: dict[str, Any]) -> dict[str, Any]:
        """Handle ``describe {name}``."""
        return encode_description(await self.transport.describe(_arg(args, "name", str)))

    async def append(self, args: dict[str, Any]) -> int:
        """Handle ``append {topic, partition, columns, producer_id?, epoch?, sequence?}``."""
        producer_id = _arg(args, "producer_id", int, optional=True)
        producer = None
        sequence = -1
        if producer_id is not None:
            producer = ProducerIdentity(producer_id, _arg(args, "epoch", int, optional=True) or 0)
            sequence = _arg(args, "sequence", int)
        first = await self.transport.append(
            _arg(args, "topic", str),
            _arg(args, "partition", int),
            decode_columns(args.get("columns")),
            producer=producer,
            sequence=sequence,
        )
        # Crash window for tests: the batch is stored, the answer not yet sent.
        failpoint("broker.after_append")
        return first

    async def fetch(self, args: dict[str, Any]) -> list[list[Any]]:
        """Handle a version-1 ``fetch {positions, max_bytes, timeout}``: decoded batches."""
        positions, max_bytes, timeout = _fetch_args(args)
        found = await self.transport.fetch(positions, max_bytes=max_bytes, timeout=timeout)
        return encode_positions(
            {tp: [encode_batch(b) for b in batches] for tp, batches in found.items()}
        )

    async def fetch_stored(self, args: dict[str, Any]) -> list[list[Any]]:
        """Handle a version-2 ``fetch``: the batches as stored, checked by the client."""
        positions, max_bytes, timeout = _fetch_args(args)
        found = await self.transport.fetch_stored(positions, max_bytes=max_bytes, timeout=timeout)
        return encode_positions({tp: encode_stored(runs) for tp, runs in found.items()})

    async def offsets(self, args: dict[str, Any]) -> list[int]:
        """Handle ``offsets {topic, partition}``."""
        start, end = await self.transport.offsets(
            _arg(args, "topic", str), _arg(args, "partition", int)
        )
        return [start, end]

    async def commit(self, args: dict[str, Any]) -> None:
        """Handle ``commit {group, offsets, member_id?, generation?}``."""
        await self.transport.commit(
            _arg(args, "group", str),
            decode_committed(args.get("offsets")),
            member_id=_arg(args, "member_id", str, optional=True),
            generation=_arg(args, "generation", int, optional=True),
        )

    async def committed(self, args: dict[str, Any]) -> list[list[Any]]:
        """Handle ``committed {group, partitions}``."""
        found = await self.transport.committed(
            _arg(args, "group", str), decode_partitions(args.get("partitions"))
        )
        return encode_committed(found)

    async def join_group(self, args: dict[str, Any]) -> dict[str, Any]:
        """Handle ``join_group {group, topics, member_id?, session_timeout_ms}``."""
        topics = _arg(args, "topics", list)
        if not all(isinstance(t, str) for t in topics):
            raise ProtocolError("join_group topics must be strings")
        assignment = await self.transport.join_group(
            _arg(args, "group", str),
            topics,
            member_id=_arg(args, "member_id", str, optional=True),
            session_timeout_ms=_arg(args, "session_timeout_ms", int, optional=True) or 10_000,
        )
        return encode_assignment(assignment)

    async def heartbeat(self, args: dict[str, Any]) -> bool:
        """Handle ``heartbeat {group, member_id, generation}``."""
        return await self.transport.heartbeat(
            _arg(args, "group", str), _arg(args, "member_id", str), _arg(args, "generation", int)
        )

    async def leave_group(self, args: dict[str, Any]) -> None:
        """Handle ``leave_group {group, member_id}``."""
        await self.transport.leave_group(_arg(args, "group", str), _arg(args, "member_id", str))

    async def describe_group(self, args: dict[str, Any]) -> dict[str, Any]:
        """Handle ``describe_group {group}``."""
        return encode_group(await self.transport.describe_group(_arg(args, "group", str)))

    async def list_groups(self, args: dict[str, Any]) -> list[str]:
        """Handle ``list_groups {}``."""
        return await self.transport.list_groups()


class Session:
    """Serve one client connection. One task reads; handlers run concurrently.

    Args:
        stream: The accepted connection.
        handlers: The shared request handlers.
        token: Required token, or ``None``.
        max_frame_bytes: Largest frame accepted (checked before the body is read).
        max_in_flight: Requests handled at once; beyond it the session stops reading.
        idle_timeout: Close after this long with no frame and no request in flight.
        frame_timeout: A frame whose first byte arrived must be complete within this.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        handlers: Handlers,
        *,
        token: str | None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
        idle_timeout: float = IDLE_TIMEOUT,
        frame_timeout: float = FRAME_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.handlers = handlers
        self.token = token
        self.reader = FrameReader(
            stream, max_frame_bytes=max_frame_bytes, frame_timeout=frame_timeout
        )
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self._slots = trio.Semaphore(max_in_flight)
        self._send_lock = trio.Lock()
        #: The protocol version the handshake settled on.
        self.version = 1

    async def run(self) -> None:
        """Serve requests until the client leaves or breaks the protocol."""
        try:
            if not await self._handshake():
                return
            async with trio.open_nursery() as nursery:
                try:
                    await self._read_requests(nursery)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _handshake(self) -> bool:
        body = None
        with trio.move_on_after(min(self.frame_timeout, self.idle_timeout)):
            try:
                body = await self.reader.receive()
            except (ProtocolError, FrameTooLarge) as exc:
                await self._send(error_frame(0, exc))
                return False
        if body is None:
            return False
        request_id = 0
        try:
            request = decode_body(body)
            request_id = request.request_id
            if not isinstance(request, Request) or request.op != "hello":
                raise ProtocolError("the first request must be hello")
            version = negotiate_version(request.args)
            if self.token is not None:
                given = request.args.get("token")
                if not isinstance(given, str) or not hmac.compare_digest(
                    given.encode(), self.token.encode()
                ):
                    raise AuthenticationFailed(
                        "the broker refused the token; pass the broker's token "
                        "(connect(..., token=...) or $STREAMFLOW_TOKEN)"
                    )
        except (ProtocolError, AuthenticationFailed) as exc:
            await self._send(error_frame(request_id, exc))
            return False
        self.version = version
        await self._send(response_frame(request_id, {"version": version}))
        return True

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                body = await self._receive_or_idle()
            except (ProtocolError, FrameTooLarge) as exc:
                # The frame boundary is lost (or the peer is too slow): answer and close.
                self._slots.release()
                await self._send(error_frame(0, exc))
                return
            if body is None:
                self._slots.release()
                return
            try:
                request = decode_body(body)
                if not isinstance(request, Request):
                    raise ProtocolError("clients send requests only")
            except ProtocolError as exc:
                # The frame itself was well delimited, so the stream stays usable.
                self._slots.release()
                await self._send(error_frame(0, exc))
                continue
            nursery.start_soon(self._serve_request, request)

    async def _receive_or_idle(self) -> bytes | None:
        while True:
            with trio.move_on_after(self.idle_timeout) as idle:
                return await self.reader.receive()
            if idle.cancelled_caught and self._slots.value == self.max_in_flight - 1:
                logger.info("closing idle connection from %s", _peer(self.stream))
                return None

    async def _serve_request(self, request: Request) -> None:
        try:
            try:
                result = await self.handlers.handle(request.op, request.args, self.version)
                frame = response_frame(request.request_id, result)
            except (StreamflowError, ValueError, TypeError, KeyError) as exc:
                frame = error_frame(request.request_id, exc)
            except Exception as exc:
                logger.exception("request %s failed", request.op)
                frame = error_frame(request.request_id, exc)
            await self._send(frame)
        finally:
            self._slots.release()

    async def _send(self, frame: bytes) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            async with self._send_lock:
                await self.stream.send_all(frame)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the client stopped reading its responses")


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(
    log_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    max_in_flight: int = MAX_IN_FLIGHT,
    idle_timeout: float = IDLE_TIMEOUT,
    frame_timeout: float = FRAME_TIMEOUT,
    cleaner_interval: float = 1.0,
    files: FileIO | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the log in *log_dir* on *host*:*port* until cancelled.

    Opens (and recovers) the log, runs retention and compaction, and calls
    ``task_status.started(port)`` with the bound port once it listens (pass
    ``port=0`` for any free port). Cancelling it stops accepting, ends every
    connection and closes the log (shielded, up to 5 s). *files* is the file
    interface the log does its I/O through (``fileio.py``; the real disk by
    default).

    Raises:
        LogLocked: another process has *log_dir* open.
        OSError: the address cannot be bound.
    """
    from .cleaner import run_cleaner
    from .directory import Log

    log = await trio.to_thread.run_sync(partial(Log.open, Path(log_dir), files=files))
    transport = EmbeddedTransport(log, owns_log=True)
    handlers = Handlers(transport)

    async def handle_connection(stream: trio.SocketStream) -> None:
        peer = _peer(stream)
        session = Session(
            stream,
            handlers,
            token=token,
            max_frame_bytes=max_frame_bytes,
            max_in_flight=max_in_flight,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
        )
        try:
            await session.run()
        except Exception as exc:  # one connection's failure must not stop the broker
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
                logger.debug("connection from %s ended: %r", peer, exc)
            else:
                logger.warning("connection from %s closed after an error: %r", peer, exc)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_cleaner, log, interval=cleaner_interval))
            listeners = await trio.open_tcp_listeners(port, host=host)
            bound = listeners[0].socket.getsockname()[1]
            if not _is_loopback(host) and token is None:
                logger.warning(
                    "broker listens on %s without a token: anyone who can reach this "
                    "address can read and write every topic; set --token",
                    host,
                )
            await nursery.start(trio.serve_listeners, handle_connection, listeners)
            logger.info("broker serving %s on %s:%d", log_dir, host, bound)
            task_status.started(bound)
    finally:
        with trio.CancelScope(shield=True):
            await transport.aclose()
        logger.info("broker stopped; log %s closed", log_dir)


async def _serve_until_signal(
    data: Path,
    host: str,
    port: int,
    token: str | None,
    ready: Callable[[int], None],
    options: dict[str, Any],
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(serve, data, host=host, port=port, token=token, **options)
            )
            ready(bound)
            async for signum in signals:
                logger.info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main_broker(
    data: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    ready: Callable[[int], None] | None = None,
    **options: Any,
) -> None:
    """Run a broker until SIGINT or SIGTERM, then close the log cleanly. Blocking.

    *ready* is called with the bound port once the broker listens; *options*
    go to ``serve`` (``max_frame_bytes``, ``idle_timeout``, ``frame_timeout``, ...).
    A token of ``None`` falls back to ``$STREAMFLOW_TOKEN``.
    """
    token = token or os.environ.get("STREAMFLOW_TOKEN") or None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio.run(_serve_until_signal, Path(data), host, port, token, ready or (lambda _: None), options)


def _print_ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streamflow.log.broker")
    parser.add_argument("--data", required=True, help="log directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token", default=None, help="default: $STREAMFLOW_TOKEN")
    parser.add_argument("--max-frame-bytes", type=int, default=MAX_FRAME_BYTES)
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT)
    parser.add_argument("--frame-timeout", type=float, default=FRAME_TIMEOUT)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    main_broker(
        args.data,
        args.host,
        args.port,
        args.token,
        _print_ready,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout=args.idle_timeout,
        frame_timeout=args.frame_timeout,
    )


if __name__ == "__main__":
    _main()
