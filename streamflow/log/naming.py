"""Name the log's files and directories, and check topic names.

Layout of a log directory (see ``docs/log-format.md``)::

    <dir>/.lock                                   flock'd by the one process that has the log open
    <dir>/.staging/                               topics being created or deleted (cleared at open)
    <dir>/topics/<topic>/config.json              the topic's settings
    <dir>/topics/<topic>/<partition>/             one directory per partition, holding
        <base_offset:020d>.log                    record batches
        <base_offset:020d>.index                  sparse offset index (derived)
        <base_offset:020d>.timeindex              time index (derived)
        <offset:020d>.producers                   producer-state snapshot
        recovery-point                            offset known to be fsynced
        clean-shutdown                            written by a clean close, removed at open
    <dir>/state/                                  left free for the state layer
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from streamflow.errors import InvalidTopicName

if TYPE_CHECKING:
    from pathlib import Path

TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")
LOG_SUFFIX: Final = ".log"
INDEX_SUFFIX: Final = ".index"
TIME_INDEX_SUFFIX: Final = ".timeindex"
PRODUCERS_SUFFIX: Final = ".producers"
TMP_SUFFIX: Final = ".tmp"
TOPICS_DIR: Final = "topics"
STAGING_DIR: Final = ".staging"
LOCK_FILE: Final = ".lock"
CONFIG_FILE: Final = "config.json"
RECOVERY_POINT_FILE: Final = "recovery-point"
CLEAN_SHUTDOWN_FILE: Final = "clean-shutdown"


def check_topic_name(name: object) -> str:
    """Return *name* if it is a valid topic name, else raise ``InvalidTopicName``.

    A name is 1 to 200 characters from ``A-Z a-z 0-9 . _ -`` and is not ``.``
    or ``..``, so it can never leave the topics directory.

    >>> check_topic_name("payments.v2")
    'payments.v2'
    >>> check_topic_name("../x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    streamflow.errors.InvalidTopicName: invalid name '../x'
    """
    if not isinstance(name, str):
        raise InvalidTopicName(name, "not a string")
    if name in (".", ".."):
        raise InvalidTopicName(name, "reserved")
    if TOPIC_NAME.fullmatch(name) is None:
        reason = "too long" if len(name) > 200 else "bad character or empty"
        raise InvalidTopicName(name, reason)
    return name


def file_stem(offset: int) -> str:
    """Return the zero-padded 20-digit file stem for *offset*.

    >>> file_stem(42)
    '00000000000000000042'
    """
    return f"{offset:020d}"


def log_path(directory: Path, base_offset: int) -> Path:
    """Return the path of the segment file starting at *base_offset*."""
    return directory / (file_stem(base_offset) + LOG_SUFFIX)


def index_path(directory: Path, base_offset: int) -> Path:
    """Return the path of the offset index of the segment at *base_offset*."""
    return directory / (file_stem(base_offset) + INDEX_SUFFIX)


def time_index_path(directory: Path, base_offset: int) -> Path:
    """Return the path of the time index of the segment at *base_offset*."""
    return directory / (file_stem(base_offset) + TIME_INDEX_SUFFIX)


def producers_path(directory: Path, offset: int) -> Path:
    """Return the path of the producer-state snapshot taken at *offset*."""
    return directory / (file_stem(offset) + PRODUCERS_SUFFIX)


def parse_stem(file_name: str, suffix: str) -> int | None:
    """Return the offset a file name encodes, or None if it is not ``<20 digits><suffix>``.

    >>> parse_stem("00000000000000000042.log", ".log")
    42
    >>> parse_stem("42.log", ".log") is None
    True
    """
    if not file_name.endswith(suffix):
        return None
    stem = file_name[: -len(suffix)]
    if len(stem) != 20 or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)
