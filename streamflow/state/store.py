"""Keep one task's state stores and checkpoint in one LMDB environment.

Layout: the environment is a directory (``<state_dir>/<stage>-<partition>/``)
holding LMDB's ``data.mdb`` and ``lock.mdb``. Inside it, each state store is a
named database ``store:<name>`` and one more database, ``_meta``, holds the
checkpoint under the key ``checkpoint``. Keys and values are msgpack bytes
(``packb(obj, use_bin_type=True)``); the store itself only moves bytes, so
LMDB orders keys by their encoded bytes and a scan is deterministic. The
changelog carries these same bytes (``changelog`` module docstring), so a
restore writes what it fetches without decoding it.

Every write (state changes plus the checkpoint record) is one LMDB write
transaction run whole inside one call: LMDB ties a write transaction to its
thread, so callers reach ``write`` through
``trio.to_thread.run_sync(..., limiter=store.write_limiter)``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Final

import lmdb
import trio

from streamflow.errors import StateStoreError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from lmdb import _Database

    #: One store change: key bytes and value bytes (``None`` deletes the key).
    Change = tuple[bytes, bytes | None]

logger = logging.getLogger(__name__)

#: Initial LMDB map size: 1 GiB (sparse on disk; only used pages take space).
DEFAULT_MAP_SIZE: Final = 1 << 30
#: The map doubles on ``MapFullError`` up to this size, then writes fail clearly.
DEFAULT_MAX_MAP_SIZE: Final = 1 << 36
#: Few readers: one process per environment, short read transactions.
DEFAULT_MAX_READERS: Final = 8

_META_DB: Final = b"_meta"
_CHECKPOINT_KEY: Final = b"checkpoint"
_STORE_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,200}")


def validate_store_name(name: str) -> str:
    """Return *name* if it is a valid store name, else raise ``ValueError``.

    A store name becomes part of a topic name (``<pipeline>.<store>.changelog``),
    so it follows the topic naming rule.

    >>> validate_store_name("spend")
    'spend'
    """
    if not isinstance(name, str) or not _STORE_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(
            f"store name {name!r} is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -"
        )
    return name


class StateStore:
    """One LMDB environment with a named database per state store.

    Blocking. One writer at a time (``write_limiter``); reads are short read
    transactions and may run from any thread. Use as a context manager, or
    call ``close``.
    """

    def __init__(
        self,
        path: Path,
        env: lmdb.Environment,
        dbs: dict[str, _Database],
        meta: _Database,
        map_size: int,
        max_map_size: int,
    ) -> None:
        self.path = path
        self._env = env
        self._dbs = dbs
        self._meta = meta
        self.map_size = map_size
        self.max_map_size = max_map_size
        self.write_limiter = trio.CapacityLimiter(1)
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        stores: Sequence[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        max_readers: int = DEFAULT_MAX_READERS,
    ) -> StateStore:
        """Open (creating if missing) the environment at *path*. Blocking.

        Stale reader slots left by killed processes are cleared at once
        (``reader_check``), so ``max_readers`` can stay small.

        Args:
            path: The environment's directory.
            stores: The names of the state stores it holds.
            map_size: Initial map size in bytes.
            max_map_size: Largest size the map may grow to on ``MapFullError``
                (default: 64 GiB, or *map_size* if that is larger).
            max_readers: LMDB reader slots.

        Raises:
            ValueError: if a store name or a size is invalid.
            StateStoreError: if the files are not a usable LMDB environment
                (the caller may rebuild them from the changelog).
        """
        for name in stores:
            validate_store_name(name)
        if map_size < 1 << 16:
            raise ValueError(f"map_size={map_size} is too small: use at least 65536 bytes")
        limit = max(map_size, DEFAULT_MAX_MAP_SIZE if max_map_size is None else max_map_size)
        try:
            path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=len(stores) + 1,
                max_readers=max_readers,
                subdir=True,
                readahead=False,
                metasync=True,
                sync=True,
            )
        except (lmdb.Error, OSError) as exc:
            raise StateStoreError(
                f"{path}: cannot open the LMDB state ({type(exc).__name__}: {exc}); "
                "delete the directory to rebuild it from the changelog"
            ) from exc
        try:
            stale = env.reader_check()
            if stale:
                logger.info("%s: cleared %d stale LMDB reader slot(s)", path, stale)
            dbs = {name: env.open_db(b"store:" + name.encode()) for name in stores}
            meta = env.open_db(_META_DB)
        except lmdb.Error as exc:
            env.close()
            raise StateStoreError(
                f"{path}: the LMDB state is unusable ({type(exc).__name__}: {exc}); "
                "delete the directory to rebuild it from the changelog"
            ) from exc
        return cls(path, env, dbs, meta, env.info()["map_size"], limit)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the environment; further calls raise ``StateStoreError``. Blocking."""
        if not self._closed:
            self._closed = True
            self._env.close()

    @property
    def stores(self) -> list[str]:
        """The names of the stores in this environment."""
        return list(self._dbs)

    def _db(self, store: str) -> _Database:
        if self._closed:
            raise StateStoreError(f"{self.path}: the state store is closed")
        try:
            return self._dbs[store]
        except KeyError:
            raise StateStoreError(
                f"{self.path}: no store named {store!r}; open the environment with it"
            ) from None

    def get(self, store: str, key: bytes) -> bytes | None:
        """Return the bytes stored under *key* in *store*, or ``None``. Blocking."""
        db = self._db(store)
        try:
            with self._env.begin(db=db, buffers=False) as txn:
                value: bytes | None = txn.get(key)
                return value
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def scan(self, store: str) -> list[tuple[bytes, bytes]]:
        """Return every ``(key, value)`` of *store* in key-byte order. Blocking.

        The read transaction ends before this returns, so no reader slot stays
        taken while the caller works through the entries.
        """
        db = self._db(store)
        try:
            with self._env.begin(db=db, buffers=False) as txn:
                return list(txn.cursor().iternext(keys=True, values=True))
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def count(self, store: str) -> int:
        """Return the number of entries in *store*. Blocking."""
        db = self._db(store)
        with self._env.begin(db=db) as txn:
            entries: int = txn.stat(db)["entries"]
            return entries

    def digest(self, store: str) -> str:
        """Return a SHA-256 hex digest of *store*'s entries (same state, same digest). Blocking."""
        h = hashlib.sha256()
        for key, value in self.scan(store):
            h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
        return h.hexdigest()

    def read_checkpoint(self) -> bytes | None:
        """Return the encoded checkpoint record, or ``None`` if none was written. Blocking."""
        if self._closed:
            raise StateStoreError(f"{self.path}: the state store is closed")
        try:
            with self._env.begin(db=self._meta) as txn:
                value: bytes | None = txn.get(_CHECKPOINT_KEY)
                return value
        except lmdb.Error as exc:
            raise self._error("read", exc) from exc

    def write(
        self,
        changes: Mapping[str, Iterable[tuple[bytes, bytes | None]]],
        checkpoint: bytes | None = None,
        *,
        clear: Sequence[str] = (),
        forget_checkpoint: bool = False,
    ) -> None:
        """Apply *changes* and the *checkpoint* record in one transaction. Blocking.

        Either all of it is durable when this returns, or (after a crash or an
        error) none of it. Run it on a worker thread with ``write_limiter``.

        Args:
            changes: Per store, ``(key, value)`` pairs; a ``None`` value deletes.
            checkpoint: The encoded checkpoint to store with them, if any.
            clear: Stores to empty first (a rebuild starts from nothing).
            forget_checkpoint: Delete the stored checkpoint (a rebuild in
                progress must not look like a valid state after a crash).

        Raises:
            StateStoreError: if the map is full at ``max_map_size`` (naming the
                size), or LMDB fails (disk full, I/O error).
        """
        dbs = {store: self._db(store) for store in changes}
        cleared = [self._db(store) for store in clear]
        # Materialise once: a retry after growing the map replays the same changes.
        batches = [(dbs[store], list(pairs)) for store, pairs in changes.items()]
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for db in cleared:
                        txn.drop(db, delete=False)
                    for db, pairs in batches:
                        _apply(txn, db, pairs)
                    if forget_checkpoint:
                        txn.delete(_CHECKPOINT_KEY, db=self._meta)
                    if checkpoint is not None:
                        txn.put(_CHECKPOINT_KEY, checkpoint, db=self._meta)
                return
            except lmdb.MapFullError as exc:
                if self.map_size >= self.max_map_size:
                    raise StateStoreError(
                        f"{self.path}: the LMDB map is full at map_size={self.map_size} bytes "
                        f"(max_map_size={self.max_map_size}); nothing of this checkpoint was "
                        "written: raise max_map_size or free state, then restart"
                    ) from exc
                self._grow()
            except lmdb.Error as exc:
                raise self._error("write", exc) from exc

    def _grow(self) -> None:
        new_size = min(self.map_size * 2, self.max_map_size)
        # No transaction of this environment is open here: writes are
        # serialised and reads end inside each call.
        self._env.set_mapsize(new_size)
        logger.info("%s: LMDB map grown from %d to %d bytes", self.path, self.map_size, new_size)
        self.map_size = new_size

    def _error(self, action: str, exc: lmdb.Error) -> StateStoreError:
        return StateStoreError(
            f"{self.path}: LMDB {action} failed ({type(exc).__name__}: {exc}); the last "
            "checkpoint is intact: fix the cause (disk space, permissions) and restart, or "
            "delete the directory to rebuild it from the changelog"
        )


def _apply(txn: lmdb.Transaction, db: _Database, pairs: list[Change]) -> None:
    """Put and delete *pairs* in order in *db* (a ``None`` value deletes). Blocking.

    Puts go through one ``putmulti`` call (a loop in C) when every key is
    distinct, so the order of puts and deletes cannot matter; else pair by pair.
    """
    if len({key for key, _ in pairs}) < len(pairs):
        for key, value in pairs:
            if value is None:
                txn.delete(key, db=db)
            else:
                txn.put(key, value, db=db)
        return
    puts = [(key, value) for key, value in pairs if value is not None]
    if len(puts) < len(pairs):
        for key, value in pairs:
            if value is None:
                txn.delete(key, db=db)
    if puts:
        txn.cursor(db=db).putmulti(puts)
