"""Track idempotent producers per partition: sequence numbers, epochs, snapshots.

For every ``producer_id`` a partition remembers the newest epoch, the highest
sequence number stored, and where its last ``MAX_RECENT`` batches landed. The
batch headers carry ``producer_id``, ``producer_epoch`` and ``base_sequence``, so
the table can be rebuilt by scanning headers; to survive retention and
compaction it is also saved as a snapshot, ``<offset:020d>.producers``, at every
roll and at close. A snapshot holds the state of every batch below ``offset``::

    crc u32 (big-endian zlib.crc32 of the rest) + msgpack
    {"offset": int, "producers": [[producer_id, epoch, last_sequence,
                                   [[first_sequence, last_sequence, base_offset], ...]], ...]}
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgpack

from streamflow.errors import ProducerFenced

from .durable import remove_quietly, write_atomically
from .naming import PRODUCERS_SUFFIX, parse_stem, producers_path

if TYPE_CHECKING:
    from pathlib import Path

    from .fileio import FileIO

logger = logging.getLogger("streamflow.log")

MAX_RECENT: Final = 5
KEEP_SNAPSHOTS: Final = 2
_CRC: Final = struct.Struct(">I")


@dataclass(slots=True)
class ProducerState:
    """What a partition knows about one producer."""

    epoch: int
    last_sequence: int = -1
    recent: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=MAX_RECENT))


class ProducerTable:
    """Idempotence state of one partition. One writer at a time (the partition lock)."""

    __slots__ = ("producers",)

    def __init__(self) -> None:
        self.producers: dict[int, ProducerState] = {}

    def check(self, producer_id: int, epoch: int, sequence: int, count: int) -> tuple[int, int]:
        """Return how many leading records of an append are already stored.

        Returns ``(skip, offset)``: when ``skip == count`` nothing is new and
        *offset* is where the first record was stored (-1 when no longer known);
        otherwise *offset* is -1 and records ``skip:`` are to be written.

        Raises:
            ProducerFenced: if *epoch* is older than the producer's newest epoch.
        """
        state = self.producers.get(producer_id)
        if state is None:
            return 0, -1
        if epoch < state.epoch:
            raise ProducerFenced(producer_id, epoch, state.epoch)
        if epoch > state.epoch or sequence < 0:
            return 0, -1
        skip = min(count, max(0, state.last_sequence + 1 - sequence))
        if skip < count:
            return skip, -1
        for first, last, base_offset in state.recent:
            if first <= sequence <= last:
                return count, base_offset + sequence - first
        return count, -1

    def record(
        self,
        producer_id: int,
        epoch: int,
        first_sequence: int,
        last_sequence: int,
        base_offset: int,
    ) -> None:
        """Note a batch stored at *base_offset* with sequences ``[first, last]``."""
        state = self.producers.get(producer_id)
        if state is None or epoch > state.epoch:
            state = self.producers[producer_id] = ProducerState(epoch)
        elif epoch < state.epoch:
            return  # an old epoch's batch, met while scanning; the newer epoch wins
        if first_sequence >= 0:
            state.last_sequence = max(state.last_sequence, last_sequence)
            state.recent.append((first_sequence, last_sequence, base_offset))

    def encode(self, offset: int) -> bytes:
        """Return the snapshot file contents for the state below *offset*."""
        body = msgpack.packb(
            {
                "offset": offset,
                "producers": [
                    [pid, s.epoch, s.last_sequence, [list(r) for r in s.recent]]
                    for pid, s in self.producers.items()
                ],
            },
            use_bin_type=True,
        )
        return _CRC.pack(zlib.crc32(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> tuple[int, ProducerTable] | None:
        """Parse snapshot contents; return ``(offset, table)`` or None if they are damaged."""
        if len(data) < _CRC.size or _CRC.unpack_from(data)[0] != zlib.crc32(data[_CRC.size :]):
            return None
        try:
            doc = msgpack.unpackb(data[_CRC.size :], raw=False, strict_map_key=False)
            table = cls()
            for pid, epoch, last_sequence, recent in doc["producers"]:
                state = ProducerState(int(epoch), int(last_sequence))
                for first, last, base_offset in recent:
                    state.recent.append((int(first), int(last), int(base_offset)))
                table.producers[int(pid)] = state
            return int(doc["offset"]), table
        except (ValueError, TypeError, KeyError) as exc:
            logger.info("ignoring an unreadable producer snapshot: %s", exc)
            return None


def snapshot_offsets(files: FileIO, directory: Path) -> list[int]:
    """Return the offsets of the snapshots in *directory*, oldest first.

    Blocking.
    """
    found = (parse_stem(name, PRODUCERS_SUFFIX) for name in files.listdir(directory))
    return sorted(o for o in found if o is not None)


def write_snapshot(files: FileIO, directory: Path, table: ProducerTable, offset: int) -> None:
    """Save *table* as the snapshot at *offset* and drop all but the newest few.

    Blocking.
    """
    write_atomically(
        files,
        producers_path(directory, offset),
        table.encode(offset),
        failpoint_name="log.mid_snapshot_write",
    )
    for old in snapshot_offsets(files, directory)[:-KEEP_SNAPSHOTS]:
        remove_quietly(files, producers_path(directory, old))


def load_snapshot(files: FileIO, directory: Path, end_offset: int) -> tuple[int, ProducerTable]:
    """Return the newest usable snapshot at or below *end_offset*, else ``(0, empty)``.

    Blocking. Snapshots above *end_offset* (left by a truncated tail) are removed.
    """
    for offset in reversed(snapshot_offsets(files, directory)):
        path = producers_path(directory, offset)
        if offset > end_offset:
            remove_quietly(files, path)
            continue
        parsed = ProducerTable.decode(files.read_file(path))
        if parsed is not None and parsed[0] == offset:
            return parsed
        logger.info("producer snapshot %s is damaged; using an older one", path)
    return 0, ProducerTable()
