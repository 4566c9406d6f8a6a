"""Make file-system changes durable: atomic replace of small files, directory fsync.

Blocking. Every function here is called with the owning partition's (or log's)
lock held, so there is one writer per file at a time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .naming import TMP_SUFFIX

if TYPE_CHECKING:
    from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Fsync *directory*, so that names created, renamed or removed in it persist.

    Blocking.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new file.

    Blocking. Writes ``<path>.tmp``, fsyncs it, renames it over *path* and
    fsyncs the directory (the last two fsyncs are skipped when *sync* is False,
    for files whose loss only costs a rebuild).
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        # fsync the directory too, or the rename can vanish in a power loss
        fsync_dir(path.parent)


def remove_quietly(path: Path) -> bool:
    """Remove *path* if it exists; return whether it did.

    Blocking.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
