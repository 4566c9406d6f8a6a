"""Rebuild a store from its changelog, and undo changelog records no checkpoint covers.

Two steps make a task's state and its changelog agree before processing
resumes (``TaskState.open`` runs them; docs/guarantees.md explains why):

* ``rebuild_store``: empty the store in LMDB and replay the changelog prefix
  ``[start, covered)`` that the chosen checkpoint covers, in chunks of one LMDB
  transaction each, reporting progress;
* ``compensate_tail``: records at or after ``covered`` were appended by a run
  that crashed before its checkpoint committed. For every key they touch,
  append the key's checkpointed value (or a tombstone), so that the newest
  record per key, which is all compaction keeps, matches the checkpoint again.

Both work on bytes: a changelog record's key and value are the bytes LMDB
stores (``changelog`` module docstring), so nothing here decodes or encodes a
state value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from .changelog import legacy_format_error, read_changelog

if TYPE_CHECKING:
    from streamflow.log import RecordBatch, Transport

    from .changelog import ChangelogWriter
    from .store import StateStore

logger = logging.getLogger(__name__)

#: Changelog records folded into one LMDB transaction during a rebuild.
RESTORE_CHUNK_RECORDS: Final = 100_000
#: Seconds between progress reports of a long restore.
PROGRESS_INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """How far a store's rebuild from its changelog has come.

    ``restored`` and ``total`` count changelog offsets (compaction gaps
    included, so ``total`` is an upper bound on records); ``records_per_s`` is
    the rate so far.
    """

    store: str
    restored: int
    total: int
    records_per_s: float
    done: bool


ProgressCallback = Callable[[RestoreProgress], None]


async def rebuild_store(
    transport: Transport,
    store: StateStore,
    name: str,
    topic: str,
    partition: int,
    covered: int,
    *,
    on_progress: ProgressCallback | None = None,
    chunk_records: int = RESTORE_CHUNK_RECORDS,
) -> int:
    """Replace store *name* with the changelog's records below offset *covered*.

    The first transaction empties the store and deletes the checkpoint record,
    so a crash part-way leaves no state that looks valid. Progress goes to the
    log (``streamflow.state.restore``, at most once per second) and to
    *on_progress*.

    Returns:
        The number of changelog records applied.
    """
    start, _ = await transport.offsets(topic, partition)
    total = max(0, covered - start)
    began = trio.current_time()
    # Encoded key -> encoded value (None deletes): a chunk's changes, newest last.
    pending: dict[bytes, bytes | None] = {}
    applied = 0
    cleared = False
    last_report = began
    position = start

    async def flush() -> None:
        nonlocal cleared, pending
        latest, pending = pending, {}
        first = not cleared

        def write() -> None:
            try:
                store.write(
                    {name: latest.items()},
                    clear=(name,) if first else (),
                    forget_checkpoint=first,
                )
            except TypeError as exc:
                # LMDB takes only bytes: a key or value that is not bytes is a
                # record of the old format (decoded values); the transaction is void.
                raise legacy_format_error(topic, partition) from exc

        await trio.to_thread.run_sync(write, limiter=store.write_limiter)
        cleared = True

    def report(done: bool) -> None:
        elapsed = max(trio.current_time() - began, 1e-9)
        progress = RestoreProgress(name, position - start, total, applied / elapsed, done)
        logger.info(
            "restoring %s from %s[%d]: %d/%d offsets, %.0f records/s%s",
            name,
            topic,
            partition,
            progress.restored,
            total,
            progress.records_per_s,
            " (done)" if done else "",
        )
        if on_progress is not None:
            on_progress(progress)

    async def apply(batch: RecordBatch) -> None:
        nonlocal applied, last_report, position
        try:
            # The fetched bytes as they are: LMDB gets the bytes the checkpoint wrote.
            pending.update(zip(batch.keys, batch.values, strict=True))
        except TypeError:
            # An unhashable key (a list): a record of the old format.
            raise legacy_format_error(topic, partition) from None
        applied += len(batch)
        position = batch.next_offset
        if len(pending) >= chunk_records:
            await flush()
        now = trio.current_time()
        if now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            report(False)

    await read_changelog(transport, topic, partition, start, covered, apply)
    if pending or not cleared:
        await flush()
    position = max(position, covered)
    report(True)
    return applied


async def compensate_tail(
    transport: Transport,
    store: StateStore,
    name: str,
    writer: ChangelogWriter,
    covered: int,
) -> int:
    """Re-append the checkpointed value of every key changed at or after *covered*.

    *store* must hold exactly the state as of the checkpoint. Running this
    again after a crash is harmless: it finds its own records in the tail and
    writes the same values.

    Returns:
        The changelog end offset afterwards.
    """
    end = await writer.end_offset()
    if end <= covered:
        return end
    touched: dict[bytes, None] = {}

    async def collect(batch: RecordBatch) -> None:
        for key in batch.keys:
            if type(key) is not bytes:
                raise legacy_format_error(writer.topic, writer.partition)
            touched[key] = None

    await read_changelog(transport, writer.topic, writer.partition, covered, end, collect)
    if not touched:
        return end
    keys = list(touched)
    values = await trio.to_thread.run_sync(
        lambda: [store.get(name, kb) for kb in keys], limiter=store.write_limiter
    )
    new_end = await writer.append(keys, values)
    logger.warning(
        "%s[%d]: %d changelog record(s) after offset %d were not covered by a checkpoint; "
        "re-appended the checkpointed value of %d key(s)",
        writer.topic,
        writer.partition,
        end - covered,
        covered,
        len(touched),
    )
    return new_end
