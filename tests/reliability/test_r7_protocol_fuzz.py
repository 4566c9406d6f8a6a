"""R7: protocol fuzz against a broker subprocess, with a canary client running throughout.

Hypothesis draws 5,000 cases (soak: 50,000) from raw bytes and from
structure-aware frames: bad versions, unknown ops, wrong types in every field
of a request, frames of the wrong kind, deep nesting, msgpack containers and
strings that claim 2^32-1 elements, truncated frames, length prefixes up to
2^32-1, several frames back to back. Each case runs on a fresh connection,
after a good ``hello`` or without one:

* a case made of complete frames within the size limit sent after ``hello``
  must leave the connection usable: a ``topics`` probe sent after it is
  answered;
* any other case ends with a half-close and must be answered only with
  response/error frames, then closed;
* either way the outcome (probe answer or close) must come within 1 s.

Meanwhile a canary process produces a record and reads it back in a loop:
every round must succeed. Slowloris peers (a frame trickled in one byte at
a time) must be cut off at the frame deadline, and 32 peers claiming a 4 GiB
frame at once must not grow the broker's memory by 10 MiB. At the end the
broker is alive and its log has no traceback. (``tests/log/test_fuzz.py``
has the targeted versions of these cases; this is the volume run.)
"""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from .harness import Broker, Child, percentile, report, soak, start_python

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CASES = 50_000 if soak() else 5_000
#: Cases drawn by hypothesis; the rest are seeded mutations of good frames (cheaper to make).
HYPOTHESIS_CASES = CASES * 3 // 5
MAX_FRAME = 1 << 20
FRAME_TIMEOUT = 1.0
#: How long a case's outcome may take (a probe answer or a close).
ANSWER_WITHIN = 1.0
HEADER = struct.Struct(">I")
PROBE_ID = 4_242_424
OPS = [
    "hello",
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
]

CANARY = """
import os, sys, trio, streamflow
from streamflow.errors import StreamflowError

async def main(url, stop):
    ok = failed = 0
    async with streamflow.connect(url, request_timeout=10, reconnect_timeout=10) as client:
        await client.create_topic("canary", partitions=1)
        async with client.producer(delivery_timeout=10) as producer:
            async with client.consumer("canary") as consumer:
                print("READY", flush=True)
                i = 0
                while not os.path.exists(stop):
                    try:
                        with trio.fail_after(10):
                            meta = await producer.send("canary", i)
                            got = []
                            while not got:
                                got = await consumer.poll(timeout=5)
                        assert [(r.offset, r.value) for r in got] == [(meta.offset, i)], got
                        ok += 1
                    except (StreamflowError, trio.TooSlowError, AssertionError) as exc:
                        print("canary round failed:", repr(exc), file=sys.stderr)
                        failed += 1
                    i += 1
                    await trio.sleep(0.05)
    print("CANARY", ok, failed, flush=True)

trio.run(main, sys.argv[1], sys.argv[2])
"""


def frame(body: bytes) -> bytes:
    """Return *body* with its length prefix."""
    return HEADER.pack(len(body)) + body


def packed(obj: object) -> bytes:
    """Return *obj* as msgpack."""
    return msgpack.packb(obj, use_bin_type=True)


HELLO = frame(packed([0, 1, "hello", {"version": 1, "token": None}]))
PROBE = frame(packed([0, PROBE_ID, "topics", {}]))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
#: msgpack headers that claim far more than follows (array32, map32, str32, bin32, ext32).
CLAIMS = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]
CLAIMS += [b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff", b"\xde\xff\xff"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Draw a request body that is well-formed msgpack but wrong in some field."""
    kind = draw(st.sampled_from([0, 0, 0, 1, 2, 3, -1, "0", None]))
    request_id = draw(st.integers(0, 2**32) | values)
    op = draw(st.sampled_from(OPS) | st.text(max_size=20) | values)
    args = draw(st.dictionaries(st.text(max_size=12), values, max_size=6) | values)
    if isinstance(args, dict) and op == "fetch" and draw(st.booleans()):
        args["timeout"] = draw(st.floats(allow_nan=True) | st.integers(-5, 5))
    body = [kind, request_id, op, args]
    body += draw(st.lists(values, max_size=2))
    return packed(body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body)


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    """Draw a body with a container or string header claiming up to 2^32-1 items."""
    prefix = b"\x94\x00\x07\xa6append\x81\xa7columns" if draw(st.booleans()) else b""
    return prefix + draw(st.sampled_from(CLAIMS)) + draw(st.binary(max_size=16))


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Draw a body nested up to 200,000 levels deep (arrays or maps)."""
    depth = draw(st.integers(1, 200_000))
    level = draw(st.sampled_from([b"\x91", b"\x81\xa1k", b"\x81\x01"]))
    return b"\x94\x00\x07\xa6topics" + level * depth + b"\xc0"


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, bool, bool]:
    """Draw ``(label, bytes to send, after hello, complete frames within the limit)``."""
    label = draw(
        st.sampled_from(
            ["raw", "raw", "garbage", "request", "request", "request", "bomb", "nested"]
            + ["version", "truncated", "oversized", "pipelined"]
        )
    )
    if label == "raw":
        return label, draw(st.binary(max_size=512)), draw(st.booleans()), False
    if label == "garbage":
        return label, frame(draw(st.binary(max_size=256))), True, True
    if label == "request":
        return label, frame(draw(requests())), True, True
    if label == "bomb":
        return label, frame(draw(bombs())), True, True
    if label == "nested":
        return label, frame(draw(nested())), True, True
    if label == "version":
        version = draw(values.filter(lambda v: v != 1 or isinstance(v, bool)))
        return label, frame(packed([0, 1, "hello", {"version": version}])), False, False
    if label == "truncated":
        whole = frame(draw(requests()))
        return label, whole[: draw(st.integers(1, len(whole) - 1))], True, False
    if label == "oversized":
        claimed = draw(st.integers(MAX_FRAME + 1, 2**32 - 1) | st.just(2**32 - 1))
        return (
            label,
            HEADER.pack(claimed) + draw(st.binary(max_size=256)),
            draw(st.booleans()),
            False,
        )
    parts = draw(
        st.lists(st.one_of(requests(), bombs(), st.binary(max_size=64)), min_size=2, max_size=5)
    )
    return "pipelined", b"".join(frame(p) for p in parts), True, True


GOOD_FRAMES = [
    packed([0, 7, "topics", {}]),
    packed([0, 8, "describe", {"name": "canary"}]),
    packed([0, 9, "offsets", {"topic": "canary", "partition": 0}]),
    packed([0, 10, "fetch", {"positions": [["canary", 0, 0]], "max_bytes": 4096, "timeout": 0}]),
    packed(
        [
            0,
            11,
            "append",
            {"topic": "fuzz", "partition": 0, "columns": packed([[1], [2], None, None])},
        ]
    ),
    packed([0, 12, "committed", {"group": "g", "partitions": [["canary", 0]]}]),
]


def mutation(rng: random.Random) -> tuple[str, bytes, bool, bool]:
    """Return a case made by flipping, cutting, inserting or splicing bytes of good frames."""
    body = bytearray(rng.choice(GOOD_FRAMES))
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(5)
        at = rng.randrange(len(body) + 1)
        if how == 0 and body:
            body[min(at, len(body) - 1)] ^= 1 << rng.randrange(8)
        elif how == 1:
            del body[at : at + rng.randint(1, 8)]
        elif how == 2:
            body[at:at] = rng.randbytes(rng.randint(1, 8))
        elif how == 3:
            body[at:at] = rng.choice(CLAIMS)
        else:
            other = rng.choice(GOOD_FRAMES)
            body[at:] = other[rng.randrange(len(other)) :]
    data = frame(bytes(body))
    if rng.random() < 0.2:
        return "mutated-truncated", data[: rng.randrange(1, len(data))], True, False
    return "mutated", data, True, True


def read_frame(sock: socket.socket) -> list[Any] | None:
    """Return the next reply frame, or None once the broker closed the connection."""
    data = b""
    want = HEADER.size
    length = None
    while len(data) < want:
        try:
            chunk = sock.recv(want - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            assert not data, f"the broker closed the connection inside a frame ({data!r})"
            return None
        data += chunk
        if length is None and len(data) == HEADER.size:
            (length,) = HEADER.unpack(data)
            want += length
    reply = msgpack.unpackb(data[HEADER.size :], raw=False)
    assert isinstance(reply, list), reply
    return reply


class Tally:
    """Counts and timings over every case."""

    def __init__(self) -> None:
        self.cases = 0
        self.by_label: dict[str, int] = {}
        self.closed = 0
        self.lived = 0
        self.error_frames = 0
        self.seconds: list[float] = []


def run_case(
    port: int, tally: Tally, label: str, payload: bytes, hello: bool, delimited: bool
) -> None:
    """Send one case and check its outcome (module docstring)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if hello:
            sock.sendall(HELLO)
            assert read_frame(sock) == [1, 1, {"version": 1}]
        try:
            # a half-close ends the session (requests in flight are dropped), so
            # a case that must leave the connection usable keeps it open
            sock.sendall(payload + (PROBE if delimited else b""))
            if not delimited:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the broker already closed (a refused length prefix): fine
        sent = time.monotonic()
        answered = False
        while (reply := read_frame(sock)) is not None:
            assert reply[0] in (1, 2), reply
            tally.error_frames += reply[0] == 2
            if reply[:2] == [1, PROBE_ID]:
                answered = True
                break
        tally.seconds.append(time.monotonic() - sent)
    if delimited:
        assert answered, f"{label} case closed the connection: {payload[:80]!r}"
    tally.lived += answered
    tally.closed += not answered
    tally.cases += 1
    tally.by_label[label] = tally.by_label.get(label, 0) + 1


def rss(broker: Broker) -> int:
    """Return the broker's resident memory in bytes."""
    assert broker.child is not None
    return int(psutil.Process(broker.child.pid).memory_info().rss)


def slowloris(port: int, peers: int) -> list[float]:
    """Trickle a frame one byte per 0.2 s on *peers* connections; return when each was cut."""
    socks = []
    for _ in range(peers):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(HELLO)
        assert read_frame(sock) == [1, 1, {"version": 1}]
        socks.append(sock)
    started = time.monotonic()
    cut: dict[int, float] = {}
    try:
        for byte in PROBE * 4:
            for i, sock in enumerate(socks):
                if i in cut:
                    continue
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    cut[i] = time.monotonic() - started
            if len(cut) == peers:
                break
            time.sleep(0.2)
        for i, sock in enumerate(socks):
            if i not in cut:
                sock.settimeout(30)
                while (reply := read_frame(sock)) is not None:
                    assert reply[2] == "ProtocolError", reply
                cut[i] = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    return sorted(cut.values())


def huge_claims(port: int, peers: int) -> None:
    """Open *peers* connections that each claim a 2^32-1 byte frame and send 64 KiB of it."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(peers)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:
                sock.sendall(HELLO)
                assert read_frame(sock) == [1, 1, {"version": 1}]
            try:
                sock.sendall(HEADER.pack(2**32 - 1) + b"\x00" * (64 << 10))
            except (BrokenPipeError, ConnectionResetError):
                continue
        for sock in socks:
            reply = read_frame(sock)
            assert reply is not None
            assert reply[2] == "FrameTooLarge", reply
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker with a 1 MiB frame limit and a 1 s frame deadline."""
    args = ["--frame-timeout", str(FRAME_TIMEOUT), "--idle-timeout", "30"]
    args += ["--max-frame-bytes", str(MAX_FRAME)]
    made = Broker(tmp_path / "data", extra_args=args)
    made.start()
    yield made
    made.kill()


@pytest.mark.timeout(3600 if soak() else 240)
def test_fuzzed_frames_never_break_the_broker_or_its_other_clients(
    broker: Broker, tmp_path: Path, seed: int
) -> None:
    stop = tmp_path / "canary-stop"
    canary: Child = start_python(CANARY, broker.url, str(stop), log_path=tmp_path / "canary.log")
    canary.wait_ready()
    tally = Tally()
    baseline = rss(broker)
    try:

        @settings(
            max_examples=HYPOTHESIS_CASES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases())
        def fuzz(case: tuple[str, bytes, bool, bool]) -> None:
            run_case(broker.port, tally, *case)

        hypothesis_seed(seed)(fuzz)()
        rng = random.Random(seed)
        while tally.cases < CASES:
            run_case(broker.port, tally, *mutation(rng))
        assert canary.alive(), canary.tail_log()
        cut_after = slowloris(broker.port, 8)
        before_claims = rss(broker)
        huge_claims(broker.port, 32)
        claims_growth = rss(broker) - before_claims
        # a well-behaved client still works right after all of it
        run_case(broker.port, tally, "garbage", frame(b"\xc1"), True, True)
    finally:
        stop.write_text("stop")
        line = canary.readline(60).split()
        canary.kill()
    assert line[:1] == ["CANARY"], canary.tail_log()
    canary_ok, canary_failed = int(line[1]), int(line[2])
    assert broker.child is not None
    assert broker.child.alive()
    tracebacks = broker.log_path.read_text(errors="replace").count("Traceback")
    slow = sum(s > ANSWER_WITHIN for s in tally.seconds)
    report(
        "R7",
        seed,
        cases=tally.cases,
        by_label=tally.by_label,
        error_frames=tally.error_frames,
        connections_kept=tally.lived,
        connections_closed=tally.closed,
        answer_p50_ms=round(percentile(tally.seconds, 50) * 1000, 2),
        answer_p99_ms=round(percentile(tally.seconds, 99) * 1000, 2),
        answer_max_ms=round(max(tally.seconds) * 1000, 1),
        answers_over_1s=slow,
        slowloris_cut_s=[round(s, 2) for s in cut_after],
        canary_ok=canary_ok,
        canary_failed=canary_failed,
        broker_crashes=0 if broker.child.alive() else 1,
        broker_tracebacks=tracebacks,
        rss_growth_mib=round((rss(broker) - baseline) / (1 << 20), 2),
        rss_growth_4gib_claims_mib=round(claims_growth / (1 << 20), 2),
    )
    assert tally.cases >= CASES
    assert canary_failed == 0
    assert canary_ok > 0
    assert tracebacks == 0
    assert slow == 0, f"{slow} cases took longer than {ANSWER_WITHIN} s"
    assert all(FRAME_TIMEOUT * 0.9 <= s <= FRAME_TIMEOUT + 5 for s in cut_after), cut_after
    assert claims_growth < 10 << 20
