from __future__ import annotations

import os
import subprocess
import sys

import msgpack
import pytest

from streamflow.errors import NotSerializable
from streamflow.log import partition_for
from streamflow.log.partitioner import murmur2

# Kafka's own test vectors (UtilsTest.testMurmur2), as signed 32-bit integers
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "signed"), KAFKA_VECTORS)
def test_murmur2_matches_kafka(data: bytes, signed: int) -> None:
    assert murmur2(data) == signed & 0xFFFFFFFF


def test_partition_for_is_stable_across_processes() -> None:
    keys = ["user-1", 42, b"raw", 1.5, [1, "a"], {"k": 1}, True, None]
    here = [partition_for(k, 12) for k in keys]
    code = (
        "from streamflow.log import partition_for\n"
        f"print([partition_for(k, 12) for k in {keys!r}])\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout
    assert there.strip() == repr(here)


def test_partition_for_spreads_keys_and_distinguishes_types() -> None:
    hits = {partition_for(f"key-{i}", 8) for i in range(200)}
    assert hits == set(range(8))
    assert all(0 <= partition_for(i, 3) < 3 for i in range(100))
    # 1, 1.0 and True are equal in Python (one cache slot) but not on the wire
    for key in (1, True, 1.0, 1, True):
        data = msgpack.packb(key, use_bin_type=True)
        assert partition_for(key, 10**6) == (murmur2(data) & 0x7FFFFFFF) % 10**6


def test_partition_for_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="partitions"):
        partition_for("k", 0)
    with pytest.raises(NotSerializable):
        partition_for({1, 2}, 3)
