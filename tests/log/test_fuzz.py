"""Protocol fuzzing: whatever arrives on a connection, the broker keeps serving others."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import BrokerProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20
OPS = [
    "create_topic",
    "delete_topic",
    "topics",
    "describe",
    "append",
    "fetch",
    "offsets",
    "commit",
    "committed",
    "join_group",
    "heartbeat",
    "leave_group",
    "hello",
    "no_such_op",
]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(
        tmp_path_factory.mktemp("fuzz") / "data",
        extra_args=[
            "--frame-timeout",
            "1",
            "--idle-timeout",
            "5",
            "--max-frame-bytes",
            str(MAX_FRAME),
        ],
    )
    broker.start()
    yield broker
    broker.kill()


def _frame(body: object) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(len(data)) + data


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> list[Any] | None:
    """Read one frame; None when the broker closed the connection."""
    try:
        header = _read_exactly(sock, HEADER.size)
        if header is None:
            return None
        (length,) = HEADER.unpack(header)
        body = _read_exactly(sock, length)
    except ConnectionResetError:
        return None
    assert body is not None
    reply = msgpack.unpackb(body, raw=False)
    assert isinstance(reply, list)
    return reply


def _hello(sock: socket.socket, version: object = 1) -> list[Any] | None:
    sock.sendall(_frame([0, 1, "hello", {"version": version, "token": None}]))
    return _read_frame(sock)


def _assert_serves(broker: BrokerProcess) -> None:
    """A fresh, well-behaved client gets answers."""
    with _connect(broker.port) as sock:
        assert _hello(sock) == [1, 1, {"version": 1}]
        sock.sendall(_frame([0, 2, "topics", {}]))
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[:2] == [1, 2]
    assert not broker.exited()


def _drain(sock: socket.socket) -> list[list[Any]]:
    """Read frames until the broker closes the connection (or stays silent)."""
    replies = []
    sock.settimeout(5)
    try:
        while (reply := _read_frame(sock)) is not None:
            replies.append(reply)
    except (TimeoutError, msgpack.UnpackException, ValueError):
        pass
    return replies


@FUZZ
@given(garbage=st.binary(max_size=300))
def test_random_bytes_never_break_the_broker(fuzz_broker: BrokerProcess, garbage: bytes) -> None:
    with _connect(fuzz_broker.port) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        replies = _drain(sock)
    assert all(r[0] in (1, 2) for r in replies)
    _assert_serves(fuzz_broker)


@FUZZ
@given(body=st.binary(max_size=200))
def test_garbage_frames_get_an_error_frame_and_the_connection_lives(
    fuzz_broker: BrokerProcess, body: bytes
) -> None:
    with _connect(fuzz_broker.port) as sock:
        assert _hello(sock) == [1, 1, {"version": 1}]
        sock.sendall(HEADER.pack(len(body)) + body)
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[0] == 2
        sock.sendall(_frame([0, 99, "topics", {}]))
        after = _read_frame(sock)
        assert after is not None
        assert after[:2] == [1, 99]


@FUZZ
@given(op=st.sampled_from(OPS), args=st.dictionaries(st.text(max_size=12), json_like, max_size=5))
def test_well_framed_requests_with_wrong_arguments_get_answers(
    fuzz_broker: BrokerProcess, op: str, args: dict[str, Any]
) -> None:
    if op == "fetch":
        args["timeout"] = 0
    with _connect(fuzz_broker.port) as sock:
        assert _hello(sock) == [1, 1, {"version": 1}]
        sock.sendall(_frame([0, 7, op, args]))
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[:2] in ([1, 7], [2, 7])
    _assert_serves(fuzz_broker)


def test_wrong_version_is_refused_and_closed(fuzz_broker: BrokerProcess) -> None:
    for version in (0, 3, "1", None):
        with _connect(fuzz_broker.port) as sock:
            reply = _hello(sock, version)
            assert reply is not None
            assert reply[:3] == [2, 1, "ProtocolError"]
            assert "version" in reply[3]
            assert _read_frame(sock) is None
    _assert_serves(fuzz_broker)


def test_first_request_must_be_hello(fuzz_broker: BrokerProcess) -> None:
    with _connect(fuzz_broker.port) as sock:
        sock.sendall(_frame([0, 5, "topics", {}]))
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[:3] == [2, 5, "ProtocolError"]
        assert _read_frame(sock) is None


def test_huge_length_prefixes_are_refused_without_allocating(fuzz_broker: BrokerProcess) -> None:
    assert fuzz_broker.process is not None
    broker = psutil.Process(fuzz_broker.process.pid)
    before = broker.memory_info().rss
    for claimed in (MAX_FRAME + 1, 2**31, 2**32 - 1):
        for with_hello in (False, True):
            with _connect(fuzz_broker.port) as sock:
                if with_hello:
                    assert _hello(sock) == [1, 1, {"version": 1}]
                sock.sendall(HEADER.pack(claimed) + b"\x00" * 100)
                reply = _read_frame(sock)
                assert reply is not None
                assert reply[2] == "FrameTooLarge"
                assert reply[4]["size"] == claimed
                assert _read_frame(sock) is None
    assert broker.memory_info().rss - before < 10 << 20
    _assert_serves(fuzz_broker)


def test_truncated_and_stalled_frames_are_dropped(fuzz_broker: BrokerProcess) -> None:
    frame = _frame([0, 3, "topics", {}])
    for cut in (1, 3, 5, len(frame) - 1):
        with _connect(fuzz_broker.port) as sock:
            assert _hello(sock) == [1, 1, {"version": 1}]
            sock.sendall(frame[:cut])
            sock.shutdown(socket.SHUT_WR)
            replies = _drain(sock)
            assert all(r[0] == 2 for r in replies)
    # A peer that starts a frame and stalls is cut off after --frame-timeout (1 s).
    with _connect(fuzz_broker.port) as sock:
        assert _hello(sock) == [1, 1, {"version": 1}]
        sock.sendall(frame[:6])
        sock.settimeout(20)
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[2] == "ProtocolError"
        assert "not completed" in reply[3]
        assert _read_frame(sock) is None
    _assert_serves(fuzz_broker)


def test_deeply_nested_bodies_are_refused(fuzz_broker: BrokerProcess) -> None:
    body = b"\x94\x00\x01\xa6topics" + b"\x91" * 50_000 + b"\xc0"
    with _connect(fuzz_broker.port) as sock:
        assert _hello(sock) == [1, 1, {"version": 1}]
        sock.sendall(HEADER.pack(len(body)) + body)
        reply = _read_frame(sock)
        assert reply is not None
        assert reply[2] == "ProtocolError"
    _assert_serves(fuzz_broker)


def test_listener_is_bound_to_loopback_only(fuzz_broker: BrokerProcess) -> None:
    assert fuzz_broker.process is not None
    listening = [
        c.laddr
        for c in psutil.Process(fuzz_broker.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert all(addr.ip == "127.0.0.1" for addr in listening)


def test_broker_with_a_token_refuses_wrong_tokens(
    tmp_path: Path, broker_factory: type[BrokerProcess]
) -> None:
    broker = broker_factory(tmp_path / "data", token="s3cret")
    broker.start()
    for token in (None, "wrong", 5):
        with _connect(broker.port) as sock:
            sock.sendall(_frame([0, 1, "hello", {"version": 1, "token": token}]))
            reply = _read_frame(sock)
            assert reply is not None
            assert reply[2] == "AuthenticationFailed"
            assert _read_frame(sock) is None
    with _connect(broker.port) as sock:
        sock.sendall(_frame([0, 1, "hello", {"version": 1, "token": "s3cret"}]))
        assert _read_frame(sock) == [1, 1, {"version": 1}]
