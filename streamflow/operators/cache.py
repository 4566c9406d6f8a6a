"""Keep a stateful operator's per-key values in memory between checkpoints.

An operator that reads and writes one value per record (``process``,
``aggregate``) would otherwise pay a ``StateView.get`` and ``put`` per record,
each encoding the key with msgpack. ``KeyCache`` holds the values by *key id*
(the key itself when it is a ``str`` or an ``int`` msgpack can store, else its
msgpack bytes, so equal ids always mean equal stored keys), and hands each
changed key to the view once: when the view asks before a checkpoint (its
``before_take`` hook), or after every batch when the view has no such hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgpack

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import StateView

__all__ = ["DEFAULT_MAX_KEYS", "KeyCache", "key_id"]

#: Values kept in memory per operator; beyond it the cache is emptied between batches.
DEFAULT_MAX_KEYS: Final = 200_000

# One packer for the module: pack() holds the GIL from start to end.
_pack: Final = msgpack.Packer(use_bin_type=True).pack
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1
#: Returned by ``KeyCache.values.get`` for a key the cache does not hold.
UNSEEN: Final[Any] = object()


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


class KeyCache:
    """The values of one operator's keys, by key id, and the ids changed since the last write.

    One task at a time. ``values`` maps a key id to its value (``None``: the
    key has no value); ``changed`` maps the ids changed since the last
    ``write`` to their keys. Operators read and fill both dicts directly in
    their loops; ``load`` fetches a key the cache does not hold.

    Args:
        view: The operator's state.
        state_key: Turns a key into the key stored in *view* (for example
            ``("k", key)``).
        max_keys: Values kept between batches (see ``trim``).
    """

    __slots__ = ("_read", "changed", "deferred", "max_keys", "state_key", "values", "view")

    def __init__(
        self,
        view: StateView,
        state_key: Callable[[Any], Any],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.view = view
        self.state_key = state_key
        self.max_keys = max_keys
        self.values: dict[Any, Any] = {}
        self.changed: dict[Any, Any] = {}
        # A key this cache does not hold has no unwritten value here, so the read
        # need not make the view flush (CachedView.get_own).
        self._read: Callable[[Any], Any] = getattr(view, "get_own", view.get)
        register = getattr(view, "before_take", None)
        #: True when the view calls ``write`` before each checkpoint; else call it per batch.
        self.deferred = callable(register)
        if callable(register):
            register(self.write)

    def load(self, kid: Any, key: Any) -> Any:
        """Read *key* (id *kid*) from the view into the cache; return its value or ``None``."""
        value = self.values[kid] = self._read(self.state_key(key))
        return value

    def write(self) -> None:
        """Hand every changed value to the view (``None`` deletes the key)."""
        changed = self.changed
        if not changed:
            return
        view, values, state_key = self.view, self.values, self.state_key
        for kid, key in changed.items():
            value = values[kid]
            if value is None:
                view.delete(state_key(key))
            else:
                view.put(state_key(key), value)
        # Cleared in place: operators hold the dict while a batch runs.
        changed.clear()

    def after_batch(self) -> None:
        """Write now if the view has no ``before_take`` hook; bound the memory held."""
        if not self.deferred:
            self.write()
        if len(self.values) > self.max_keys:
            # The view holds whatever was written; its own cache bounds that.
            self.write()
            self.values.clear()
