"""Run the ``streamflow`` command line.

Every log command works on an embedded log directory (``--data DIR``, default
``./data``, or ``STREAMFLOW_DATA``), given before or after the command name::

    streamflow topics create payments --partitions 4
    streamflow topics list | describe NAME | delete NAME
    echo '{"user_id": "u1", "amount": 9.5}' | streamflow produce payments --key-field user_id
    streamflow consume payments --from-beginning --max 10

``produce`` reads one JSON value per line from stdin. ``consume`` prints one
JSON object per record (``partition``, ``offset``, ``timestamp``, ``key``,
``value``, and ``headers`` when present). Like ``kafka-console-consumer`` it
starts at the end of each partition unless ``--from-beginning`` or
``--offset N`` says otherwise, and it stops on its own: after ``--max`` records,
or once no new record has arrived for ``--timeout`` seconds (default 1). A log
directory is open in one process at a time, so an embedded consumer only sees
what is already there; tailing a live topic takes a broker.

``broker`` serves a log directory over TCP; ``run JOB.py --broker DIR_OR_URL``
runs the pipeline a job file defines; ``describe JOB.py`` prints its plan.

Errors print one line, ``error: ...``, on stderr: exit status 2 for a usage
mistake, 1 for anything else (a streamflow error, bad input, an I/O failure).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar

import click

from streamflow.errors import StreamflowError

if TYPE_CHECKING:
    from streamflow.log import Log, Message, RecordBatch

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA: Final = "data"
READ_CHUNK_BYTES: Final = 1 << 20
POLL_INTERVAL_S: Final = 0.05
FETCH_MAX_BYTES: Final = 1 << 20


class CommandError(click.ClickException):
    """A command failed; shown as one ``error: ...`` line, exit status 1."""

    def show(self, file: Any = None) -> None:
        """Print the one-line error to stderr."""
        click.echo(f"error: {self.format_message()}", err=True)


class StreamflowGroup(click.Group):
    """A click group that reports every failure as one line, without a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit 2 on a usage error, 1 on any other error.

        Blocking.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except (StreamflowError, OSError) as exc:
            # (click itself ends a command whose reader went away, `| head`, quietly)
            _fail(_describe_error(exc), 1)
        except click.Abort:
            # Ctrl-C: no traceback, the conventional status for SIGINT.
            sys.exit(130)
        sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def data_option(func: F) -> F:
    """Add ``--data DIR`` to a command, so it may follow the command name too."""
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Log directory (default: the group's --data, ./data).",
    )(func)


def resolve_data(data: Path | None) -> Path:
    """Return the log directory given to the command, else the group's ``--data``."""
    if data is not None:
        return data
    ctx = click.get_current_context()
    root = ctx.find_root()
    chosen = root.params.get("data")
    return Path(chosen) if chosen is not None else Path(DEFAULT_DATA)


@contextlib.contextmanager
def open_log(data: Path, *, create: bool = False) -> Iterator[Log]:
    """Open the embedded log in *data*; unless *create*, the directory must exist.

    Blocking.

    Raises:
        CommandError: if *data* does not exist and *create* is false.
        LogLocked: if another process holds the directory.
    """
    from streamflow.log import Log

    if not create and not data.is_dir():
        raise CommandError(
            f"no log directory at {str(data)!r}; pass --data DIR, or create a topic first "
            "with 'streamflow topics create NAME'"
        )
    with Log.open(data) as log:
        yield log


@click.group(cls=StreamflowGroup)
@click.version_option(package_name="streamflow-trio")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    envvar="STREAMFLOW_DATA",
    help="Log directory of the embedded log (env: STREAMFLOW_DATA).",
)
def main(data: Path) -> None:
    """Streamflow: durable topics, pipelines and state in one package."""


# -- topics -------------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """Create, list, describe and delete topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--retention-ms", type=int, help="Delete segments older than this (default 7 days).")
@click.option("--retention-bytes", type=int, help="Keep at most this many bytes per partition.")
@click.option("--segment-bytes", type=int, help="Roll a new segment at this size (>= 4096).")
@click.option("--segment-ms", type=int, help="Roll a new segment at this age.")
@click.option(
    "--cleanup-policy",
    type=click.Choice(["delete", "compact", "compact,delete"]),
    help="delete (retention), compact (newest per key) or both.",
)
@click.option("--delete-retention-ms", type=int, help="Keep tombstones this long when compacting.")
@click.option(
    "--fsync",
    type=click.Choice(["always", "interval", "never"]),
    help="When appends reach the disk (default interval).",
)
@click.option("--flush-ms", type=int, help="fsync at most this often with --fsync interval.")
@click.option("--max-record-bytes", type=int, help="Refuse records larger than this.")
@data_option
def topics_create(name: str, data: Path | None, **settings: Any) -> None:
    """Create topic NAME with the given settings (the others keep their defaults)."""
    given = {key: value for key, value in settings.items() if value is not None}
    with open_log(resolve_data(data), create=True) as log:
        log.create_topic(name, **given)
    partitions = given["partitions"]
    noun = "partition" if partitions == 1 else "partitions"
    click.echo(f"created topic {name} ({partitions} {noun})")


@topics.command("list")
@data_option
def topics_list(data: Path | None) -> None:
    """Print every topic name, one per line."""
    with open_log(resolve_data(data)) as log:
        names = sorted(log.topics())
    for name in names:
        click.echo(name)


@topics.command("describe")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@data_option
def topics_describe(name: str, as_json: bool, data: Path | None) -> None:
    """Print NAME's partitions (offsets, sizes) and its settings."""
    with open_log(resolve_data(data)) as log:
        description = log.describe(name)
    if as_json:
        payload = {
            "name": description.name,
            "config": description.config,
            "partitions": [dataclasses.asdict(p) for p in description.partitions],
        }
        click.echo(json.dumps(to_json_safe(payload), sort_keys=True))
        return
    total = sum(p.size_bytes for p in description.partitions)
    count = len(description.partitions)
    click.echo(f"topic {description.name}: {count} partitions, {format_bytes(total)} on disk\n")
    click.echo("PARTITION  START_OFFSET    END_OFFSET    SIZE_BYTES")
    for p in description.partitions:
        click.echo(
            f"{p.partition:>9}  {p.start_offset:>12}  {p.end_offset:>12}  {p.size_bytes:>12}"
        )
    click.echo("\nconfig:")
    width = max((len(key) for key in description.config), default=0)
    for key in sorted(description.config):
        value = description.config[key]
        click.echo(f"  {key.ljust(width)}  {value}{explain_setting(key, value)}")


@topics.command("delete")
@click.argument("name")
@data_option
def topics_delete(name: str, data: Path | None) -> None:
    """Delete topic NAME and all its records."""
    with open_log(resolve_data(data)) as log:
        log.delete_topic(name)
    click.echo(f"deleted topic {name}")


def format_bytes(size: int) -> str:
    """Return *size* in the largest binary unit that keeps it >= 1.

    >>> format_bytes(512), format_bytes(1536), format_bytes(1 << 30)
    ('512 B', '1.5 KiB', '1.0 GiB')
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def explain_setting(key: str, value: object) -> str:
    """Return a readable hint for a duration or size setting, or ``""``.

    >>> explain_setting("retention_ms", 604_800_000), explain_setting("segment_bytes", 1 << 30)
    ('  (7 days)', '  (1.0 GiB)')
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return ""
    if key.endswith("_bytes") and value >= 1024:
        return f"  ({format_bytes(value)})"
    if key.endswith("_ms") and value >= 1000:
        for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
            if value >= size and value % size == 0:
                plural = "s" if value // size > 1 else ""
                return f"  ({value // size} {unit}{plural})"
        return f"  ({value / 1000:g} s)"
    return ""


# -- produce ------------------------------------------------------------------------------------


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
    stdin = click.get_binary_stream("stdin")
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
    out = click.get_binary_stream("stdout")
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


# -- broker, run, describe (imported on use, so `streamflow topics ...` starts fast) ----------


@main.command()
@data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=7070, show_default=True)
@click.option(
    "--token",
    envvar="STREAMFLOW_TOKEN",
    help="Shared secret clients must present (env: STREAMFLOW_TOKEN).",
)
def broker(data: Path | None, host: str, port: int, token: str | None) -> None:
    """Serve the log directory over TCP until SIGINT or SIGTERM."""
    from streamflow.log.broker import main_broker

    def ready(bound: int) -> None:
        click.echo(f"listening on {host}:{bound}")

    main_broker(resolve_data(data), host, port, token or None, ready=ready)


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--broker",
    "target",
    required=True,
    help="Log directory (embedded) or tcp://HOST:PORT of a broker.",
)
@click.option("--until-idle", is_flag=True, help="Return once all input is processed.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--processing",
    type=click.Choice(["at_least_once", "exactly_once"]),
    default="at_least_once",
    show_default=True,
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State stores of a job on a broker (default ./streamflow-state/PIPELINE).",
)
def run(
    job: Path,
    target: str,
    until_idle: bool,
    processes: int,
    processing: str,
    state_dir: Path | None,
) -> None:
    """Run the pipeline defined in JOB (a Python file with a module-level ``pipeline``)."""
    from streamflow.runtime import run_job_file

    options: dict[str, Any] = {"processing": processing}
    if state_dir is not None:
        options["state_dir"] = state_dir
    run_job_file(job, target, until_idle=until_idle, processes=processes, **options)


@main.command("describe")
@click.argument("job", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot"]),
    default="text",
    show_default=True,
)
def describe_job(job: Path, fmt: Literal["text", "mermaid", "dot"]) -> None:
    """Print the stages, topics and state stores of the pipeline in JOB."""
    from streamflow.pipeline import describe, load_job

    click.echo(describe(load_job(job), format=fmt))


if __name__ == "__main__":
    main(prog_name="streamflow")
