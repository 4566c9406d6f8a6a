"""Define ``streamflow produce`` and ``consume``: JSON lines in, JSON lines out."""

from __future__ import annotations

import base64
import itertools
import json
import math
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, cast

import click

from .app import CommandError, data_option, main, open_log, resolve_data

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from streamflow.log import Message, RecordBatch

READ_CHUNK_BYTES: Final = 1 << 20
POLL_INTERVAL_S: Final = 0.05
FETCH_MAX_BYTES: Final = 1 << 20


@main.command()
@click.argument("topic")
@click.option("--key-field", help="Use this field of each JSON object as the record key.")
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    help="Append to this partition (default: keyed records by key, others round-robin).",
)
@data_option
def produce(topic: str, key_field: str | None, partition: int | None, data: Path | None) -> None:
    """Append one record per JSON line read from stdin to TOPIC.

    Blank lines are skipped. Records are appended in batches as input arrives;
    on a bad line the records before it are kept and the command stops.
    """
    stdin = binary_stream("stdin")
    written = 0
    with open_log(resolve_data(data)) as log:
        log.describe(topic)  # fail before reading stdin when the topic is missing
        if partition is not None:
            log.partition(topic, partition)

        def append(messages: list[Message]) -> None:
            nonlocal written
            if not messages:
                return
            if partition is None:
                log.append(topic, messages)
            else:
                log.partition(topic, partition).append(messages)
            written += len(messages)

        for messages, error in parse_json_lines(read_chunks(stdin), key_field):
            append(messages)
            if error is not None:
                kept = f"the {written} records before it were written"
                raise CommandError(f"{error}; {kept if written else 'nothing was written'}")
    click.echo(f"produced {written} records to {topic}", err=True)


def binary_stream(name: Literal["stdin", "stdout"]) -> BinaryIO:
    """Return the byte stream under ``sys.stdin`` or ``sys.stdout`` (as click's test runner sets).

    Blocking (reads and writes of the stream are).
    """
    stream = getattr(sys, name)
    buffer = getattr(stream, "buffer", None)
    return cast("BinaryIO", buffer if buffer is not None else stream)


def read_chunks(stream: Any) -> Iterator[bytes]:
    """Yield what *stream* has as it arrives (at most 1 MiB at a time), until EOF.

    Blocking.
    """
    read = getattr(stream, "read1", stream.read)
    while chunk := read(READ_CHUNK_BYTES):
        yield chunk


def parse_json_lines(
    chunks: Iterator[bytes], key_field: str | None
) -> Iterator[tuple[list[Message], str | None]]:
    r"""Turn chunks of JSON lines into batches of messages, one batch per chunk.

    Each item is ``(messages, error)``; *error* describes the first bad line
    (its 1-based number and why) and is the last item produced.

    >>> out = list(parse_json_lines(iter([b'{"k": 1}\n2\n', b'x\n']), "k"))
    >>> [m.key for m in out[0][0]], out[0][1]
    ([1], "stdin line 2: the value is not a JSON object with a field 'k'")
    """
    from streamflow.log import Message

    line_number = 0
    pending = b""
    for chunk in itertools.chain(chunks, [None]):
        if chunk is not None:
            *lines, pending = (pending + chunk).split(b"\n")
        else:
            lines = [pending] if pending.strip() else []
        messages: list[Message] = []
        for raw in lines:
            line_number += 1
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError as exc:
                if isinstance(exc, json.JSONDecodeError):
                    reason = f"{exc.msg} at column {exc.colno}"
                else:
                    reason = str(exc)
                yield messages, f"stdin line {line_number}: invalid JSON ({reason})"
                return
            key = None
            if key_field is not None:
                if not isinstance(value, dict) or key_field not in value:
                    yield (
                        messages,
                        f"stdin line {line_number}: the value is not a JSON object "
                        f"with a field {key_field!r}",
                    )
                    return
                key = value[key_field]
            messages.append(Message(key=key, value=value))
        yield messages, None


# -- consume ------------------------------------------------------------------------------------


@main.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the first kept record.")
@click.option("--offset", type=click.IntRange(min=0), help="Start at this offset.")
@click.option("--partition", type=click.IntRange(min=0), help="Read only this partition.")
@click.option("--max", "max_records", type=click.IntRange(min=0), help="Stop after N records.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Stop after this many seconds without a new record.",
)
@data_option
def consume(
    topic: str,
    from_beginning: bool,
    offset: int | None,
    partition: int | None,
    max_records: int | None,
    timeout: float,
    data: Path | None,
) -> None:
    """Print TOPIC's records as JSON lines.

    Starts at the end of each partition (new records only) unless
    --from-beginning or --offset N is given; --offset applies to every
    partition read. Stops after --max records or --timeout idle seconds.
    """
    if from_beginning and offset is not None:
        raise click.UsageError("give either --from-beginning or --offset, not both")
    out = binary_stream("stdout")
    with open_log(resolve_data(data)) as log:
        description = log.describe(topic)
        if partition is None:
            numbers = [p.partition for p in description.partitions]
        else:
            log.partition(topic, partition)  # UnknownTopic names the missing partition
            numbers = [partition]
        partitions = {number: log.partition(topic, number) for number in numbers}
        positions: dict[int, int] = {}
        for number, part in partitions.items():
            if from_beginning:
                positions[number] = part.start_offset
            elif offset is not None:
                part.read(offset, max_records=1)  # OffsetOutOfRange says what is kept
                positions[number] = offset
            else:
                positions[number] = part.end_offset
        remaining = max_records
        idle_since = time.monotonic()
        while remaining is None or remaining > 0:
            printed = 0
            for number, part in partitions.items():
                if remaining is not None and remaining - printed <= 0:
                    break
                limit = None if remaining is None else remaining - printed
                batches = part.read_batches(positions[number], max_bytes=FETCH_MAX_BYTES)
                lines, positions[number] = format_batches(number, batches, positions[number], limit)
                if lines:
                    out.write(b"".join(lines))
                    printed += len(lines)
            if remaining is not None:
                remaining -= printed
            if printed:
                out.flush()
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= timeout:
                break
            else:
                time.sleep(POLL_INTERVAL_S)
        out.flush()


def format_batches(
    partition: int, batches: Sequence[RecordBatch], position: int, limit: int | None
) -> tuple[list[bytes], int]:
    """Encode the records at or after *position* as JSON lines, at most *limit* of them.

    Returns the lines and the offset to read next.
    """
    lines: list[bytes] = []
    for whole in batches:
        batch = whole.since(position)
        headers = batch.headers or [None] * len(batch)
        for i, record_offset in enumerate(batch.offsets):
            if limit is not None and len(lines) >= limit:
                return lines, position
            record: dict[str, Any] = {
                "partition": partition,
                "offset": record_offset,
                "timestamp": batch.timestamps[i],
                "key": batch.keys[i],
                "value": batch.values[i],
            }
            if headers[i] is not None:
                record["headers"] = headers[i]
            lines.append(dump_json_line(record))
            position = record_offset + 1
        if len(batch):
            position = max(position, batch.next_offset)
    return lines, position


def dump_json_line(obj: object) -> bytes:
    r"""Encode *obj* as one line of JSON, whatever msgpack gave back.

    Bytes become ``{"$bytes": text}`` when they are UTF-8, else
    ``{"$base64": ...}`` (as map keys: the bare text or base64); NaN and
    infinities become strings.

    >>> dump_json_line({"k": b"ab", "v": float("nan"), b"\xff": 1})
    b'{"k": {"$bytes": "ab"}, "v": "nan", "/w==": 1}\n'
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=to_json_safe)
    except (TypeError, ValueError):  # a bytes map key, or NaN
        text = json.dumps(to_json_safe(obj), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


def to_json_safe(obj: object) -> object:
    """Return *obj* with everything JSON cannot hold converted (see ``dump_json_line``).

    >>> to_json_safe({1: [b"x", float("inf")], "t": (1, 2)})
    {1: [{'$bytes': 'x'}, 'inf'], 't': [1, 2]}
    """
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        try:
            return {"$bytes": data.decode("utf-8")}
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(data).decode("ascii")}
    if isinstance(obj, dict):
        return {_json_key(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):  # msgpack's ExtType too: [code, data]
        return [to_json_safe(item) for item in obj]
    return repr(obj)


def _json_key(key: object) -> object:
    safe = to_json_safe(key)
    if isinstance(safe, dict) and len(safe) == 1 and {"$bytes", "$base64"} & safe.keys():
        return next(iter(safe.values()))
    if safe is None or isinstance(safe, str | int | float | bool):
        return safe
    return json.dumps(safe, ensure_ascii=False)
