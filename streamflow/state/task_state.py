"""Own one task's durable state: open or restore it, hand out views, checkpoint it.

Opening (``TaskState.open``) chooses the checkpoint to resume from, the newer
(by ``id``) of LMDB's and the one in the group's committed offsets:

* LMDB's, when its files open and hold a checkpoint at least as new: resume
  from it as is;
* the group's, when LMDB is missing, corrupt, or older (the task ran
  elsewhere since): rebuild every store from its changelog up to the offsets
  that checkpoint covers;
* neither: start empty (only allowed when no input offset was ever committed).

Then, for each store, changelog records after the covered offset (left by a
run that crashed mid-checkpoint) are compensated (see ``restore``), and the
result is written back as a checkpoint with a new ``id``. The runtime then
seeks its inputs to ``input_offsets`` and should commit ``last_checkpoint``
to the group before processing (so the group's copy covers the compensation).

A checkpoint (``checkpoint``) encodes each store's dirty entries once,
appends those bytes to its changelog (one batch per store), then writes the
same bytes, the input offsets and the changelog end offsets in one LMDB
transaction. The runtime commits the returned ``Checkpoint.committed()`` to
the group afterwards. Its two halves are also available on their own
(``prepare_checkpoint``, then ``write_checkpoint``), for a runtime that must
commit the changelog appends and the group offsets in a Kafka transaction
before LMDB may say they happened.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from streamflow.errors import StateStoreError
from streamflow.failpoint import failpoint

from .changelog import ChangelogWriter, changelog_topic, ensure_changelog
from .checkpoint import FORMAT_VERSION, Checkpoint, newest_committed
from .restore import compensate_tail, rebuild_store
from .store import DEFAULT_MAP_SIZE, StateStore, validate_store_name
from .view import CachedView, Changes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from streamflow.log import Committed, TopicPartition, Transport

    from .restore import ProgressCallback

logger = logging.getLogger(__name__)


def task_state_dir(state_dir: Path, stage: str, partition: int) -> Path:
    """Return the LMDB directory of task ``(stage, partition)``.

    >>> from pathlib import Path
    >>> task_state_dir(Path("/s"), "count", 3).as_posix()
    '/s/count-3'
    """
    return state_dir / f"{stage}-{partition}"


@dataclass(frozen=True, slots=True)
class PendingCheckpoint:
    """A checkpoint whose changes are in the changelog but not yet in LMDB."""

    checkpoint: Checkpoint
    changes: list[Changes]


class TaskState:
    """The state stores of one task (stage x partition), durable through checkpoints.

    One task at a time: the views are used from the task's trio task, and
    ``checkpoint`` must not overlap another ``checkpoint``. Use as an async
    context manager, or call ``aclose``.
    """

    def __init__(
        self,
        transport: Transport,
        store: StateStore,
        writers: dict[str, ChangelogWriter],
        checkpoint: Checkpoint,
        restored_from: str,
    ) -> None:
        self.transport = transport
        self.store = store
        self._writers = writers
        self._views = {name: CachedView(store, name) for name in writers}
        self.last_checkpoint = checkpoint
        #: Where the state came from at open: "lmdb", "changelog" or "empty".
        self.restored_from = restored_from
        self._closed = False

    @classmethod
    async def open(
        cls,
        transport: Transport,
        *,
        state_dir: Path,
        pipeline: str,
        stage: str,
        partition: int,
        stores: Sequence[str],
        exactly_once: bool = False,
        changelog_partitions: int | None = None,
        committed: Mapping[TopicPartition, Committed] | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> TaskState:
        """Open the task's LMDB state, restoring it from the changelog if needed.

        Args:
            transport: The log target holding the changelog topics.
            state_dir: The job's state directory; the task uses
                ``<state_dir>/<stage>-<partition>/``.
            pipeline: The pipeline name (changelog topics are
                ``<pipeline>.<store>.changelog``).
            stage: The stage name.
            partition: The task's input partition (= its changelog partition).
            stores: The state stores of the task's operators.
            exactly_once: Make changelog appends idempotent (see ``changelog``).
            changelog_partitions: Partitions for a changelog created here
                (default and minimum: ``partition + 1``).
            committed: The group's committed offsets for the task's inputs,
                with their checkpoint metadata (``{}`` when none were
                committed). Needed to rebuild from the changelog when LMDB is
                gone: with ``None`` (unknown), a task without a usable LMDB
                checkpoint and with a non-empty changelog refuses to start
                rather than guess.
            map_size: Initial LMDB map size in bytes.
            max_map_size: Largest LMDB map size (see ``StateStore.open``).
            on_progress: Called with ``RestoreProgress`` during a rebuild.

        Raises:
            StateStoreError: if the state cannot be made consistent (for
                example LMDB is gone and the group committed offsets without
                checkpoint metadata, or the map is full), or if the
                checkpoint or the changelog is in the record format of an
                older streamflow (the message says what to delete).
        """
        for name in stores:
            validate_store_name(name)
        if len(set(stores)) != len(stores):
            raise ValueError(f"stores {list(stores)!r} repeat a name; each store needs its own")
        path = task_state_dir(state_dir, stage, partition)
        store, local = await trio.to_thread.run_sync(
            _open_store, path, list(stores), map_size, max_map_size
        )
        try:
            writers: dict[str, ChangelogWriter] = {}
            for name in stores:
                topic = changelog_topic(pipeline, name)
                await ensure_changelog(
                    transport, topic, partition, changelog_partitions or partition + 1
                )
                writers[name] = ChangelogWriter(
                    transport, topic, partition, exactly_once=exactly_once
                )
            base, source = _choose(path, local, committed)
            if base.version != FORMAT_VERSION:
                _refuse_old_format(path, base, writers)
            if source == "empty" and committed is None:
                await _refuse_unknown_history(writers, path)
            if source != "lmdb":
                for name, writer in writers.items():
                    await rebuild_store(
                        transport,
                        store,
                        name,
                        writer.topic,
                        partition,
                        base.changelog_offsets.get(name, 0),
                        on_progress=on_progress,
                    )
            ends: dict[str, int] = {}
            for name, writer in writers.items():
                covered = base.changelog_offsets.get(name, 0)
                end = await writer.end_offset()
                if end < covered:
                    raise StateStoreError(
                        f"changelog {writer.topic}[{partition}] ends at offset {end} but the "
                        f"checkpoint covers up to {covered}: the changelog was deleted or "
                        "truncated; restore the log directory, or delete the state directory "
                        "and the group's offsets to start over"
                    )
                ends[name] = await compensate_tail(transport, store, name, writer, covered)
            checkpoint = Checkpoint(base.id + 1, base.input_offsets, ends, base.sequences)
            if source != "lmdb" or ends != base.changelog_offsets:
                await trio.to_thread.run_sync(
                    lambda: store.write({}, checkpoint.encode()), limiter=store.write_limiter
                )
            else:
                checkpoint = base
        except BaseException:
            store.close()
            raise
        logger.info(
            "%s: state of %s opened from %s at checkpoint %d",
            path,
            ", ".join(stores),
            source,
            checkpoint.id,
        )
        return cls(transport, store, writers, checkpoint, source)

    async def __aenter__(self) -> TaskState:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def view(self, store: str) -> CachedView:
        """Return the ``StateView`` of *store* (the same object on every call)."""
        try:
            return self._views[store]
        except KeyError:
            raise StateStoreError(
                f"no store named {store!r} in this task; known: {sorted(self._views)}"
            ) from None

    @property
    def input_offsets(self) -> dict[TopicPartition, int]:
        """The input offsets the state reflects ({} for a fresh task): resume reading here."""
        return dict(self.last_checkpoint.input_offsets)

    @property
    def sequences(self) -> dict[str, int]:
        """The producer sequence numbers stored with the last checkpoint."""
        return dict(self.last_checkpoint.sequences)

    async def checkpoint(
        self,
        input_offsets: Mapping[TopicPartition, int],
        *,
        sequences: Mapping[str, int] | None = None,
    ) -> Checkpoint:
        """Make the state as of *input_offsets* durable; return the new checkpoint.

        Appends each store's changes to its changelog, then writes the changes,
        *input_offsets*, the changelog end offsets and *sequences* (for
        example the next sequence number of each output producer) in one LMDB
        transaction. Commit ``result.committed()`` to the group afterwards.

        If this raises (or is cancelled), the previous checkpoint stays the
        valid one and the changes stay pending for the next attempt; records
        already appended to the changelog are compensated at the next open.

        Raises:
            NotSerializable: if a state value cannot be encoded.
            StateStoreError: if LMDB cannot be written (the message says why).
        """
        pending = await self.prepare_checkpoint(input_offsets, sequences=sequences)
        return await self.write_checkpoint(pending)

    async def prepare_checkpoint(
        self,
        input_offsets: Mapping[TopicPartition, int],
        *,
        sequences: Mapping[str, int] | None = None,
    ) -> PendingCheckpoint:
        """Append each store's changes to its changelog; return the checkpoint to write.

        The first half of ``checkpoint``: LMDB is not touched, and
        ``last_checkpoint`` stays as it was until ``write_checkpoint`` is
        called with the result. Call that before the next
        ``prepare_checkpoint``. If this raises, the changes stay pending.

        Raises:
            NotSerializable: if a state value cannot be encoded.
        """
        if self._closed:
            raise trio.ClosedResourceError("the task state is closed")
        taken: list[Changes] = []
        try:
            for view in self._views.values():
                taken.append(view.take_changes())
            ends = dict(self.last_checkpoint.changelog_offsets)
            for changes in taken:
                writer = self._writers[changes.store]
                ends[changes.store] = await writer.append(*changes.columns())
            failpoint("state.after_changelog")
        except BaseException:
            for changes in taken:
                self._views[changes.store].give_back(changes)
            raise
        checkpoint = Checkpoint(
            self.last_checkpoint.id + 1,
            dict(input_offsets),
            ends,
            dict(self.last_checkpoint.sequences if sequences is None else sequences),
        )
        return PendingCheckpoint(checkpoint, taken)

    async def write_checkpoint(self, pending: PendingCheckpoint) -> Checkpoint:
        """Write a prepared checkpoint in one LMDB transaction; make it ``last_checkpoint``.

        The second half of ``checkpoint``. If this raises, the previous
        checkpoint stays the valid one and the changes stay pending.

        Raises:
            StateStoreError: if LMDB cannot be written (the message says why).
        """
        checkpoint, taken = pending.checkpoint, pending.changes
        try:
            writes = {changes.store: changes.encoded for changes in taken if changes}
            with trio.CancelScope(shield=True):
                # Once started, let the LMDB transaction finish: it is short,
                # and the thread would run on anyway.
                await trio.to_thread.run_sync(
                    lambda: self.store.write(writes, checkpoint.encode()),
                    limiter=self.store.write_limiter,
                )
        except BaseException:
            for changes in taken:
                self._views[changes.store].give_back(changes)
            raise
        self.last_checkpoint = checkpoint
        for view in self._views.values():
            view.evict()
        return checkpoint

    def digest(self, store: str) -> str:
        """Return the digest of *store* as of the last checkpoint. Blocking."""
        return self.store.digest(store)

    async def aclose(self) -> None:
        """Close the LMDB environment; pending changes since the last checkpoint are dropped."""
        if not self._closed:
            self._closed = True
            self.store.close()


def _open_store(
    path: Path, stores: list[str], map_size: int, max_map_size: int | None
) -> tuple[StateStore, Checkpoint | None]:
    """Open LMDB at *path*, replacing it when unusable; return it and its checkpoint. Blocking."""
    try:
        store = StateStore.open(path, stores, map_size=map_size, max_map_size=max_map_size)
    except StateStoreError as exc:
        logger.warning("%s; rebuilding it from the changelog", exc)
        shutil.rmtree(path, ignore_errors=True)
        store = StateStore.open(path, stores, map_size=map_size, max_map_size=max_map_size)
        return store, None
    try:
        data = store.read_checkpoint()
        return store, None if data is None else Checkpoint.decode(data)
    except StateStoreError as exc:
        logger.warning("%s: %s; rebuilding it from the changelog", path, exc)
        return store, None


async def _refuse_unknown_history(writers: Mapping[str, ChangelogWriter], path: Path) -> None:
    for writer in writers.values():
        if await writer.end_offset() > 0:
            raise StateStoreError(
                f"{path}: no usable LMDB checkpoint, and changelog {writer.topic} holds "
                "records: pass the group's committed offsets (committed=...) so the state "
                "can be rebuilt from the changelog"
            )


def _refuse_old_format(
    path: Path, checkpoint: Checkpoint, writers: Mapping[str, ChangelogWriter]
) -> None:
    topics = ", ".join(writer.topic for writer in writers.values())
    raise StateStoreError(
        f"{path}: checkpoint {checkpoint.id} has format version {checkpoint.version}: its "
        f"changelog records ({topics}) hold decoded values, written by an older streamflow, "
        f"and this version reads only version {FORMAT_VERSION} (the bytes LMDB stores; see "
        "docs/state.md). Delete the job's state directory and its changelog topics, and "
        "reset the group's committed offsets (or use a new group), then run the job again "
        "to rebuild the state from its input"
    )


def _choose(
    path: Path, local: Checkpoint | None, committed: Mapping[TopicPartition, Committed] | None
) -> tuple[Checkpoint, str]:
    committed = committed or {}
    remote = newest_committed(committed)
    if local is not None and (remote is None or local.id >= remote.id):
        return local, "lmdb"
    if remote is not None:
        if local is not None:
            logger.warning(
                "%s: LMDB checkpoint %d is older than the group's %d; rebuilding from changelog",
                path,
                local.id,
                remote.id,
            )
        return remote, "changelog"
    if committed:
        raise StateStoreError(
            f"{path}: the LMDB state has no checkpoint, and the group's committed offsets "
            "carry no checkpoint metadata to rebuild it from the changelog; commit "
            "Checkpoint.committed() after each checkpoint, or reset the group's offsets"
        )
    return Checkpoint(0), "empty"
