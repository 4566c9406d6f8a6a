"""Changelog records carry the bytes LMDB stores (format 2); older records are refused."""

from __future__ import annotations

import random
import shutil
from typing import TYPE_CHECKING, Any

import msgpack
import pytest

from streamflow.errors import StateStoreError
from streamflow.log import Columns
from streamflow.state import Checkpoint, StateStore, changelog_topic
from streamflow.state.checkpoint import FORMAT_VERSION
from streamflow.state.restore import rebuild_store
from streamflow.state.task_state import task_state_dir
from streamflow.state.view import decode, encode

from .test_task_state import IN, open_task

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log import Transport

TOPIC = changelog_topic("fraud", "spend")


async def changelog_records(transport: Transport, topic: str = TOPIC) -> list[tuple[Any, Any]]:
    start, end = await transport.offsets(topic, 1)
    records: list[tuple[Any, Any]] = []
    while start < end:
        found = await transport.fetch({(topic, 1): start}, timeout=0)
        for batch in found[(topic, 1)]:
            records.extend(zip(batch.keys, batch.values, strict=True))
            start = batch.next_offset
    return records


async def test_changelog_records_carry_the_bytes_lmdb_stores(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        spend = task.view("spend")
        spend.put(["u", 1], {"n": 3, "ts": [1, 2, 3]})
        spend.put("gone", 1)
        await task.checkpoint({IN: 1})
        spend.put("u2", [0, 1.5, [7, 8]])
        spend.delete("gone")
        checkpoint = await task.checkpoint({IN: 2})
        stored = dict(task.store.scan("spend"))
    assert checkpoint.to_metadata()["v"] == FORMAT_VERSION == 2
    records = await changelog_records(transport)
    assert all(type(key) is bytes for key, _ in records)
    assert records[-1] == (encode("gone"), None)  # a tombstone stays nil
    latest = dict(records)
    assert {k: v for k, v in latest.items() if v is not None} == stored
    assert decode(latest[encode(["u", 1])]) == {"n": 3, "ts": [1, 2, 3]}
    assert decode(latest[encode("u2")]) == [0, 1.5, [7, 8]]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rebuild_writes_the_newest_bytes_of_each_key(
    transport: Transport, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    await transport.create_topic(TOPIC, partitions=2, cleanup_policy="compact")
    model: dict[bytes, bytes] = {}
    for _ in range(12):
        keys: list[bytes] = []
        values: list[bytes | None] = []
        for _ in range(rng.randint(1, 9)):
            key = encode(["k", rng.randrange(15)])
            value = None if rng.random() < 0.2 else encode([rng.random(), "x" * rng.randrange(9)])
            keys.append(key)
            values.append(value)
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        await transport.append(TOPIC, 1, Columns(keys, values))
    _, end = await transport.offsets(TOPIC, 1)
    with StateStore.open(tmp_path / "lmdb", ["spend"]) as store:
        store.write({"spend": [(encode("stale"), b"\x01")]})  # emptied by the rebuild
        applied = await rebuild_store(transport, store, "spend", TOPIC, 1, end, chunk_records=4)
        assert applied == end
        assert dict(store.scan("spend")) == model


async def test_a_checkpoint_of_the_old_format_is_refused(
    transport: Transport, tmp_path: Path
) -> None:
    async with await open_task(transport, tmp_path) as task:
        task.view("spend").put("u1", 1)
        current = await task.checkpoint({IN: 10})
    old = Checkpoint(
        current.id, current.input_offsets, current.changelog_offsets, current.sequences, 1
    )
    assert Checkpoint.from_metadata(old.to_metadata()) == old
    # in the group's committed offsets, with the state directory gone
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(StateStoreError, match="format version 1.*Delete the job's state"):
        await open_task(transport, tmp_path, old.committed())
    # in LMDB
    path = task_state_dir(tmp_path / "state", "spend", 1)
    with StateStore.open(path, ["spend", "seen"]) as store:
        store.write({}, old.encode())
    with pytest.raises(StateStoreError, match="older streamflow"):
        await open_task(transport, tmp_path, {})


@pytest.mark.parametrize(
    ("keys", "values"),
    [
        (["u1", "u2"], [{"n": 1}, None]),  # hashable keys that are not bytes
        ([["k", 1], ["k", 2]], [1, 2]),  # unhashable keys
        ([b"raw", b"raw2"], [{"n": 1}, 5]),  # bytes keys, values that are not bytes
    ],
)
async def test_a_changelog_of_the_old_format_is_refused(
    transport: Transport, tmp_path: Path, keys: list[Any], values: list[Any]
) -> None:
    await transport.create_topic(TOPIC, partitions=2, cleanup_policy="compact")
    await transport.append(TOPIC, 1, Columns(keys, values))
    with StateStore.open(tmp_path / "lmdb", ["spend"]) as store:
        store.write({"spend": [(b"kept", b"\x01")]}, Checkpoint(1).encode())
        with pytest.raises(StateStoreError, match="changelog format 1"):
            await rebuild_store(transport, store, "spend", TOPIC, 1, len(keys))
        # the failed transaction left everything as it was
        assert store.scan("spend") == [(b"kept", b"\x01")]
        assert store.read_checkpoint() == Checkpoint(1).encode()
    if all(type(key) is not bytes for key in keys):
        # no checkpoint anywhere: compensating the tail finds the old records
        with pytest.raises(StateStoreError, match="changelog format 1"):
            await open_task(transport, tmp_path, {})


def test_changelog_value_is_a_msgpack_bin_holding_msgpack() -> None:
    # what a reader of the topic sees, one layer at a time (docs/state.md)
    value = {"count": 2, "ts": [5, 9]}
    on_the_wire = msgpack.packb(encode(value), use_bin_type=True)
    assert on_the_wire[0] in (0xC4, 0xC5, 0xC6)  # bin 8/16/32
    assert decode(msgpack.unpackb(on_the_wire, raw=False)) == value
