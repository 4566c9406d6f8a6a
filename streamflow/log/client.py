"""Open a log target, embedded or remote, behind one async API: ``connect``.

``connect(DIR)`` opens the log directory in this process (and runs retention
and compaction in the background); ``connect("tcp://host:port")`` talks to a
broker; ``connect("kafka://host1:9092,host2:9092")`` talks to an Apache
Kafka-compatible cluster (the ``kafka`` extra). All give a ``Client`` whose
``transport`` implements ``Transport``, so producers, consumers and the
pipeline runtime behave the same on each.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from ..errors import InvalidConfig
from .consumer import Consumer
from .producer import Producer

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from .transport import TopicDescription, Transport

TOKEN_ENV = "STREAMFLOW_TOKEN"


def parse_address(target: str) -> tuple[str, int]:
    """Split ``tcp://host:port`` into host and port.

    >>> parse_address("tcp://127.0.0.1:7070")
    ('127.0.0.1', 7070)
    """
    parts = urlsplit(target)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise InvalidConfig("target", target, "a directory path or tcp://host:port")
    return parts.hostname, port


class Client:
    """An open log target: topics, producers and consumers. Safe from many tasks.

    Made by ``streamflow.connect``; use it as ``async with``. ``transport`` is
    the underlying ``Transport`` (what the pipeline runtime uses directly).
    """

    def __init__(self, target: str | os.PathLike[str], **options: Any) -> None:
        self.target = target
        self._options = options
        self._stack = AsyncExitStack()
        self._transport: Transport | None = None

    @property
    def transport(self) -> Transport:
        """The ``Transport`` behind this client (raises if not open)."""
        if self._transport is None:
            raise trio.ClosedResourceError("the client is not open; use `async with connect(...)`")
        return self._transport

    async def __aenter__(self) -> Client:
        try:
            nursery = await self._stack.enter_async_context(trio.open_nursery())
            self._stack.callback(nursery.cancel_scope.cancel)
            if isinstance(self.target, str) and self.target.startswith("tcp://"):
                self._transport = await self._open_remote(nursery)
            elif isinstance(self.target, str) and self.target.startswith("kafka://"):
                self._transport = await self._open_kafka()
            elif isinstance(self.target, str | os.PathLike):
                self._transport = await self._open_embedded(nursery)
            else:
                raise InvalidConfig(
                    "target", self.target, "a directory path, tcp://host:port or kafka://host:port"
                )
        except BaseException as exc:
            await self._aexit(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _open_remote(self, nursery: trio.Nursery) -> Transport:
        from .remote import RemoteTransport

        assert isinstance(self.target, str)
        host, port = parse_address(self.target)
        options = dict(self._options)
        token = options.pop("token", None) or os.environ.get(TOKEN_ENV) or None
        transport = RemoteTransport(host, port, nursery=nursery, token=token, **options)
        self._stack.push_async_callback(transport.aclose)
        await transport.open()
        return transport

    async def _open_kafka(self) -> Transport:
        from .kafka import open_kafka_transport

        assert isinstance(self.target, str)
        transport = await open_kafka_transport(self.target, **self._options)
        self._stack.push_async_callback(transport.aclose)
        return transport

    async def _open_embedded(self, nursery: trio.Nursery) -> Transport:
        from .cleaner import run_cleaner
        from .directory import Log
        from .embedded import EmbeddedTransport

        options = dict(self._options)
        cleaner = options.pop("cleaner", True)
        cleaner_interval = options.pop("cleaner_interval", 1.0)
        assignor = options.pop("assignor", "range")
        if options:
            raise InvalidConfig(
                "connect options", sorted(options), "cleaner, cleaner_interval or assignor"
            )
        log = await trio.to_thread.run_sync(Log.open, Path(self.target))
        transport = EmbeddedTransport(log, owns_log=True, assignor=assignor)
        self._stack.push_async_callback(transport.aclose)
        if cleaner:
            await nursery.start(partial(run_cleaner, log, interval=cleaner_interval))
        return transport

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._aexit(exc_type, exc, tb)
        return None

    async def _aexit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._transport = None
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def create_topic(self, name: str, **config: Any) -> None:
        """Create topic *name*; settings as keyword arguments (DESIGN §1).

        Raises:
            TopicExists: the topic is already there.
            InvalidTopicName: the name breaks the naming rule.
            InvalidConfig: a setting is unusable.
        """
        await self.transport.create_topic(name, **config)

    async def delete_topic(self, name: str) -> None:
        """Delete topic *name* and all its records."""
        await self.transport.delete_topic(name)

    async def topics(self) -> list[str]:
        """List the topic names, sorted."""
        return await self.transport.topics()

    async def describe(self, name: str) -> TopicDescription:
        """Return the settings and per-partition offsets of topic *name*."""
        return await self.transport.describe(name)

    def producer(self, **options: Any) -> Producer:
        """Make a producer; use it as ``async with`` (options: see ``Producer``)."""
        return Producer(self.transport, **options)

    def consumer(
        self,
        topics: str | Sequence[str],
        group: str | None = None,
        start: str = "earliest",
        **options: Any,
    ) -> Consumer:
        """Make a consumer of *topics*; use it as ``async with`` (options: see ``Consumer``)."""
        return Consumer(self.transport, topics, group=group, start=start, **options)


def connect(target: str | os.PathLike[str], **options: Any) -> Client:
    """Open a log directory or a broker; use the result as ``async with``.

    Args:
        target: A directory (opened in this process; one process at a time),
            ``tcp://host:port`` (a broker) or ``kafka://host:port[,host:port]``
            (a Kafka cluster; settings in *options* go to librdkafka).
        **options: Embedded: ``cleaner`` (run retention and compaction, default
            True), ``cleaner_interval`` (s), ``assignor``. Remote: ``token``
            (default ``$STREAMFLOW_TOKEN``), ``request_timeout``,
            ``reconnect_timeout``, ``max_frame_bytes``.

    Raises:
        InvalidConfig: *target* is none of the above, or the ``kafka`` extra
            is missing for a ``kafka://`` target.
        LogLocked: another process has the directory open.
        BrokerUnavailable: (on first use) the broker cannot be reached.
    """
    return Client(target, **options)
