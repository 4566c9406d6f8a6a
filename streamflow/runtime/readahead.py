"""Start a task's next fetch while it processes the current batch: ``ReadAhead``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from streamflow.errors import OffsetOutOfRange

if TYPE_CHECKING:
    from streamflow.log import RecordBatch, TopicPartition, Transport


class ReadAhead:
    """One fetch started ahead of time, from the positions the current batch ends at."""

    def __init__(self, positions: dict[TopicPartition, int]) -> None:
        self.positions = positions
        self.found: dict[TopicPartition, list[RecordBatch]] = {}
        self.done = trio.Event()

    async def run(self, transport: Transport, max_bytes: int) -> None:
        """Fetch from the positions given at creation; ``take`` waits for this."""
        try:
            self.found = await transport.fetch(self.positions, max_bytes=max_bytes, timeout=0.0)
        except OffsetOutOfRange:
            pass  # the task's own fetch meets it again and handles it
        finally:
            self.done.set()

    async def take(
        self, positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, list[RecordBatch]]:
        """Return the batches read, or {} when the task is no longer at those positions."""
        await self.done.wait()
        return self.found if positions == self.positions else {}
