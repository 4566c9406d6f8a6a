from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamflow.errors import NotSerializable
from streamflow.log.batch import (
    HEADER_SIZE,
    crc_matches,
    decode,
    encode_batch,
    frame,
    looks_valid,
    pack_payload,
    parse_header,
)

keys = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10) | st.binary(max_size=10)
values = st.recursive(
    keys | st.floats(allow_nan=False) | st.booleans(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(
    base=st.integers(0, 2**62),
    first=st.integers(-(2**40), 2**40),
    records=st.lists(st.tuples(keys, values, st.integers(-1000, 1000)), min_size=1, max_size=30),
    with_headers=st.booleans(),
)
def test_batch_round_trip(
    base: int, first: int, records: list[tuple[Any, Any, int]], with_headers: bool
) -> None:
    ks = [k for k, _, _ in records]
    vs = [v for _, v, _ in records]
    stamps = [first + d for _, _, d in records]
    hs = [{"i": i} if i % 2 else None for i in range(len(records))] if with_headers else None
    payload = pack_payload(None, [t - first for t in stamps], ks, vs, hs)
    head = frame(
        payload,
        base_offset=base,
        last_offset_delta=len(records) - 1,
        record_count=len(records),
        first_timestamp=first,
        max_timestamp=max(stamps),
        producer_id=3,
        producer_epoch=1,
        base_sequence=10,
    )
    data = head + payload
    header = parse_header(data)
    assert looks_valid(header)
    assert crc_matches(data, 0, header)
    assert header.size == len(data)
    assert (header.base_offset, header.next_offset) == (base, base + len(records))
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (3, 1, 10)
    assert header.last_sequence == 10 + len(records) - 1
    batch = decode(data, 0, header)
    assert batch.offsets == list(range(base, base + len(records)))
    assert batch.timestamps == stamps
    assert batch.keys == ks
    assert batch.values == vs
    assert batch.headers == hs


def test_header_layout_is_the_documented_one() -> None:
    data = encode_batch(7, ["k"], ["v"])
    length, crc = struct.unpack_from(">II", data)
    assert length == len(data) - 4
    assert crc == zlib.crc32(data[8:])
    assert data[8] == 1  # magic
    assert struct.unpack_from(">q", data, 10)[0] == 7
    assert struct.unpack_from(">I", data, 56)[0] == 1  # record count
    assert HEADER_SIZE == 60


def test_every_flipped_bit_is_detected() -> None:
    data = bytearray(encode_batch(0, [1, 2], ["a", {"b": 2}]))
    header = parse_header(data)
    for position in range(8, len(data)):
        for bit in range(8):
            data[position] ^= 1 << bit
            assert not crc_matches(data, 0, header)
            data[position] ^= 1 << bit


def test_compacted_batch_has_gaps_in_offsets() -> None:
    payload = pack_payload([0, 3], None, ["a", "b"], [1, 2], None)
    head = frame(
        payload,
        base_offset=10,
        last_offset_delta=4,
        record_count=2,
        first_timestamp=5,
        max_timestamp=5,
    )
    header = parse_header(head + payload)
    assert header.next_offset == 15
    batch = decode(head + payload, 0, header)
    assert (batch.offsets, batch.timestamps) == ([10, 13], [5, 5])


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), ({"a": [object()]}, "object"), (2**64, "int"), (1j, "complex")],
)
def test_unencodable_values_name_the_type(value: object, type_name: str) -> None:
    with pytest.raises(NotSerializable) as info:
        pack_payload(None, None, [None, None], [1, value], None)
    assert info.value.type_name == type_name
    assert info.value.what == "value"
