from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
import trio

from streamflow.errors import StateStoreError
from streamflow.log import Columns, Committed
from streamflow.state import Checkpoint, RestoreProgress, TaskState, changelog_topic
from streamflow.state.changelog import ChangelogWriter
from streamflow.state.task_state import task_state_dir
from streamflow.state.view import decode, encode

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from streamflow.log import TopicPartition, Transport

IN: TopicPartition = ("payments", 1)


async def open_task(
    transport: Transport,
    tmp_path: Path,
    committed: Mapping[TopicPartition, Committed] | None = None,
    *,
    exactly_once: bool = False,
    progress: list[RestoreProgress] | None = None,
) -> TaskState:
    return await TaskState.open(
        transport,
        state_dir=tmp_path / "state",
        pipeline="fraud",
        stage="spend",
        partition=1,
        stores=["spend", "seen"],
        exactly_once=exactly_once,
        committed={} if committed is None else committed,
        on_progress=None if progress is None else progress.append,
    )


async def changelog_latest(transport: Transport, store: str) -> dict[bytes, Any]:
    """Return the newest value per encoded key in the changelog, decoded, tombstones dropped."""
    topic = changelog_topic("fraud", store)
    start, end = await transport.offsets(topic, 1)
    latest: dict[bytes, Any] = {}
    position = start
    while position < end:
        found = await transport.fetch({(topic, 1): position}, timeout=0)
        for batch in found[(topic, 1)]:
            for key, value in zip(batch.keys, batch.values, strict=True):
                assert type(key) is bytes
                latest[key] = value
            position = batch.next_offset
    return {k: decode(v) for k, v in latest.items() if v is not None}


def lmdb_state(task: TaskState, store: str) -> dict[bytes, Any]:
    return {k: decode(v) for k, v in task.store.scan(store)}


async def fill(task: TaskState, rounds: int, keys: int = 500) -> Checkpoint:
    """Write and delete keys over several checkpoints; return the last checkpoint."""
    spend, seen = task.view("spend"), task.view("seen")
    checkpoint = task.last_checkpoint
    for r in range(rounds):
        for k in range(keys):
            if (k + r) % 7 == 0:
                spend.delete(f"u{k}")
            else:
                spend.put(f"u{k}", {"n": r, "total": k * 1.5 + r})
        seen.put(["round", r], r)
        checkpoint = await task.checkpoint({IN: (r + 1) * 100})
    return checkpoint


async def test_fresh_task_starts_empty_and_creates_compacted_changelogs(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        assert task.restored_from == "empty"
        assert task.input_offsets == {}
        assert task.view("spend").get("u1") is None
    for store in ("spend", "seen"):
        description = await transport.describe(changelog_topic("fraud", store))
        assert description.config["cleanup_policy"] == "compact"
        assert len(description.partitions) == 2  # partition + 1
    assert (task_state_dir(tmp_path / "state", "spend", 1) / "data.mdb").exists()


async def test_checkpoint_writes_changelog_and_lmdb_together(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        checkpoint = await fill(task, rounds=3)
        assert checkpoint.input_offsets == {IN: 300}
        end = await transport.offsets(changelog_topic("fraud", "spend"), 1)
        assert checkpoint.changelog_offsets["spend"] == end[1]
        assert lmdb_state(task, "spend") == await changelog_latest(transport, "spend")
        assert lmdb_state(task, "seen") == await changelog_latest(transport, "seen")
        # a checkpoint without changes appends nothing
        again = await task.checkpoint({IN: 301})
        assert again.changelog_offsets == checkpoint.changelog_offsets
        assert again.id == checkpoint.id + 1

    async with await open_task(transport, tmp_path) as task:
        assert task.restored_from == "lmdb"
        assert task.input_offsets == {IN: 301}
        assert task.view("spend").get("u1") == {"n": 2, "total": 3.5}
        assert task.view("spend").get("u5") is None  # (5 + 2) % 7 == 0: deleted


async def test_restore_from_changelog_after_state_dir_is_deleted(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        checkpoint = await fill(task, rounds=4, keys=3_000)
        digests = {s: task.digest(s) for s in ("spend", "seen")}
    shutil.rmtree(tmp_path / "state")

    progress: list[RestoreProgress] = []
    async with await open_task(
        transport, tmp_path, checkpoint.committed(), progress=progress
    ) as task:
        assert task.restored_from == "changelog"
        assert task.input_offsets == {IN: 400}
        assert {s: task.digest(s) for s in ("spend", "seen")} == digests
        assert task.last_checkpoint.id > checkpoint.id
    done = [p for p in progress if p.done]
    assert [p.store for p in done] == ["spend", "seen"]
    assert done[0].restored == done[0].total == checkpoint.changelog_offsets["spend"]


async def test_uncovered_changelog_tail_is_compensated(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        checkpoint = await fill(task, rounds=2)
        expected = lmdb_state(task, "spend")
    # A run that crashed between its changelog append and its LMDB commit:
    topic = changelog_topic("fraud", "spend")
    await transport.append(
        topic,
        1,
        Columns(
            keys=[encode("u1"), encode("u7"), encode("new")],
            values=[encode({"n": 99}), None, encode({"n": 1})],
        ),
    )
    async with await open_task(transport, tmp_path) as task:
        assert task.restored_from == "lmdb"
        assert lmdb_state(task, "spend") == expected
        assert await changelog_latest(transport, "spend") == expected
        assert (
            task.last_checkpoint.changelog_offsets["spend"]
            == (await transport.offsets(topic, 1))[1]
        )
        reopened = task.last_checkpoint
    # the group still holds the older checkpoint: a rebuild must give the same state
    shutil.rmtree(tmp_path / "state")
    async with await open_task(transport, tmp_path, checkpoint.committed()) as task:
        assert task.restored_from == "changelog"
        assert lmdb_state(task, "spend") == expected
    # and with the newer one the runtime commits after open
    shutil.rmtree(tmp_path / "state")
    async with await open_task(transport, tmp_path, reopened.committed()) as task:
        assert lmdb_state(task, "spend") == expected


async def test_lmdb_older_than_the_group_checkpoint_is_rebuilt(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        await fill(task, rounds=1)
    old_copy = tmp_path / "old"
    shutil.copytree(tmp_path / "state", old_copy)
    async with await open_task(transport, tmp_path) as task:
        checkpoint = await fill(task, rounds=3)
        digest = task.digest("spend")
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(old_copy, tmp_path / "state")
    async with await open_task(transport, tmp_path, checkpoint.committed()) as task:
        assert task.restored_from == "changelog"
        assert task.digest("spend") == digest
        assert task.input_offsets == checkpoint.input_offsets


async def test_corrupt_lmdb_is_rebuilt_from_the_changelog(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        checkpoint = await fill(task, rounds=2)
        digest = task.digest("spend")
    data = task_state_dir(tmp_path / "state", "spend", 1) / "data.mdb"
    data.write_bytes(b"\xff" * data.stat().st_size)
    async with await open_task(transport, tmp_path, checkpoint.committed()) as task:
        assert task.restored_from == "changelog"
        assert task.digest("spend") == digest


async def test_missing_lmdb_without_committed_metadata_refuses_to_guess(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        await fill(task, rounds=1)
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(StateStoreError, match="checkpoint metadata"):
        await open_task(transport, tmp_path, {IN: Committed(100)})
    with pytest.raises(StateStoreError, match="committed="):
        await TaskState.open(
            transport,
            state_dir=tmp_path / "state",
            pipeline="fraud",
            stage="spend",
            partition=1,
            stores=["spend", "seen"],
        )


async def test_failed_checkpoint_keeps_changes_for_the_next_one(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        task.view("spend").put("u1", 1)
        await transport.delete_topic(changelog_topic("fraud", "spend"))
        with pytest.raises(Exception, match="fraud.spend.changelog"):
            await task.checkpoint({IN: 5})
        assert task.view("spend").dirty_count == 1
        assert task.last_checkpoint.id == 1


async def test_exactly_once_appends_are_deduplicated_on_retry(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path, exactly_once=True) as task:
        await fill(task, rounds=1, keys=10)
    topic = changelog_topic("fraud", "spend")
    writer = ChangelogWriter(transport, topic, 1, exactly_once=True)
    before = await writer.end_offset()
    after = await writer.append([b"a", b"b"], [b"1", None])
    assert after == before + 2
    # the same append again, as after a lost acknowledgement: dropped by the log
    writer._end_offset = before
    assert await writer.append([b"a", b"b"], [b"1", None]) == after
    assert (await transport.offsets(topic, 1))[1] == after


async def test_checkpoint_is_not_torn_by_cancellation(transport: Transport, tmp_path: Path) -> None:
    async with await open_task(transport, tmp_path) as task:
        first = await fill(task, rounds=1)
        task.view("spend").put("late", 1)
        with trio.move_on_after(0):
            await task.checkpoint({IN: 999})
        # either the new checkpoint is complete or the old one holds, with changes pending
        if task.last_checkpoint.id == first.id:
            assert task.view("spend").dirty_count == 1
            await task.checkpoint({IN: 999})
        assert lmdb_state(task, "spend") == await changelog_latest(transport, "spend")
