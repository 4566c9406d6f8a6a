"""Translate streamflow's records, settings and commit metadata to Kafka's forms and back.

Pure functions, no I/O and no ``confluent_kafka`` import, so they are easy to
test on their own. The encodings on a Kafka cluster:

- key and value: ``msgpack.packb(x, use_bin_type=True)``; a ``None`` key or
  value is Kafka's null (a null value is a tombstone on a compacted topic).
  Bytes that do not decode as one msgpack object (written by another client)
  come back as they are, as ``bytes``.
- headers: one Kafka header per entry of our ``dict``, the name as the header
  key and the msgpack encoding of the value as the header value.
- commit metadata (Kafka keeps one string per committed offset):
  ``"sf:" + base64(msgpack(metadata))``; ``None`` is the empty string.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgpack

from ..errors import InvalidConfig, NotSerializable
from .config import TopicConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .record import Headers

METADATA_PREFIX: Final = "sf:"
KAFKA_SCHEMES: Final = ("kafka",)

#: Our topic setting -> Kafka topic config name. ``fsync`` and ``flush_ms``
#: have no counterpart: a Kafka cluster makes records durable by replication.
TOPIC_SETTINGS: Final = {
    "retention_ms": "retention.ms",
    "retention_bytes": "retention.bytes",
    "segment_bytes": "segment.bytes",
    "segment_ms": "segment.ms",
    "cleanup_policy": "cleanup.policy",
    "delete_retention_ms": "delete.retention.ms",
    "max_record_bytes": "max.message.bytes",
}
UNMAPPED_SETTINGS: Final = ("fsync", "flush_ms")
_UNLIMITED: Final = ("retention_ms", "retention_bytes")


def parse_kafka_url(url: str) -> str:
    """Return the ``bootstrap.servers`` list of a ``kafka://host:port,...`` URL.

    Raises:
        InvalidConfig: if *url* is not ``kafka://`` followed by one or more
            ``host:port`` pairs.

    >>> parse_kafka_url("kafka://h1:9092,h2:9093")
    'h1:9092,h2:9093'
    """
    parts = urlsplit(url)
    expected = "kafka://host:port[,host:port...]"
    if parts.scheme not in KAFKA_SCHEMES or parts.path not in ("", "/") or parts.query:
        raise InvalidConfig("target", url, expected)
    servers = [s.strip() for s in parts.netloc.split(",")]
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfig("target", url, expected)
    return ",".join(servers)


def client_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn keyword settings into librdkafka settings: ``_`` becomes ``.`` in names.

    A name that already has a dot is passed as it is, so both
    ``security_protocol="SASL_SSL"`` and ``**{"security.protocol": "SASL_SSL"}`` work.

    >>> client_settings({"sasl_mechanism": "PLAIN", "ssl.ca.location": "/ca.pem"})
    {'sasl.mechanism': 'PLAIN', 'ssl.ca.location': '/ca.pem'}
    """
    return {(name if "." in name else name.replace("_", ".")): v for name, v in config.items()}


def kafka_topic_settings(settings: Mapping[str, Any]) -> tuple[int, dict[str, str]]:
    """Validate our topic settings; return the partition count and Kafka's topic configs.

    Only the settings given are mapped (the cluster's defaults apply to the
    rest), except that ``internal=True`` sets ``retention.ms=-1`` (internal
    topics are never trimmed by time). ``None`` limits become ``-1``.

    Raises:
        InvalidConfig: for an unknown setting or a bad value (as ``create_topic``).

    >>> kafka_topic_settings({"partitions": 2, "retention_ms": None, "fsync": "always"})
    (2, {'retention.ms': '-1'})
    >>> kafka_topic_settings({"cleanup_policy": "delete,compact", "internal": True})
    (1, {'cleanup.policy': 'compact,delete', 'retention.ms': '-1'})
    """
    checked = TopicConfig.from_settings(dict(settings))
    out: dict[str, str] = {}
    for name, kafka_name in TOPIC_SETTINGS.items():
        if name in settings:
            value = getattr(checked, name)
            out[kafka_name] = "-1" if value is None else str(value)
    if checked.internal:
        out["retention.ms"] = "-1"
    return checked.partitions, out


def streamflow_topic_settings(kafka_configs: Mapping[str, str], partitions: int) -> dict[str, Any]:
    """Return a topic's settings under our names, read from its Kafka configs.

    ``fsync`` and ``flush_ms`` are left out: Kafka has no counterpart.

    >>> s = streamflow_topic_settings({"retention.ms": "-1", "cleanup.policy": "compact"}, 3)
    >>> s["partitions"], s["retention_ms"], s["cleanup_policy"]
    (3, None, 'compact')
    """
    out: dict[str, Any] = {"partitions": partitions}
    for name, kafka_name in TOPIC_SETTINGS.items():
        raw = kafka_configs.get(kafka_name)
        if raw is None:
            continue
        if name == "cleanup_policy":
            out[name] = ",".join(sorted(p.strip() for p in raw.split(",")))
            continue
        try:
            number = int(raw)
        except ValueError:
            continue
        out[name] = None if number < 0 and name in _UNLIMITED else number
    return out


def encode(obj: Any, what: str = "value") -> bytes | None:
    r"""Encode a key or value for Kafka: msgpack, or ``None`` for Kafka's null.

    Raises:
        NotSerializable: if msgpack cannot encode *obj*.

    >>> encode({"a": 1})
    b'\x81\xa1a\x01'
    >>> encode(None) is None
    True
    """
    if obj is None:
        return None
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(obj, what) from exc


def decode(data: bytes | str | None) -> Any:
    """Decode a Kafka key or value; bytes that are not one msgpack object come back raw.

    >>> decode(encode([1, "a"]))
    [1, 'a']
    >>> decode(b"plain text")
    b'plain text'
    >>> decode(None) is None
    True
    """
    if data is None or isinstance(data, str):
        return data
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # any msgpack failure: the bytes were written by another client
        return data


def encode_headers(headers: Headers | None) -> list[tuple[str, str | bytes | None]] | None:
    r"""Encode our headers as Kafka headers (one msgpack value per name).

    Raises:
        NotSerializable: if a header value cannot be encoded.
        TypeError: if a header name is not a string.

    >>> encode_headers({"trace": 7})
    [('trace', b'\x07')]
    """
    if not headers:
        return None
    out: list[tuple[str, str | bytes | None]] = []
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be strings, not {type(name).__name__}")
        try:
            out.append((name, msgpack.packb(value, use_bin_type=True)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotSerializable(value, f"header {name!r}") from exc
    return out


def decode_headers(
    headers: Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]] | None,
) -> Headers | None:
    """Decode Kafka headers into our dict; no headers give ``None``.

    >>> decode_headers(encode_headers({"a": [1, 2], "b": None}))
    {'a': [1, 2], 'b': None}
    """
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return {name: decode(value) for name, value in pairs}


def encode_metadata(metadata: Any) -> str:
    """Encode commit metadata as the string Kafka stores next to an offset.

    Raises:
        NotSerializable: if msgpack cannot encode *metadata*.

    >>> encode_metadata({"checkpoint": 3})
    'sf:gapjaGVja3BvaW50Aw=='
    >>> encode_metadata(None)
    ''
    """
    if metadata is None:
        return ""
    packed = encode(metadata, "commit metadata")
    assert packed is not None
    return METADATA_PREFIX + base64.b64encode(packed).decode("ascii")


def decode_metadata(text: str | None) -> Any:
    """Decode commit metadata; a string another client wrote comes back unchanged.

    >>> decode_metadata(encode_metadata({"checkpoint": 3}))
    {'checkpoint': 3}
    >>> decode_metadata("written by someone else")
    'written by someone else'
    >>> decode_metadata("") is None
    True
    """
    if not text:
        return None
    if not text.startswith(METADATA_PREFIX):
        return text
    try:
        packed = base64.b64decode(text[len(METADATA_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return text
    return decode(packed)
