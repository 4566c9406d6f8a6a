"""R12: the broker's security basics (RELIABILITY.md, "Security basics for the broker").

* it listens on loopback unless told otherwise, and a non-loopback ``--host``
  without a token logs a warning (with a token it does not);
* a token is required when set: a wrong, missing or mistyped token gets
  ``AuthenticationFailed`` and a close, and the client gives up at once
  instead of retrying;
* names that reach the file system (topics, and group ids) are checked over
  the wire: ``../x``, ``..``, ``.``, ``a/b``, ``a\\x00b``, 201 characters,
  non-ASCII and the empty name are ``InvalidTopicName`` for every operation,
  and nothing is created outside the data directory;
* a topic directory replaced by a symlink to somewhere else is not followed;
* frames: the limit is checked before the body is read, a frame of exactly
  the limit is served, and a record too large for a frame fails for its sender
  only;
* the data directory is created private (mode 0700).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import msgpack
import psutil
import pytest
import trio

import streamflow
from streamflow.errors import AuthenticationFailed, FrameTooLarge, RecordTooLarge

from .harness import Broker, report

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 10
BAD_NAMES = ["../x", "..", ".", "a/b", "a\x00b", "x" * 201, "tópico", "", "/etc", "a\\b"]
TOKEN = "s3cret-token"


class Wire:
    """A raw protocol connection: send requests, read replies."""

    def __init__(self, port: int, token: str | None = None, *, hello: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.ids = 1
        if hello:
            assert self.call("hello", {"version": 1, "token": token}) == [1, 1, {"version": 1}]

    def send_frame(self, body: bytes) -> None:
        """Send *body* with its length prefix."""
        self.sock.sendall(HEADER.pack(len(body)) + body)

    def reply(self) -> list[Any] | None:
        """Return the next reply, or None when the broker closed the connection."""
        data = b""
        want = HEADER.size
        while len(data) < want:
            try:
                chunk = self.sock.recv(want - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
            if len(data) == HEADER.size:
                want += HEADER.unpack(data)[0]
        result = msgpack.unpackb(data[HEADER.size :], raw=False)
        assert isinstance(result, list)
        return result

    def call(self, op: str, args: dict[str, Any]) -> list[Any] | None:
        """Send one request and return its reply."""
        request_id = self.ids
        self.ids += 1
        self.send_frame(msgpack.packb([0, request_id, op, args], use_bin_type=True))
        return self.reply()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def tree(root: Path) -> set[str]:
    """Return every path under *root* (relative), symlinks not followed."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker on a fresh data directory with a small frame limit."""
    made = Broker(tmp_path / "data", extra_args=["--max-frame-bytes", str(MAX_FRAME)])
    made.start()
    yield made
    made.kill()


def listening(broker: Broker) -> list[str]:
    """Return the IP addresses the broker listens on."""
    assert broker.child is not None
    return [
        c.laddr.ip
        for c in psutil.Process(broker.child.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def non_loopback_address() -> str | None:
    """Return an IPv4 address of this machine that is not loopback, if any."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


def test_broker_listens_on_loopback_and_warns_when_exposed_without_token(
    broker: Broker, tmp_path: Path, seed: int
) -> None:
    assert listening(broker) == ["127.0.0.1"]
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    warned = {}
    for token in (None, TOKEN):
        exposed = Broker(
            tmp_path / f"exposed-{token is not None}",
            extra_args=["--host", address, *(["--token", token] if token else [])],
        )
        exposed.start()
        try:
            assert listening(exposed) == [address]
        finally:
            exposed.kill()
        warned[token is not None] = "without a token" in exposed.log_path.read_text()
    assert warned == {False: True, True: False}
    report("R12.listen", seed, default_listen=listening(broker), warned_without_token=True)


def test_token_is_required_and_a_refused_client_gives_up_at_once(tmp_path: Path, seed: int) -> None:
    broker = Broker(tmp_path / "data", extra_args=["--token", TOKEN])
    broker.start()
    try:
        refused = 0
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", 12345, ["list"], TOKEN.upper()):
            wire = Wire(broker.port, hello=False)
            reply = wire.call("hello", {"version": 1, "token": token})
            assert reply is not None
            assert reply[2] == "AuthenticationFailed", reply
            assert wire.reply() is None, "the connection stays open after a refused token"
            wire.close()
            refused += 1
        wire = Wire(broker.port, hello=False)
        assert wire.call("topics", {}) is not None  # no hello: refused ...
        assert wire.reply() is None  # ... and closed
        wire.close()

        async def connect(token: str) -> float:
            started = trio.current_time()
            with trio.fail_after(20):
                async with streamflow.connect(broker.url, token=token, reconnect_timeout=60):
                    pass
            return trio.current_time() - started

        with pytest.raises(AuthenticationFailed):
            trio.run(connect, "wrong")
        trio.run(connect, TOKEN)
    finally:
        broker.kill()
    report("R12.token", seed, refused=refused, accepted=1)


def test_bad_names_are_refused_over_the_wire_and_touch_no_file(
    broker: Broker, tmp_path: Path, seed: int
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    before = tree(tmp_path)
    wire = Wire(broker.port)
    assert wire.call("create_topic", {"name": "x" * 200, "config": {}}) == [1, 2, None]
    refused = 0
    for name in BAD_NAMES:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("create_topic", {"name": name, "config": {}}),
            ("describe", {"name": name}),
            ("delete_topic", {"name": name}),
            ("offsets", {"topic": name, "partition": 0}),
            (
                "append",
                {"topic": name, "partition": 0, "columns": msgpack.packb([[1], [1], None, None])},
            ),
            ("fetch", {"positions": [[name, 0, 0]], "max_bytes": 1024, "timeout": 0}),
            ("commit", {"group": name, "offsets": [["x" * 200, 0, [0, None]]]}),
            ("committed", {"group": name, "partitions": [["x" * 200, 0]]}),
            ("join_group", {"group": name, "topics": ["x" * 200], "session_timeout_ms": 1000}),
        ]
        for op, args in calls:
            reply = wire.call(op, args)
            assert reply is not None, f"{op} {name!r} closed the connection"
            assert reply[0] == 2, f"{op} {name!r} was accepted: {reply}"
            assert reply[2] in ("InvalidTopicName", "UnknownTopic"), (op, name, reply)
            refused += 1
    wire.close()
    after = tree(tmp_path)
    created = {p for p in after - before if not p.startswith("data/") and p != "data"}
    assert created == set(), created
    assert sorted(os.listdir(tmp_path / "data" / "topics")) == ["x" * 200]
    assert broker.child is not None
    assert broker.child.alive()
    report("R12.names", seed, names=len(BAD_NAMES), refused=refused, created_outside=0)


def test_a_symlinked_topic_directory_is_not_followed(tmp_path: Path, seed: int) -> None:
    data = tmp_path / "data"
    broker = Broker(data)
    broker.start()

    async def create(name: str) -> None:
        async with streamflow.connect(broker.url) as client:
            await client.create_topic(name, partitions=1)
            async with client.producer() as producer:
                await producer.send(name, "v")

    try:
        trio.run(create, "real")
        broker.child.terminate() if broker.child else None
        outside = tmp_path / "outside"
        shutil.copytree(data / "topics" / "real", outside / "evil")
        (data / "topics" / "evil").symlink_to(outside / "evil", target_is_directory=True)
        before = {p: p.stat().st_size for p in (outside / "evil").rglob("*") if p.is_file()}
        broker.start()

        async def poke() -> list[str]:
            async with streamflow.connect(broker.url) as client:
                topics = await client.topics()
                try:
                    async with client.producer(delivery_timeout=5) as producer:
                        await producer.send("evil", "into the symlink")
                except streamflow.errors.StreamflowError:
                    pass
                return topics

        topics = trio.run(poke)
        broker.child.terminate() if broker.child else None
        after = {p: p.stat().st_size for p in (outside / "evil").rglob("*") if p.is_file()}
    finally:
        broker.kill()
    report("R12.symlink", seed, served=("evil" in topics), outside_changed=before != after)
    assert "evil" not in topics
    assert after == before, "the broker wrote through a symlinked topic directory"


def test_frame_limits_hold_over_the_wire(broker: Broker, tmp_path: Path, seed: int) -> None:
    wire = Wire(broker.port)
    # a frame of exactly the limit is read and answered
    size = MAX_FRAME
    body = b""
    while len(body) != MAX_FRAME:
        size += MAX_FRAME - len(body) if body else -64
        body = msgpack.packb([0, 2, "topics", {"pad": "p" * size}], use_bin_type=True)
    wire.send_frame(body)
    assert wire.reply() == [1, 2, []]
    # one byte more is refused from its length prefix alone, and the connection closed
    started = time.monotonic()
    wire.sock.sendall(HEADER.pack(MAX_FRAME + 1))
    reply = wire.reply()
    assert reply is not None
    assert reply[2] == "FrameTooLarge"
    assert reply[4]["size"] == MAX_FRAME + 1
    assert wire.reply() is None
    refused_after = time.monotonic() - started
    wire.close()

    async def too_large() -> BaseException | None:
        async with streamflow.connect(broker.url, max_frame_bytes=MAX_FRAME) as client:
            await client.create_topic("t", partitions=1)
            async with client.producer(delivery_timeout=5) as producer:
                try:
                    await producer.send("t", "v" * (2 * MAX_FRAME))
                except (FrameTooLarge, RecordTooLarge) as exc:
                    error: BaseException | None = exc
                else:
                    error = None
                meta = await producer.send("t", "small")
            assert meta.offset == 0
            return error

    error = trio.run(too_large)
    assert error is not None
    assert broker.child is not None
    assert broker.child.alive()
    report(
        "R12.frames",
        seed,
        max_frame_bytes=MAX_FRAME,
        refused_without_body_ms=round(refused_after * 1000, 1),
        oversized_record_error=type(error).__name__,
    )


def test_data_directory_is_private(broker: Broker, seed: int) -> None:
    mode = broker.data.stat().st_mode & 0o777
    report("R12.data_dir", seed, mode=oct(mode))
    assert mode == 0o700, oct(mode)
