"""Keep a stateful operator's per-key values in memory between checkpoints.

An operator that reads and writes one value per record (``process``,
``aggregate``) would otherwise pay a ``StateView.get`` and ``put`` per record,
each encoding the key with msgpack. ``KeyCache`` holds one ``Entry`` per key,
by *key id* (the key itself when it is a ``str`` or an ``int`` msgpack can
store, else its msgpack bytes, so equal ids always mean equal stored keys), and
hands each changed entry to the view once: when the view asks before a
checkpoint (its ``before_take`` hook), or after every batch when the view has
no such hook.

A change is marked on the entry itself and the entry is queued once (the
``dirty`` list), rather than recorded in a second dict by key: with thousands
of keys in random order, each lookup in a second dict costs a record a few
cache misses, more than the rest of its bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import StateView

__all__ = ["DEFAULT_MAX_KEYS", "Entry", "KeyCache", "key_id"]

#: Values kept in memory per operator; beyond it the cache is emptied between batches.
DEFAULT_MAX_KEYS: Final = 200_000

# One packer for the module: pack() holds the GIL from start to end.
_pack: Final = msgpack.Packer(use_bin_type=True).pack
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1


def key_id(key: Any) -> Any:
    """Return a hashable stand-in for *key*: itself for a str or int, else its msgpack bytes.

    Two keys get equal ids exactly when msgpack encodes them alike (``1`` and
    ``True`` are equal in Python but stored apart); a list key, which cannot
    be hashed, still gets one.

    Raises:
        TypeError: if msgpack cannot encode *key*.
        OverflowError: if *key* holds an int msgpack cannot store.

    >>> key_id("u1"), key_id(7), key_id(["u", 1]) == msgpack.packb(["u", 1])
    ('u1', 7, True)
    """
    kind = type(key)
    if kind is str or (kind is int and _INT_MIN <= key <= _INT_MAX):
        return key
    return _pack(key)


@dataclass(slots=True, eq=False)
class Entry:
    """One key's cached value: ``value`` (``None``: the key has no value), ``key`` and ``dirty``.

    ``dirty`` is true while the entry sits in its cache's ``dirty`` list, from
    its first change after a ``write`` until the next one.
    """

    key: Any
    value: Any
    dirty: bool = False


class KeyCache:
    """The entries of one operator's keys, by key id, and the entries changed since the last write.

    One task at a time. ``entries`` maps a key id to its ``Entry``; ``dirty``
    lists the entries changed since the last ``write``, each once, in the order
    of their first change. Operators read both directly in their loops and
    change an entry as ``put`` does; ``load`` fetches a key the cache does not
    hold.

    Args:
        view: The operator's state.
        state_key: Turns a key into the key stored in *view* (for example
            ``("k", key)``).
        max_keys: Entries kept between batches (see ``after_batch``).
    """

    __slots__ = ("_read", "deferred", "dirty", "entries", "max_keys", "state_key", "view")

    def __init__(
        self,
        view: StateView,
        state_key: Callable[[Any], Any],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.view = view
        self.state_key = state_key
        self.max_keys = max_keys
        self.entries: dict[Any, Entry] = {}
        self.dirty: list[Entry] = []
        # A key this cache does not hold has no unwritten value here, so the read
        # need not make the view flush (CachedView.get_own).
        self._read: Callable[[Any], Any] = getattr(view, "get_own", view.get)
        register = getattr(view, "before_take", None)
        #: True when the view calls ``write`` before each checkpoint; else call it per batch.
        self.deferred = callable(register)
        if callable(register):
            register(self.write)

    def load(self, kid: Any, key: Any) -> Entry:
        """Read *key* (id *kid*) from the view into a new entry and return it.

        The entry's value is ``None`` when the view has no value for *key*.
        """
        entry = self.entries[kid] = Entry(key, self._read(self.state_key(key)))
        return entry

    def put(self, kid: Any, key: Any, value: Any) -> None:
        """Set *key* (id *kid*) to *value* (``None`` deletes it) and mark it changed."""
        entry = self.entries.get(kid)
        if entry is None:
            # The old value is overwritten unread, so there is no need to load it.
            entry = self.entries[kid] = Entry(key, value)
        else:
            entry.value = value
        if not entry.dirty:
            entry.dirty = True
            self.dirty.append(entry)

    def write(self) -> None:
        """Hand every changed value to the view (``None`` deletes the key)."""
        dirty = self.dirty
        if not dirty:
            return
        view, state_key = self.view, self.state_key
        for entry in dirty:
            value = entry.value
            if value is None:
                view.delete(state_key(entry.key))
            else:
                view.put(state_key(entry.key), value)
            entry.dirty = False
        # Cleared in place: operators hold the list while a batch runs.
        dirty.clear()

    def after_batch(self) -> None:
        """Write now if the view has no ``before_take`` hook; bound the memory held."""
        if not self.deferred:
            self.write()
        if len(self.entries) > self.max_keys:
            # The view holds whatever was written; its own cache bounds that.
            self.write()
            self.entries.clear()
