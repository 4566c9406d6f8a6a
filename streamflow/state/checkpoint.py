"""Describe what a checkpoint covers, and encode it for LMDB and for group commits.

A ``Checkpoint`` names the input offsets the state reflects, each store's
changelog end offset at that point, and any producer sequence numbers the
runtime keeps with it. The same record is stored twice:

* in LMDB's ``_meta`` database (``encode``/``decode``: msgpack of the map
  below), in the same transaction as the state it describes;
* as the metadata of the group's committed offsets (``to_metadata``/
  ``from_metadata``: the same map), so a task whose LMDB files are gone knows
  which changelog prefix matches the offsets it resumes from.

The map::

    {"v": 2, "id": int, "inputs": [[topic, partition, offset], ...],
     "changelog": {store: end_offset, ...}, "sequences": {name: int, ...}}

``id`` grows by one per checkpoint of a task; when LMDB and the group
disagree, the higher id is the newer checkpoint. ``v`` is also the format of
the changelog records the checkpoint covers: 2 when they carry the bytes LMDB
stores (``changelog`` module docstring), 1 when they carried decoded values
(older streamflow). A version 1 checkpoint is read, so that ``TaskState.open``
can refuse it with a clear error instead of misreading its changelog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgpack

from streamflow.errors import StateStoreError
from streamflow.log import Committed

if TYPE_CHECKING:
    from collections.abc import Mapping

    from streamflow.log import TopicPartition

#: The checkpoint map's ``"v"``, and the changelog record format it covers.
FORMAT_VERSION: Final = 2
#: Versions ``from_metadata`` reads (1: changelog records hold decoded values).
_READ_VERSIONS: Final = (1, FORMAT_VERSION)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One consistent point of a task: input offsets, changelog ends, sequences.

    ``version`` is the format of the changelog records it covers (see the
    module docstring); only ``FORMAT_VERSION`` can be restored or resumed.
    """

    id: int
    input_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    changelog_offsets: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[str, Any]:
        """Return the map stored with committed offsets (and in LMDB).

        >>> c = Checkpoint(3, {("t", 0): 10}, {"s": 7})
        >>> Checkpoint.from_metadata(c.to_metadata()) == c
        True
        """
        return {
            "v": self.version,
            "id": self.id,
            "inputs": [[t, p, o] for (t, p), o in sorted(self.input_offsets.items())],
            "changelog": dict(sorted(self.changelog_offsets.items())),
            "sequences": dict(sorted(self.sequences.items())),
        }

    @classmethod
    def from_metadata(cls, metadata: Any) -> Checkpoint | None:
        """Return the checkpoint in *metadata*, or ``None`` if it holds none.

        >>> Checkpoint.from_metadata(None) is None
        True
        """
        if not isinstance(metadata, dict) or metadata.get("v") not in _READ_VERSIONS:
            return None
        try:
            return cls(
                id=int(metadata["id"]),
                input_offsets={(str(t), int(p)): int(o) for t, p, o in metadata["inputs"]},
                changelog_offsets={str(s): int(o) for s, o in metadata["changelog"].items()},
                sequences={str(s): int(n) for s, n in metadata["sequences"].items()},
                version=int(metadata["v"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def encode(self) -> bytes:
        """Encode for LMDB's ``_meta`` database."""
        return msgpack.packb(self.to_metadata(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Decode a record written by ``encode``.

        Raises:
            StateStoreError: if *data* is not a checkpoint record.
        """
        try:
            found = cls.from_metadata(msgpack.unpackb(data, raw=False))
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            found = None
        if found is None:
            raise StateStoreError(
                "the checkpoint record in LMDB is unreadable; delete the state "
                "directory to rebuild it from the changelog"
            )
        return found

    def committed(self) -> dict[TopicPartition, Committed]:
        """Return the input offsets as group commits carrying this checkpoint.

        Pass the result to ``transport.commit(group, ...)`` after the checkpoint.

        >>> Checkpoint(1, {("t", 0): 5}).committed()[("t", 0)].offset
        5
        """
        metadata = self.to_metadata()
        return {tp: Committed(offset, metadata) for tp, offset in self.input_offsets.items()}


def checkpoint_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    """Return the metadata to commit with the input offsets of *checkpoint*."""
    return checkpoint.to_metadata()


def newest_committed(committed: Mapping[TopicPartition, Committed]) -> Checkpoint | None:
    """Return the newest checkpoint found in a group's committed offsets, if any.

    >>> c = Checkpoint(2, {("t", 0): 9}, {"s": 4})
    >>> newest_committed(c.committed()) == c
    True
    """
    best: Checkpoint | None = None
    for entry in committed.values():
        found = Checkpoint.from_metadata(entry.metadata)
        if found is not None and (best is None or found.id > best.id):
            best = found
    return best
