"""Define ``streamflow topics``: create, list, describe and delete topics."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import click

from .app import data_option, main, open_log, resolve_data
from .records import to_json_safe

if TYPE_CHECKING:
    from pathlib import Path


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
