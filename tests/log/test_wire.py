"""Wire codec: frames, bodies, record blobs, errors, and the frame reader's limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflow import errors
from streamflow.log.record import RecordBatch
from streamflow.log.transport import Columns, GroupDescription, MemberDescription
from streamflow.log.wire import (
    HEADER,
    ErrorReply,
    FrameReader,
    Request,
    Response,
    decode_batch,
    decode_body,
    decode_columns,
    decode_group,
    encode_batch,
    encode_columns,
    encode_group,
    error_frame,
    error_from_wire,
    error_to_wire,
    request_frame,
    response_frame,
)

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
#: What a frame body may hold: maps keyed by strings only (strict_map_key).
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
#: What users store: maps keyed by anything hashable that msgpack can carry.
user_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-(2**63), 2**63 - 1) | st.text(), inner, max_size=4)
    ),
    max_leaves=10,
)


def _body(frame: bytes) -> bytes:
    (length,) = HEADER.unpack_from(frame)
    assert length == len(frame) - HEADER.size
    return frame[HEADER.size :]


@given(request_id=st.integers(0, 2**63), op=st.text(), args=st.dictionaries(st.text(), values))
def test_request_frames_round_trip(request_id: int, op: str, args: dict[str, Any]) -> None:
    assert decode_body(_body(request_frame(request_id, op, args))) == Request(request_id, op, args)


@given(request_id=st.integers(0, 2**63), result=values)
def test_response_frames_round_trip(request_id: int, result: Any) -> None:
    decoded = decode_body(_body(response_frame(request_id, result)))
    assert decoded == Response(request_id, result)


@given(
    keys=st.lists(user_values, max_size=5),
    data=st.data(),
)
def test_record_columns_keep_any_map_keys(keys: list[Any], data: st.DataObject) -> None:
    vals = data.draw(st.lists(user_values, min_size=len(keys), max_size=len(keys)))
    stamps: list[int | None] | None = data.draw(
        st.none() | st.just(list[int | None]([1] * len(keys)))
    )
    columns = Columns(keys, vals, stamps)
    assert decode_columns(encode_columns(columns)) == columns
    batch = RecordBatch(list(range(len(keys))), [5] * len(keys), keys, vals)
    assert decode_batch(encode_batch(batch)) == batch


@settings(max_examples=300)
@given(garbage=st.binary(max_size=200))
def test_garbage_bodies_raise_protocol_error_only(garbage: bytes) -> None:
    try:
        decode_body(garbage)
    except errors.ProtocolError:
        pass


def test_bodies_of_the_wrong_shape_are_refused() -> None:
    for body in ([], [0, -1, "x", {}], [0, 1, 5, {}], [9, 1], [1, True, None], "str", {1: 2}):
        with pytest.raises(errors.ProtocolError):
            decode_body(msgpack.packb(body))
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(errors.ProtocolError):
        decode_body(deep)


@pytest.mark.parametrize(
    "exc",
    [
        errors.UnknownTopic("t", 3),
        errors.OffsetOutOfRange("t", 0, 9, 0, 5),
        errors.CorruptBatch(Path("/x/00.log"), 12),
        errors.RecordTooLarge(10, 5, "t"),
        errors.TopicExists("t"),
        errors.InvalidTopicName("../x"),
        errors.RebalanceInProgress("stale"),
        errors.DuplicateSequence(1, 2, 3),
        errors.StorageError("append on t[0]", OSError(28, "No space left on device")),
        errors.PartitionOffline("t[0]", OSError(5, "Input/output error")),
        ValueError("bad"),
    ],
)
def test_errors_cross_the_wire_with_class_message_and_data(exc: Exception) -> None:
    reply = decode_body(_body(error_frame(4, exc)))
    assert isinstance(reply, ErrorReply)
    rebuilt = reply.error()
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == str(exc)
    for key, value in vars(exc).items():
        expected = str(value) if isinstance(value, Path) else value
        assert getattr(rebuilt, key) == expected


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@given(
    state=st.sampled_from(["stable", "rebalancing", "empty", "dead"]),
    generation=st.integers(0, 2**31),
    members=st.lists(
        st.builds(
            MemberDescription,
            names,
            st.lists(names, max_size=3),
            st.lists(st.tuples(names, st.integers(0, 1000)), max_size=5),
        ),
        max_size=4,
    ),
)
def test_group_descriptions_round_trip(
    state: str, generation: int, members: list[MemberDescription]
) -> None:
    desc = GroupDescription("g", state, generation, members)
    body = decode_body(_body(response_frame(1, encode_group(desc))))
    assert isinstance(body, Response)
    assert decode_group(body.result) == desc


def test_malformed_group_descriptions_are_protocol_errors() -> None:
    for bad in (None, {}, {"group": "g", "state": "stable", "generation": 1, "members": [[1]]}):
        with pytest.raises(errors.ProtocolError):
            decode_group(bad)


def test_foreign_errors_become_streamflow_errors() -> None:
    name, message, attrs = error_to_wire(ZeroDivisionError("boom"))
    rebuilt = error_from_wire(name, message, attrs)
    assert type(rebuilt) is errors.StreamflowError
    assert "ZeroDivisionError" in str(rebuilt)
    assert type(error_from_wire("NoSuchError", "m", {})) is errors.StreamflowError


async def _reader_over(data: bytes, **options: Any) -> FrameReader:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(data)
    await send.aclose()
    return FrameReader(receive, **options)


async def test_reader_splits_concatenated_frames() -> None:
    frames = [request_frame(i, "op", {"i": i}) for i in range(50)]
    reader = await _reader_over(b"".join(frames))
    got = []
    while (body := await reader.receive()) is not None:
        got.append(decode_body(body))
    assert got == [Request(i, "op", {"i": i}) for i in range(50)]


async def test_reader_reassembles_a_frame_sent_byte_by_byte() -> None:
    frame = request_frame(1, "append", {"blob": b"x" * 1000})
    send, receive = trio.testing.memory_stream_pair()
    reader = FrameReader(receive)
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            for i in range(len(frame)):
                await send.send_all(frame[i : i + 1])
            await send.aclose()

        nursery.start_soon(trickle)
        body = await reader.receive()
        assert body is not None
        assert decode_body(body) == Request(1, "append", {"blob": b"x" * 1000})
        assert await reader.receive() is None


async def test_reader_refuses_a_huge_length_before_reading_the_body() -> None:
    reader = await _reader_over(HEADER.pack(2**32 - 1), max_frame_bytes=1 << 20)
    with pytest.raises(errors.FrameTooLarge) as info:
        await reader.receive()
    assert info.value.size == 2**32 - 1


async def test_reader_reports_truncated_frames() -> None:
    frame = request_frame(1, "topics", {})
    for cut in (2, len(frame) - 1):
        reader = await _reader_over(frame[:cut])
        with pytest.raises(errors.ProtocolError):
            await reader.receive()


async def test_reader_gives_up_on_a_frame_that_never_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(request_frame(1, "topics", {})[:3])
    reader = FrameReader(receive, frame_timeout=5.0)
    with trio.fail_after(60), pytest.raises(errors.ProtocolError, match="not completed"):
        await reader.receive()
