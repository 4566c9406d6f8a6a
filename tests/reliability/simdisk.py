"""Simulate a disk that loses power and fails: a ``FileIO`` for crash and fault tests.

``SimDisk`` does every operation on the real files under a test directory (so
the rest of the code, locks and ``mkdir`` included, just works) and keeps a
shadow model of what a power loss would leave, SQLite ``test6``-style:

* per file (inode): the *durable* bytes as of its last fsync, and the writes
  and truncations made since (*volatile*);
* per directory: the *durable* name -> inode map as of its last directory
  fsync, and the creates, renames and unlinks made since.

``crash()`` "pulls the plug": every file keeps its durable bytes plus a random
prefix of its volatile operations (in ``reorder`` mode a random subset, which
makes holes), the first dropped write optionally torn (a prefix of it, zero
filled or garbage); every directory keeps its durable names plus a random
prefix of its volatile operations (none in ``drop_dir_ops`` mode). The real
files are rewritten to that state and every open handle dies.

The error schedule makes the n-th operation of the chosen kinds raise
``OSError(errno)``, once or until ``heal()``; fsyncs raise ``FsyncFailed``.
Files the model has not seen yet are taken as durable as they are.
"""

from __future__ import annotations

import errno as errno_codes
import os
import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from streamflow.log.fileio import FsyncFailed

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

KINDS: Final = ("create", "pwrite", "fsync", "truncate", "rename", "unlink", "fsync_dir")
TORN_MODES: Final = ("none", "prefix", "zeros", "garbage")


@dataclass(eq=False)
class _Inode:
    # None until first needed: the file is durable as it is on disk
    durable: bytearray | None
    # ("write", position, data) or ("truncate", size, b"")
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)

    def load(self, path: str | Path) -> None:
        """Take the durable bytes from the real file, before anything changes it."""
        if self.durable is None:
            with open(path, "rb") as f:
                self.durable = bytearray(f.read())


@dataclass(eq=False)
class _Dir:
    durable: dict[str, _Inode]
    live: dict[str, _Inode]
    # ("create", name, "", inode) / ("rename", source, target, None) / ("unlink", name, "", None)
    pending: list[tuple[str, str, str, _Inode | None]] = field(default_factory=list)


@dataclass
class Fault:
    """Fail the *at*-th operation (counting from 1) whose kind is in *kinds*."""

    at: int
    kinds: frozenset[str]
    code: int = errno_codes.ENOSPC
    persistent: bool = False
    #: a failing write first writes a random prefix (True) or this many bytes (an int)
    partial: bool | int = True
    seen: int = 0
    fired: int = 0


def _apply(content: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, position, data = op
    if kind == "truncate":
        if position < len(content):
            del content[position:]
        else:
            content.extend(bytes(position - len(content)))
        return
    end = position + len(data)
    if len(content) < position:
        content.extend(bytes(position - len(content)))
    content[position:end] = data


class SimDisk:
    """A ``FileIO`` with power loss and an error schedule (module docstring).

    Safe from many threads (one lock around every operation). *seed* drives
    every random choice of ``crash()``.
    """

    def __init__(self, seed: int = 0, *, reorder: bool = False, drop_dir_ops: bool = False) -> None:
        self.rng = random.Random(seed)
        self.reorder = reorder
        self.drop_dir_ops = drop_dir_ops
        self.ops: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.faults: list[Fault] = []
        self.crashes = 0
        self._lock = threading.RLock()
        self._dirs: dict[str, _Dir] = {}
        self._handles: dict[int, tuple[int, _Inode]] = {}
        self._next_handle = 1

    # -- the model ----------------------------------------------------------------------------

    def _dir(self, directory: Path) -> _Dir:
        key = os.fspath(directory)
        found = self._dirs.get(key)
        if found is None:
            names: dict[str, _Inode] = {}
            for entry in os.scandir(key):
                if entry.is_file(follow_symlinks=False):
                    names[entry.name] = _Inode(None)
            found = self._dirs[key] = _Dir(dict(names), names)
        return found

    def _check(self, kind: str, handle_data: bytes | None = None) -> tuple[int, int] | None:
        """Raise if the schedule says so; return ``(bytes, errno)`` for a partial write."""
        self.ops[kind] += 1
        for fault in self.faults:
            if kind not in fault.kinds:
                continue
            fault.seen += 1
            if fault.seen == fault.at or (fault.persistent and fault.seen > fault.at):
                fault.fired += 1
                if kind in ("fsync", "fsync_dir"):
                    raise FsyncFailed(fault.code, os.strerror(fault.code))
                if handle_data is not None and fault.partial is not False:
                    if fault.partial is True and len(handle_data) > 1:
                        return self.rng.randrange(1, len(handle_data)), fault.code
                    if fault.partial is not True:
                        return min(int(fault.partial), len(handle_data)), fault.code
                raise OSError(fault.code, os.strerror(fault.code))
        return None

    def _handle(self, handle: int) -> tuple[int, _Inode]:
        found = self._handles.get(handle)
        if found is None:
            raise OSError(errno_codes.EBADF, "stale handle (closed, or lost in a crash)")
        return found

    # -- FileIO -------------------------------------------------------------------------------

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        """Open *path* read-write; creating it is an operation of kind ``create``."""
        with self._lock:
            d = self._dir(path.parent)
            inode = d.live.get(path.name)
            if inode is None and os.path.isfile(path):  # made outside the model
                inode = d.live[path.name] = d.durable[path.name] = _Inode(None)
            if inode is None:
                if not create:
                    raise FileNotFoundError(errno_codes.ENOENT, "no such file", str(path))
                self._check("create")
                inode = _Inode(bytearray())
                d.live[path.name] = inode
                d.pending.append(("create", path.name, "", inode))
            flags = os.O_RDWR | (os.O_CREAT if create else 0) | (os.O_TRUNC if truncate else 0)
            if truncate:
                inode.load(path)
            fd = os.open(path, flags, 0o644)
            if truncate:
                inode.pending.append(("truncate", 0, b""))
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = (fd, inode)
            return handle

    def close(self, handle: int) -> None:
        """Close *handle* (a stale one is ignored)."""
        with self._lock:
            found = self._handles.pop(handle, None)
            if found is not None:
                os.close(found[0])

    def size(self, handle: int) -> int:
        """Return the file's current size."""
        with self._lock:
            return os.fstat(self._handle(handle)[0]).st_size

    def pread(self, handle: int, n: int, position: int) -> bytes:
        """Read from the current (volatile) contents."""
        with self._lock:
            return os.pread(self._handle(handle)[0], n, position)

    def pwrite(self, handle: int, parts: Sequence[bytes | memoryview], position: int) -> None:
        """Write *parts*; a scheduled fault may write a prefix first, then raise."""
        with self._lock:
            fd, inode = self._handle(handle)
            data = b"".join(bytes(p) for p in parts)
            short = self._check("pwrite", data)
            if short is not None:
                data = data[: short[0]]
            self._load_fd(fd, inode)
            os.pwrite(fd, data, position)
            inode.pending.append(("write", position, data))
            if short is not None:
                raise OSError(short[1], os.strerror(short[1]))

    def fsync(self, handle: int) -> None:
        """Make the file's volatile operations durable."""
        with self._lock:
            _, inode = self._handle(handle)
            self._check("fsync")
            if inode.pending:
                assert inode.durable is not None
                for op in inode.pending:
                    _apply(inode.durable, op)
                inode.pending.clear()

    def truncate(self, handle: int, size: int) -> None:
        """Set the file's size (volatile until fsync)."""
        with self._lock:
            fd, inode = self._handle(handle)
            self._check("truncate")
            self._load_fd(fd, inode)
            os.ftruncate(fd, size)
            inode.pending.append(("truncate", size, b""))

    def read_file(self, path: Path) -> bytes:
        """Return the current contents of *path*."""
        with self._lock, open(path, "rb") as f:
            return f.read()

    def rename(self, source: Path, target: Path) -> None:
        """Rename within one directory (volatile until the directory is fsynced)."""
        with self._lock:
            if source.parent != target.parent:
                raise OSError(errno_codes.EXDEV, "SimDisk renames within one directory only")
            d = self._dir(source.parent)
            self._check("rename")
            inode = d.live.pop(source.name, None)
            if inode is None:  # made outside the model: durable as it is now
                inode = _Inode(None)
            inode.load(source)
            replaced = d.live.get(target.name)
            if replaced is not None:
                replaced.load(target)
            os.replace(source, target)
            d.live[target.name] = inode
            d.pending.append(("rename", source.name, target.name, inode))

    def unlink(self, path: Path) -> bool:
        """Remove *path* (volatile until the directory is fsynced)."""
        with self._lock:
            d = self._dir(path.parent)
            if path.name not in d.live and not os.path.lexists(path):
                return False
            self._check("unlink")
            inode = d.live.get(path.name)
            if inode is not None:
                inode.load(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            d.live.pop(path.name, None)
            d.pending.append(("unlink", path.name, "", None))
            return True

    def fsync_dir(self, directory: Path) -> None:
        """Make the directory's names durable."""
        with self._lock:
            d = self._dir(directory)
            self._check("fsync_dir")
            d.durable = dict(d.live)
            d.pending.clear()

    def listdir(self, directory: Path) -> list[str]:
        """Return the names in *directory*."""
        with self._lock:
            return os.listdir(directory)

    def _load_fd(self, fd: int, inode: _Inode) -> None:
        if inode.durable is None:
            inode.durable = bytearray(os.pread(fd, os.fstat(fd).st_size, 0))

    # -- faults -------------------------------------------------------------------------------

    def fail(
        self,
        at: int,
        kinds: Sequence[str] = KINDS,
        *,
        code: int = errno_codes.ENOSPC,
        persistent: bool = False,
        partial: bool | int = True,
    ) -> Fault:
        """Schedule a fault: the *at*-th next operation of *kinds* raises ``OSError(code)``.

        With *persistent*, every later operation of those kinds fails too, until
        ``heal()``. With *partial*, a failing write first writes a random prefix.
        """
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"fail: unknown operation kinds {sorted(unknown)}; use {KINDS}")
        fault = Fault(at, frozenset(kinds), code, persistent, partial)
        self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Drop every scheduled fault ("space returns")."""
        with self._lock:
            self.faults.clear()

    # -- power loss ---------------------------------------------------------------------------

    def _survivor(self, inode: _Inode, torn: str) -> bytes:
        assert inode.durable is not None
        content = bytearray(inode.durable)
        ops = inode.pending
        if self.reorder:
            kept = [op for op in ops if self.rng.random() < 0.5]
            cut = len(ops)
            for op in kept:
                _apply(content, op)
        else:
            cut = self.rng.randint(0, len(ops))
            for op in ops[:cut]:
                _apply(content, op)
        if cut < len(ops) and ops[cut][0] == "write" and torn != "none":
            _, position, data = ops[cut]
            n = self.rng.randint(0, len(data))
            if torn == "zeros":
                part = bytes(len(data))
            elif torn == "garbage":
                part = data[:n] + self.rng.randbytes(len(data) - n)
            else:
                part = data[:n]
            _apply(content, ("write", position, part))
        return bytes(content)

    def crash(self, torn: str | None = None) -> dict[str, int]:
        """Lose power: rewrite the real files to what survives; every handle dies.

        *torn* picks what happens to the first dropped write (``TORN_MODES``;
        random when None). Returns counts of what was lost, for the report.
        """
        with self._lock:
            for fd, _ in self._handles.values():
                os.close(fd)
            self._handles.clear()
            lost = {"dir_ops": 0, "files_changed": 0}
            contents: dict[int, bytes] = {}
            for key, d in self._dirs.items():
                if not os.path.isdir(key):
                    continue  # renamed or removed as a whole, outside the model
                names = dict(d.durable)
                keep = 0 if self.drop_dir_ops else self.rng.randint(0, len(d.pending))
                lost["dir_ops"] += len(d.pending) - keep
                for kind, name, target, inode in d.pending[:keep]:
                    if kind == "create" and inode is not None:
                        names[name] = inode
                    elif kind == "rename" and inode is not None:
                        names.pop(name, None)
                        names[target] = inode
                    elif kind == "unlink":
                        names.pop(name, None)
                for name in set(d.live) | set(d.durable) | set(names):
                    survivor, current = names.get(name), d.live.get(name)
                    if survivor is current and survivor is not None and not survivor.pending:
                        continue  # the real file already is what survives
                    path = os.path.join(key, name)
                    if survivor is not None and id(survivor) not in contents:
                        mode = torn or self.rng.choice(TORN_MODES)
                        contents[id(survivor)] = self._survivor(survivor, mode)
                        lost["files_changed"] += 1
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    if survivor is not None:
                        with open(path, "wb") as f:
                            f.write(contents[id(survivor)])
            self._dirs.clear()
            self.crashes += 1
            return lost
