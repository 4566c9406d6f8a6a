"""Choose the partition of a keyed record, the same way on every process and machine.

``partition_for`` hashes the msgpack encoding of the key with Kafka's murmur2
and reduces it the way Kafka's default partitioner does,
``(murmur2(data) & 0x7fffffff) % partitions``, so a key lands on the same
partition here as on a Kafka cluster fed the same key bytes. Python's ``hash()``
is never used: it is salted per process.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from streamflow.errors import NotSerializable

_M: Final = 0x5BD1E995
_SEED: Final = 0x9747B28C
_MASK: Final = 0xFFFFFFFF
_CACHE_LIMIT: Final = 100_000
# keyed by (type, key, partitions): 1, 1.0 and True are equal in Python but pack differently
_cache: dict[tuple[type, Any, int], int] = {}


def murmur2(data: bytes) -> int:
    """Return Kafka's 32-bit murmur2 hash of *data*, as an unsigned integer.

    >>> murmur2(b"21") == -973932308 & 0xFFFFFFFF
    True
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: Any, partitions: int) -> int:
    """Return the partition of *key* among *partitions*, stable across processes.

    Raises:
        ValueError: if *partitions* is not positive.
        NotSerializable: if msgpack cannot encode *key*.

    >>> partition_for("user-7", 4) == partition_for("user-7", 4)
    True
    >>> partition_for(b"x", 1)
    0
    """
    if partitions < 1:
        raise ValueError(f"partitions={partitions}: a topic has at least one partition")
    kind = type(key)
    cacheable = kind is str or kind is int or kind is bytes
    if cacheable:
        hit = _cache.get((kind, key, partitions))
        if hit is not None:
            return hit
    try:
        data = msgpack.packb(key, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(key, "key") from exc
    result = (murmur2(data) & 0x7FFFFFFF) % partitions
    if cacheable:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[(kind, key, partitions)] = result
    return result
