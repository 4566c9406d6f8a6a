"""Route every segment, index and snapshot file operation through one small interface.

The storage engine never calls ``os`` for its data files directly: it calls a
``FileIO``. ``OS_FILES`` (the default) is the real operating system. Tests plug
in a simulated disk (``tests/reliability/simdisk.py``) that keeps fsynced and
un-fsynced bytes apart, "loses power", and fails chosen operations with
``ENOSPC`` or ``EIO``, so crash and fault handling can be checked without root.

Files are named by integer handles (file descriptors for ``OS_FILES``). A
handle is opened read-write; there is no file position: reads and writes name
their byte position. Blocking: every call does disk I/O.

A failed fsync is reported as ``FsyncFailed`` (an ``OSError``): after it the
kernel may already have dropped the dirty pages, so a retry that succeeds
proves nothing. Callers treat it as fatal for whatever the file belongs to.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class FsyncFailed(OSError):
    """An fsync (of a file or a directory) failed; its data may be lost already."""


class FileIO(Protocol):
    """The file operations the storage engine uses. Blocking; safe from many threads."""

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        """Open *path* read-write and return a handle.

        Raises:
            FileNotFoundError: if it does not exist and *create* is False.
        """

    def close(self, handle: int) -> None:
        """Close *handle*."""

    def size(self, handle: int) -> int:
        """Return the size in bytes of the open file."""

    def pread(self, handle: int, n: int, position: int) -> bytes:
        """Return up to *n* bytes from *position* (fewer at the end of the file)."""

    def pwrite(self, handle: int, parts: Sequence[bytes | memoryview], position: int) -> None:
        """Write all of *parts*, back to back, from *position*; raise on any shortfall."""

    def fsync(self, handle: int) -> None:
        """Make the file's contents durable."""

    def truncate(self, handle: int, size: int) -> None:
        """Cut (or extend with zeros) the file to *size* bytes."""

    def read_file(self, path: Path) -> bytes:
        """Return the whole contents of the (small) file *path*.

        Raises:
            FileNotFoundError: if it does not exist.
        """

    def rename(self, source: Path, target: Path) -> None:
        """Rename *source* over *target* atomically (same directory)."""

    def unlink(self, path: Path) -> bool:
        """Remove *path*; return False if it did not exist."""

    def fsync_dir(self, directory: Path) -> None:
        """Make the names created, renamed or removed in *directory* durable."""

    def listdir(self, directory: Path) -> list[str]:
        """Return the names in *directory*."""


class OsFiles:
    """``FileIO`` on the real operating system. Blocking; safe from many threads."""

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        """Open *path* read-write and return its file descriptor."""
        flags = os.O_RDWR | (os.O_CREAT if create else 0) | (os.O_TRUNC if truncate else 0)
        return os.open(path, flags, 0o644)

    def close(self, handle: int) -> None:
        """Close the file descriptor."""
        os.close(handle)

    def size(self, handle: int) -> int:
        """Return the file's size."""
        return os.fstat(handle).st_size

    def pread(self, handle: int, n: int, position: int) -> bytes:
        """Read up to *n* bytes at *position*."""
        return os.pread(handle, n, position)

    def pwrite(self, handle: int, parts: Sequence[bytes | memoryview], position: int) -> None:
        """Write every part from *position*, resuming after short writes."""
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            n = os.pwritev(handle, views, position)
            position += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def fsync(self, handle: int) -> None:
        """Fdatasync the file (size changes included); raise ``FsyncFailed`` on error."""
        try:
            os.fdatasync(handle)
        except OSError as exc:
            raise FsyncFailed(exc.errno, exc.strerror) from exc

    def truncate(self, handle: int, size: int) -> None:
        """Set the file's size."""
        os.ftruncate(handle, size)

    def read_file(self, path: Path) -> bytes:
        """Return the file's contents."""
        with open(path, "rb") as f:
            return f.read()

    def rename(self, source: Path, target: Path) -> None:
        """Rename with ``os.replace``."""
        os.replace(source, target)

    def unlink(self, path: Path) -> bool:
        """Remove the file if it exists."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def fsync_dir(self, directory: Path) -> None:
        """Fsync the directory; raise ``FsyncFailed`` on error."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise FsyncFailed(exc.errno, exc.strerror) from exc
        finally:
            os.close(fd)

    def listdir(self, directory: Path) -> list[str]:
        """Return ``os.listdir``."""
        return os.listdir(directory)


OS_FILES: Final[FileIO] = OsFiles()
