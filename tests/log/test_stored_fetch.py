"""Fetch as stored: the broker ships batch bytes as they are on disk, the client checks them."""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio

import streamflow
from streamflow.errors import CorruptBatch, ProtocolError
from streamflow.log import Log, Message, StoredReader
from streamflow.log.batch import HEADER_SIZE
from streamflow.log.broker import serve
from streamflow.log.embedded import EmbeddedTransport
from streamflow.log.naming import log_path
from streamflow.log.remote import RemoteTransport
from streamflow.log.transport import Columns
from streamflow.log.wire import (
    FrameReader,
    Response,
    decode_batch,
    decode_body,
    decode_positions,
    decode_stored,
    encode_positions,
    encode_stored,
    negotiate_version,
    pack,
    request_frame,
    unpack,
)

from .helpers import batch_positions, flip_byte, partition_dir, segment_files

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log.partition import Partition
    from streamflow.log.record import RecordBatch

DAY = 24 * 3600 * 1000
LONG = 60
BUDGETS = (1, 200, 1000, 4096, 1 << 20)


def fill(p: Partition, batches: int, seed: int = 3) -> None:
    """Append *batches* batches of 1-6 keyed records of varied size and time."""
    rng = random.Random(seed)
    for i in range(batches):
        n = rng.randint(1, 6)
        p.append(
            [
                Message(key=rng.randrange(7), value="v" * rng.randint(0, 150), timestamp=i * 10 + j)
                for j in range(n)
            ]
        )


def over_the_wire(p: Partition, offset: int, max_bytes: int) -> list[RecordBatch]:
    """Read through the stored path, msgpack and the client's decoder, as a broker fetch does."""
    rows = unpack(pack(encode_stored(p.read_stored(offset, max_bytes=max_bytes))))
    return decode_stored(p.topic, p.number, offset, rows)


def stored(p: Partition, offset: int, max_bytes: int) -> list[tuple[int, Any, Any]]:
    batches = over_the_wire(p, offset, max_bytes)
    return [r for b in batches for r in zip(b.offsets, b.keys, b.values, strict=True)]


def decoded(p: Partition, offset: int, max_bytes: int) -> list[tuple[int, Any, Any]]:
    batches = p.read_batches(offset, max_bytes=max_bytes)
    return [r for b in batches for r in zip(b.offsets, b.keys, b.values, strict=True)]


def test_stored_runs_are_the_segment_file_bytes(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        fill(p, 80)
        assert p.segment_count > 3
        directory = partition_dir(tmp_path)
        for offset in range(p.start_offset, p.end_offset, 7):
            for budget in BUDGETS:
                runs = p.read_stored(offset, max_bytes=budget)
                assert runs
                for run in runs:
                    on_disk = log_path(directory, run.segment).read_bytes()
                    assert run.position in batch_positions(log_path(directory, run.segment))
                    assert bytes(run.data) == on_disk[run.position : run.position + len(run.data)]
                # one run per segment, and the runs follow one another
                assert [r.segment for r in runs] == sorted({r.segment for r in runs})
        assert p.read_stored(p.end_offset) == []


def test_stored_fetch_gives_what_read_batches_gives_at_every_offset(tmp_path: Path) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        fill(p, 80)
        for offset in range(p.start_offset, p.end_offset + 1):
            for budget in BUDGETS:
                assert stored(p, offset, budget) == decoded(p, offset, budget), (offset, budget)


def test_stored_fetch_of_a_compacted_log_never_skips_or_repeats(tmp_path: Path) -> None:
    with Log.open(tmp_path, clock=lambda: 10 * DAY) as log:
        log.create_topic("c", segment_bytes=4096, cleanup_policy="compact")
        p = log.partition("c", 0)
        fill(p, 80)
        p.roll()
        assert log.compact("c") > 0
        everything = decoded(p, p.start_offset, 1 << 30)
        offsets = [o for o, _, _ in everything]
        assert offsets != list(range(offsets[0], offsets[-1] + 1))  # gaps to skip
        for offset in range(p.start_offset, p.end_offset + 1):
            expected = [r for r in everything if r[0] >= offset]
            for budget in BUDGETS:
                got = stored(p, offset, budget)
                # a prefix of what is there, never empty while records remain
                assert got == expected[: len(got)], (offset, budget)
                assert bool(got) == bool(expected)
                assert len(got) >= len(decoded(p, offset, budget))
        # a consumer stepping batch by batch with the smallest budget reads each record once
        position, seen = p.start_offset, []
        while position < p.end_offset:
            batches = over_the_wire(p, position, 1)
            if not batches:
                break
            seen += [r for b in batches for r in zip(b.offsets, b.keys, b.values, strict=True)]
            position = batches[-1].next_offset
        assert seen == everything


def test_a_corrupt_stored_batch_raises_corrupt_batch_naming_partition_and_offset(
    tmp_path: Path,
) -> None:
    with Log.open(tmp_path) as log:
        log.create_topic("t", segment_bytes=4096)
        p = log.partition("t", 0)
        fill(p, 30)
        runs = p.read_stored(0, max_bytes=1 << 20)
        run = runs[0]
        data = bytearray(run.data)
        third = batch_positions(log_path(partition_dir(tmp_path), run.segment))[2]
        second_end = p.read_batches(0, max_bytes=1)[0].next_offset
        third_offset = p.read_batches(second_end, max_bytes=1)[0].next_offset
        data[third - run.position + HEADER_SIZE + 1] ^= 0xFF  # a payload byte
        row = [run.segment, run.position, bytes(data)]
        with pytest.raises(CorruptBatch) as caught:
            decode_stored("t", 0, 0, [row])
        error = caught.value
        assert error.position == third
        assert error.path.name == "00000000000000000000.log"
        assert error.path.parent.as_posix() == "topics/t/0"
        assert error.reason.startswith("bad CRC")
        assert "topic 't' partition 0" in str(error)
        assert f"offset {third_offset}" in str(error)
        # a run cut inside a batch is caught too
        with pytest.raises(CorruptBatch, match="runs past the end"):
            decode_stored("t", 0, 0, [[run.segment, run.position, bytes(run.data)[:-1]]])
        # and the same bytes read from the file by the log raise the same error type
        flip_byte(log_path(partition_dir(tmp_path), run.segment), third + HEADER_SIZE + 1)
        with pytest.raises(CorruptBatch):
            p.read_batches(0, max_bytes=1 << 20)


@pytest.mark.parametrize(
    "rows",
    [
        None,
        [[0, 0]],
        [[0, 0, "text"]],
        [[-1, 0, b""]],
        [[True, 0, b""]],
        [[0, 0, b"", 1]],
    ],
)
def test_malformed_stored_runs_are_protocol_errors(rows: object) -> None:
    with pytest.raises(ProtocolError):
        decode_stored("t", 0, 0, rows)


@pytest.mark.parametrize(
    ("args", "version"),
    [
        ({"version": 1}, 1),
        ({"version": 2}, 2),
        ({"version": 1, "versions": [1, 2]}, 2),
        ({"version": 1, "versions": [1, 2, 9]}, 2),
        ({"version": 7, "versions": [1]}, 1),
        ({"version": 1, "versions": "2"}, 1),
    ],
)
def test_hello_settles_on_the_highest_shared_version(args: dict[str, Any], version: int) -> None:
    assert negotiate_version(args) == version


@pytest.mark.parametrize(
    "args", [{}, {"version": 0}, {"version": True}, {"version": "2"}, {"versions": [3, 4.0]}]
)
def test_hello_without_a_shared_version_is_refused(args: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="versions \\[1, 2\\]"):
        negotiate_version(args)


async def _call_raw(port: int, hello: dict[str, Any], op: str, args: dict[str, Any]) -> list[Any]:
    """Say *hello*, send one request; return ``[hello result, op result]``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        reader = FrameReader(stream)
        results = []
        for request_id, (name, body) in enumerate([("hello", hello), (op, args)], start=1):
            await stream.send_all(request_frame(request_id, name, body))
            raw = await reader.receive()
            assert raw is not None
            reply = decode_body(raw)
            assert isinstance(reply, Response), reply
            results.append(reply.result)
        return results


async def test_broker_serves_stored_batches_and_old_clients_still_get_version_1(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = await nursery.start(partial(serve, tmp_path / "data", port=0))
    values = [{"n": i, "pad": "x" * (i % 50)} for i in range(3000)]
    with trio.fail_after(LONG):
        async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
            await client.create_topic("t", segment_bytes=4096)
            transport = client.transport
            assert isinstance(transport, RemoteTransport)
            for i in range(0, len(values), 100):
                chunk = values[i : i + 100]
                await transport.append("t", 0, Columns(list(range(len(chunk))), chunk))
            # a position inside a stored batch: the client trims the records before it
            position, got = 150, []
            while position < len(values):
                found = await transport.fetch({("t", 0): position}, max_bytes=5000, timeout=0)
                batches = found[("t", 0)]
                assert batches[0].offsets[0] == position
                got += [v for b in batches for v in b.values]
                position = batches[-1].next_offset
            assert got == values[150:]
            assert transport._conn is not None
            assert transport._conn.version == 2

        positions = encode_positions({("t", 0): 150})
        fetch = {"positions": positions, "max_bytes": 1000, "timeout": 0}
        hello_1, rows = await _call_raw(port, {"version": 1, "token": None}, "fetch", fetch)
        assert hello_1 == {"version": 1}
        first = decode_batch(decode_positions(rows)[("t", 0)][0])
        assert first.offsets[0] == 150
        assert first.values[0] == values[150]
        hello_2, rows = await _call_raw(port, {"version": 1, "versions": [1, 2]}, "fetch", fetch)
        assert hello_2 == {"version": 2}
        (segment, start, data), *_ = decode_positions(rows)[("t", 0)]
        on_disk = log_path(partition_dir(tmp_path / "data"), segment).read_bytes()
        assert data == on_disk[start : start + len(data)]


async def test_a_corrupt_batch_fetched_through_the_broker_raises_corrupt_batch(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = await nursery.start(partial(serve, tmp_path / "data", port=0))
    with trio.fail_after(LONG):
        async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
            await client.create_topic("t", segment_bytes=4096)
            for i in range(40):
                await client.transport.append("t", 0, Columns([i] * 5, ["v" * 100] * 5))
            first = segment_files(tmp_path / "data")[0]
            second = batch_positions(first)[1]
            flip_byte(first, second + HEADER_SIZE + 2)
            with pytest.raises(CorruptBatch) as caught:
                await client.transport.fetch({("t", 0): 0}, timeout=0)
            assert caught.value.position == second
            assert caught.value.path.name == first.name
            assert "topic 't' partition 0" in str(caught.value)
            # the connection stays usable, and reads past the damage still work
            found = await client.transport.fetch({("t", 0): 10}, timeout=0)
            assert found[("t", 0)][0].offsets[0] == 10


async def test_a_client_speaks_version_1_to_a_broker_that_offers_only_that(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a version-1 broker: it settles every hello on version 1
    monkeypatch.setattr("streamflow.log.wire.VERSIONS", (1,))
    port = await nursery.start(partial(serve, tmp_path / "data", port=0))
    with trio.fail_after(LONG):
        async with streamflow.connect(f"tcp://127.0.0.1:{port}") as client:
            await client.create_topic("t")
            transport = client.transport
            assert isinstance(transport, RemoteTransport)
            await transport.append("t", 0, Columns([1, 2, 3], ["a", "b", "c"]))
            found = await transport.fetch({("t", 0): 1}, timeout=0)
            assert transport._conn is not None
            assert transport._conn.version == 1
            assert [b.values for b in found[("t", 0)]] == [["b", "c"]]


def test_a_compacted_gap_at_the_end_reads_as_empty_so_long_polls_wait(tmp_path: Path) -> None:
    now = [DAY]
    with Log.open(tmp_path, clock=lambda: now[0]) as log:
        log.create_topic("c", cleanup_policy="compact", delete_retention_ms=DAY)
        p = log.partition("c", 0)
        p.append([Message("x", 1), Message("a", None)])
        p.roll()
        now[0] = 3 * DAY
        assert log.compact("c") == 1  # the tombstone at offset 1 goes; its slot stays
        assert p.end_offset == 2
        assert [b.offsets for b in p.read_batches(0)] == [[0]]
        # offset 1 lies inside the stored batch, which holds no record at or after it
        assert p.read_batches(1) == []
        assert p.read_stored(1) == []
        assert [b.offsets for b in over_the_wire(p, 0, 1)] == [[0]]
        p.append([Message("y", 2)])
        assert [b.offsets for b in over_the_wire(p, 1, 1)] == [[2]]


async def test_embedded_fetch_stored_then_decode_gives_what_fetch_gives(tmp_path: Path) -> None:
    log = Log.open(tmp_path, clock=lambda: 10 * DAY)
    log.create_topic("c", segment_bytes=4096, cleanup_policy="compact")
    p = log.partition("c", 0)
    fill(p, 80)
    p.roll()
    assert log.compact("c") > 0  # gaps inside and between batches
    transport = EmbeddedTransport(log, owns_log=True)
    assert isinstance(transport, StoredReader)
    try:
        for offset in range(p.start_offset, p.end_offset + 1):
            for budget in BUDGETS:
                at = {("c", 0): offset}
                runs = await transport.fetch_stored(at, max_bytes=budget, timeout=0)
                got = [transport.decode_stored("c", 0, offset, r) for r in runs.values()]
                fetched = await transport.fetch(at, max_bytes=budget, timeout=0)
                assert got == list(fetched.values()), (offset, budget)
    finally:
        await transport.aclose()


async def test_embedded_decode_stored_names_the_segment_file_of_a_corrupt_batch(
    tmp_path: Path,
) -> None:
    log = Log.open(tmp_path)
    log.create_topic("t", segment_bytes=4096)
    fill(log.partition("t", 0), 30)
    transport = EmbeddedTransport(log, owns_log=True)
    try:
        path = log_path(partition_dir(tmp_path), 0)
        third = batch_positions(path)[2]
        flip_byte(path, third + HEADER_SIZE + 1)  # a payload byte
        # The read does not look inside the batches; the decode checks them.
        runs = (await transport.fetch_stored({("t", 0): 0}, timeout=0))[("t", 0)]
        with pytest.raises(CorruptBatch) as caught:
            transport.decode_stored("t", 0, 0, runs)
        assert caught.value.path == path
        assert caught.value.position == third
        assert caught.value.reason.startswith("bad CRC")
    finally:
        await transport.aclose()
