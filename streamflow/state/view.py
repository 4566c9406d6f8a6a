"""Cache one store's state in memory and collect its changes for the next checkpoint.

``CachedView`` implements the operators' ``StateView``: reads hit the cache,
then LMDB; writes land in the cache and mark the key dirty. A checkpoint takes
the dirty entries (``take_changes``, which encodes each value once), appends
those bytes to the changelog, commits the same bytes to LMDB, and then lets the
view drop clean entries (``evict``). Nothing reaches LMDB between checkpoints,
so the hot path is a dict operation and a msgpack encoding of the key.
Operators that touch a value per record keep their values themselves and hand
the changed ones over once per checkpoint (``before_take``); a view made over
an empty store never reads LMDB for a key it has not cached, until it evicts
something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack

from streamflow.errors import NotSerializable, StateStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .store import StateStore

#: Clean entries kept in memory after a checkpoint; more are dropped.
DEFAULT_MAX_CACHED: Final = 200_000

_ABSENT: Final = object()


def encode(obj: Any, what: str = "value") -> bytes:
    """Encode *obj* with msgpack, raising ``NotSerializable`` naming its type.

    >>> decode(encode(["user", 7]))
    ['user', 7]
    """
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise NotSerializable(obj, what) from exc


def decode(data: bytes) -> Any:
    """Decode bytes written by ``encode`` (tuples come back as lists).

    >>> decode(encode({1: "a"}))
    {1: 'a'}
    """
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(frozen=True, slots=True)
class Changes:
    """The dirty entries of one store, taken for a checkpoint.

    ``encoded[i]`` is the ``(key bytes, value bytes or None)`` pair that goes,
    as it is, to the changelog and to LMDB (``None`` deletes);
    ``keys[i]``/``values[i]`` are the same change as objects, for inspection.
    """

    store: str
    keys: list[Any]
    values: list[Any]
    encoded: list[tuple[bytes, bytes | None]]

    def __len__(self) -> int:
        return len(self.keys)

    def columns(self) -> tuple[list[bytes], list[bytes | None]]:
        """Return the encoded keys and values as two lists (a changelog append).

        >>> Changes("s", ["k", "n"], [None, 1], [(b"K", None), (b"N", b"V")]).columns()
        ([b'K', b'N'], [None, b'V'])
        """
        return [kb for kb, _ in self.encoded], [vb for _, vb in self.encoded]


class CachedView:
    """A write-back cache over one LMDB store; implements ``StateView``.

    One task at a time (not thread-safe). Values are returned as stored, not
    copied: mutate a value only if you ``put`` it again. A ``None`` value is
    the same as ``delete``. Keys and values must be msgpack-serialisable;
    values are encoded at the checkpoint, where ``NotSerializable`` names the
    store and the key.
    """

    def __init__(self, store: StateStore, name: str, *, max_cached: int = DEFAULT_MAX_CACHED):
        self._store = store
        self.name = name
        self._max_cached = max_cached
        # key bytes -> value object, or _ABSENT when LMDB has no such key
        self._cache: dict[bytes, Any] = {}
        # key bytes -> key object, for every key changed since the last take_changes
        self._dirty: dict[bytes, Any] = {}
        # One packer per view, reused for every key: msgpack.packb builds a new one per call.
        self._packer = msgpack.Packer(use_bin_type=True)
        self._flushers: list[Callable[[], None]] = []
        # True while the cache holds every key LMDB has (the store was empty when
        # the view was made, and nothing was evicted since): a miss is then an
        # absent key, with no LMDB read. A fresh task reads LMDB for no key.
        self._complete = store.count(name) == 0

    def before_take(self, flush: Callable[[], None]) -> None:
        """Call *flush* before the changes are taken (a checkpoint) or the entries iterated.

        An operator that keeps its hottest values itself (a window's
        accumulators, say) registers a *flush* that ``put``s them, so that they
        reach the view once per checkpoint rather than once per batch.
        """
        self._flushers.append(flush)

    def _flush(self) -> None:
        for flush in self._flushers:
            flush()

    def _key(self, key: Any) -> bytes:
        try:
            kb: bytes = self._packer.pack(key)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotSerializable(key, "key") from exc
        return kb

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value stored under *key*, or *default*."""
        if self._flushers:
            # An operator's own cache may hold a newer value (see before_take).
            self._flush()
        return self.get_own(key, default)

    def get_own(self, key: Any, default: Any = None) -> Any:
        """Return the value stored under *key*, or *default*, without flushing operators first.

        For an operator that keeps values itself (see ``before_take``) and reads
        a key its cache does not hold: there is no newer value of that key to
        flush, and flushing all the others on every such read would cost a
        ``put`` per changed key per read.
        """
        kb = self._key(key)
        value = self._cache.get(kb, _ABSENT)
        if value is _ABSENT and kb not in self._cache:
            if self._complete:
                value = _ABSENT
            else:
                data = self._store.get(self.name, kb)
                value = _ABSENT if data is None else self._decode(data, key)
            self._cache[kb] = value
        return default if value is _ABSENT else value

    def put(self, key: Any, value: Any) -> None:
        """Store *value* under *key* (``None`` deletes the key)."""
        kb = self._key(key)
        self._cache[kb] = _ABSENT if value is None else value
        self._dirty[kb] = key

    def delete(self, key: Any) -> None:
        """Remove *key* (a tombstone in the changelog)."""
        kb = self._key(key)
        self._cache[kb] = _ABSENT
        self._dirty[kb] = key

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Iterate over every entry, with uncommitted changes applied. Blocking (reads LMDB).

        Entries come in encoded-key order for committed keys, then the keys
        created since the last checkpoint.
        """
        self._flush()
        seen: set[bytes] = set()
        for kb, vb in self._store.scan(self.name):
            seen.add(kb)
            if kb in self._dirty:
                value = self._cache[kb]
                if value is not _ABSENT:
                    yield decode(kb), value
            else:
                yield decode(kb), self._decode(vb, kb)
        for kb in list(self._dirty):
            if kb not in seen:
                value = self._cache[kb]
                if value is not _ABSENT:
                    yield decode(kb), value

    @property
    def dirty_count(self) -> int:
        """The number of keys changed since the last checkpoint."""
        self._flush()
        return len(self._dirty)

    def take_changes(self) -> Changes:
        """Encode and hand over the dirty entries; the view starts a new change set.

        Raises:
            NotSerializable: if a value cannot be encoded (the change set is kept).
        """
        self._flush()
        keys: list[Any] = []
        values: list[Any] = []
        encoded: list[tuple[bytes, bytes | None]] = []
        pack = self._packer.pack
        for kb, key in self._dirty.items():
            value = self._cache[kb]
            if value is _ABSENT:
                keys.append(key)
                values.append(None)
                encoded.append((kb, None))
            else:
                try:
                    vb = pack(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise NotSerializable(
                        value, f"value of key {key!r} in store {self.name!r}"
                    ) from exc
                keys.append(key)
                values.append(value)
                encoded.append((kb, vb))
        self._dirty = {}
        return Changes(self.name, keys, values, encoded)

    def give_back(self, changes: Changes) -> None:
        """Mark the keys of a failed checkpoint's *changes* dirty again."""
        for (kb, _), key in zip(changes.encoded, changes.keys, strict=True):
            self._dirty.setdefault(kb, key)

    def evict(self) -> None:
        """Drop clean entries when the cache is over its limit (after a checkpoint)."""
        if len(self._cache) > self._max_cached:
            self._cache = {kb: self._cache[kb] for kb in self._dirty}
            self._complete = False

    def reset(self) -> None:
        """Forget everything cached (after the store was rebuilt underneath)."""
        self._cache = {}
        self._dirty = {}
        self._complete = False

    def _decode(self, data: bytes, key: object) -> Any:
        try:
            return decode(data)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise StateStoreError(
                f"{self._store.path}: store {self.name!r} holds an undecodable value for key "
                f"{key!r}; delete the state directory to rebuild it from the changelog"
            ) from exc
