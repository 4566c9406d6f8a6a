"""Make file-system changes durable: atomic replace of small files, directory fsync.

Blocking. Every function here is called with the owning partition's (or log's)
lock held, so there is one writer per file at a time. All I/O goes through the
``FileIO`` passed in (``fileio.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamflow.failpoint import failpoint

from .naming import TMP_SUFFIX

if TYPE_CHECKING:
    from pathlib import Path

    from .fileio import FileIO


def fsync_dir(files: FileIO, directory: Path) -> None:
    """Fsync *directory*, so that names created, renamed or removed in it persist.

    Blocking.

    Raises:
        FsyncFailed: if the fsync fails.
    """
    files.fsync_dir(directory)


def write_atomically(
    files: FileIO,
    path: Path,
    data: bytes,
    *,
    sync: bool = True,
    failpoint_name: str | None = None,
) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new file.

    Blocking. Writes ``<path>.tmp``, fsyncs it, renames it over *path* and
    fsyncs the directory (the last two fsyncs are skipped when *sync* is False,
    for files whose loss only costs a rebuild). *failpoint_name* is hit after
    the temporary file is written, before the rename.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    handle = files.open(tmp, create=True, truncate=True)
    try:
        files.pwrite(handle, [data], 0)
        if sync:
            files.fsync(handle)
    finally:
        files.close(handle)
    if failpoint_name is not None:
        failpoint(failpoint_name)
    files.rename(tmp, path)
    if sync:
        # fsync the directory too, or the rename can vanish in a power loss
        files.fsync_dir(path.parent)


def remove_quietly(files: FileIO, path: Path) -> bool:
    """Remove *path* if it exists; return whether it did.

    Blocking.
    """
    return files.unlink(path)
