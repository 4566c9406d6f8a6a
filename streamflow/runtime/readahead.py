"""Start a task's next fetch while it processes the current batch: ``ReadAhead``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from streamflow.errors import OffsetOutOfRange
from streamflow.log import StoredReader

if TYPE_CHECKING:
    from streamflow.log import RecordBatch, TopicPartition, Transport
    from streamflow.log.segment import StoredRun


class ReadAhead:
    """One fetch started ahead of time, from the positions the current batch ends at.

    On a ``StoredReader`` (the embedded log) the fetch runs on a worker thread
    and returns the stored bytes; ``take`` decodes them on the task's thread.
    """

    def __init__(self, positions: dict[TopicPartition, int]) -> None:
        self.positions = positions
        self.found: dict[TopicPartition, list[RecordBatch]] = {}
        self._stored: dict[TopicPartition, list[StoredRun]] = {}
        self._reader: StoredReader | None = None
        self.done = trio.Event()

    async def run(self, transport: Transport, max_bytes: int) -> None:
        """Fetch from the positions given at creation; ``take`` waits for this."""
        try:
            if isinstance(transport, StoredReader):
                self._reader = transport
                self._stored = await transport.fetch_stored(
                    self.positions, max_bytes=max_bytes, timeout=0.0
                )
            else:
                self.found = await transport.fetch(self.positions, max_bytes=max_bytes, timeout=0.0)
        except OffsetOutOfRange:
            pass  # the task's own fetch meets it again and handles it
        finally:
            self.done.set()

    async def take(
        self, positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Return the batches read, or {} when the task is no longer at those positions.

        Raises:
            CorruptBatch: a batch read ahead fails its checks.
        """
        await self.done.wait()
        if positions != self.positions:
            return {}
        if self._reader is not None:
            for tp, runs in self._stored.items():
                batches = self._reader.decode_stored(*tp, positions[tp], runs)
                if batches:
                    self.found[tp] = batches
            self._stored = {}
        return self.found
