"""Stop the process at a named point in the code, for crash tests: failpoints.

``failpoint("log.after_write")`` does nothing unless the environment variable
``STREAMFLOW_FAILPOINT`` names that point: ``STREAMFLOW_FAILPOINT=name:n`` (or
several, ``a:n,b:m``) makes the n-th hit of *name* in this process
``SIGKILL`` the process itself, so a crash test can stop a broker or worker in
exactly the window it wants to check. The variable is read once, at import; an
unarmed failpoint costs one dict lookup.

In-process tests arm a point with ``arm(name, n, action)``: the n-th hit calls
*action* (which usually raises an exception that stands for the crash).

Like ``errors``, this module imports nothing from streamflow, so every layer
may use it. The names in use are listed in ``NAMES`` (the fixture crash tests
iterate over); a new crash window gets a new name there.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

#: Every failpoint in the storage engine, with the window it opens.
NAMES: Final[dict[str, str]] = {
    "log.after_write": "a batch is written to the segment but not fsynced",
    "log.after_fsync": "a batch is fsynced but not yet acknowledged",
    "log.mid_roll": "the new segment exists but the producer snapshot is not written",
    "log.mid_index_write": "the offset index is replaced but not the time index",
    "log.mid_snapshot_write": "a producer snapshot is written as .tmp but not renamed",
    "log.mid_retention_delete": "one old segment's .log is removed, its indexes are not",
    "log.mid_compaction_swap": "a compacted .log.tmp is fsynced, the indexes are removed, "
    "the rename has not happened",
    "broker.after_append": "the broker stored a batch and has not answered the producer yet",
    "runtime.before_output": "a task processed a batch (state changed in memory), "
    "no output of it is appended",
    "runtime.mid_output": "a batch's outputs are appended to one destination partition, "
    "not to the others",
    "runtime.after_output": "every output of a batch is appended, its input offsets are "
    "neither checkpointed nor committed",
    "runtime.mid_checkpoint": "a task's state checkpoint is in LMDB, the group commit of "
    "its offsets has not happened",
    "state.after_changelog": "a checkpoint's changes are in the changelog, the LMDB "
    "transaction has not happened",
}


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def parse(spec: str) -> dict[str, int]:
    """Return ``{name: n}`` from a ``name:n[,name:n...]`` spec; bad parts are ignored.

    >>> parse("log.after_write:3,broker.after_append:1")
    {'log.after_write': 3, 'broker.after_append': 1}
    >>> parse("")
    {}
    """
    armed: dict[str, int] = {}
    for part in spec.split(","):
        name, _, count = part.strip().rpartition(":")
        if name and count.isdigit() and int(count) > 0:
            armed[name] = int(count)
    return armed


_countdown: dict[str, int] = parse(os.environ.get("STREAMFLOW_FAILPOINT", ""))
_actions: dict[str, Callable[[], None]] = {}


def failpoint(name: str) -> None:
    """Count a hit of failpoint *name*; on its armed hit, run its action (SIGKILL).

    A no-op (one dict lookup) unless the point is armed.
    """
    left = _countdown.get(name)
    if left is None:
        return
    if left > 1:
        _countdown[name] = left - 1
        return
    del _countdown[name]
    _actions.pop(name, _kill_self)()


def arm(name: str, n: int, action: Callable[[], None] = _kill_self) -> None:
    """Make the *n*-th next hit of *name* in this process call *action*.

    Raises:
        ValueError: if *n* is not positive.
    """
    if n < 1:
        raise ValueError(f"arm: n={n}; the hit to stop at counts from 1")
    _countdown[name] = n
    _actions[name] = action


def disarm(name: str | None = None) -> None:
    """Disarm failpoint *name*, or every failpoint when *name* is None."""
    if name is None:
        _countdown.clear()
        _actions.clear()
    else:
        _countdown.pop(name, None)
        _actions.pop(name, None)


def hits_left(name: str) -> int | None:
    """Return how many hits remain before *name* fires, or None if it is not armed."""
    return _countdown.get(name)
