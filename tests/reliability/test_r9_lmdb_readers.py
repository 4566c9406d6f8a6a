"""R9: killed readers never fill LMDB's reader table; a deleted state dir is rebuilt.

A task's state store is written through ``TaskState`` (changelog + LMDB),
then 20 child processes in turn open its LMDB environment with
``max_readers=8``, start a read transaction and are SIGKILLed holding it.
A keeper process holds the environment open throughout, so the lock file (and
every dead reader's slot in it) survives between children: without clearing
stale slots, the ninth child would fail with ``MDB_READERS_FULL``. Each child
opens through ``StateStore.open``, which clears them. Then the state dir is
deleted and ``TaskState.open`` rebuilds it from the changelog: the digest must
equal the one before the kills.
"""

from __future__ import annotations

import shutil
import signal
import time
from typing import TYPE_CHECKING

import pytest

import streamflow
from streamflow.state import RestoreProgress, TaskState
from streamflow.state.task_state import task_state_dir

from .harness import report, soak, start_python

if TYPE_CHECKING:
    from pathlib import Path

    from streamflow.log import Transport

KILLS = 500 if soak() else 20
MAX_READERS = 8
STORES = ["spend", "seen"]
KEYS = 5_000
ROUNDS = 4

KEEPER = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=len(sys.argv) - 2, max_readers=int(sys.argv[2]))
print("READY", flush=True)
time.sleep(3600)
"""

READER = """
import sys, time, lmdb
from pathlib import Path
from streamflow.state.store import StateStore
path, readers, stores = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
StateStore.open(Path(path), stores, max_readers=readers).close()  # clears stale slots
env = lmdb.open(path, max_dbs=len(stores) + 1, max_readers=readers)
txn = env.begin()
print("READY", txn.id(), flush=True)
time.sleep(3600)
"""


async def open_task(
    transport: Transport, state_dir: Path, progress: list[RestoreProgress] | None = None
) -> TaskState:
    """Open the test's task (stage ``agg``, partition 0)."""
    return await TaskState.open(
        transport,
        state_dir=state_dir,
        pipeline="r9",
        stage="agg",
        partition=0,
        stores=STORES,
        committed={},
        on_progress=None if progress is None else progress.append,
    )


@pytest.mark.timeout(300)
async def test_killed_readers_are_cleared_and_state_is_rebuilt_from_the_changelog(
    tmp_path: Path, seed: int
) -> None:
    state_dir = tmp_path / "state"
    async with streamflow.connect(tmp_path / "data", cleaner=False) as client:
        async with await open_task(client.transport, state_dir) as task:
            spend, seen = task.view("spend"), task.view("seen")
            checkpoint = task.last_checkpoint
            for r in range(ROUNDS):
                for k in range(KEYS):
                    if (k + r + seed) % 7 == 0:
                        spend.delete(f"u{k}")
                    else:
                        spend.put(f"u{k}", {"n": r, "cents": k * 3 + r})
                seen.put(["round", r], r)
                checkpoint = await task.checkpoint({("in", 0): (r + 1) * 100})
            digests = {s: task.digest(s) for s in STORES}

        path = task_state_dir(state_dir, "agg", 0)
        logs = tmp_path / "children.log"
        keeper = start_python(KEEPER, str(path), str(MAX_READERS), *STORES, log_path=logs)
        keeper.wait_ready()
        try:
            for _ in range(KILLS):
                reader = start_python(READER, str(path), str(MAX_READERS), *STORES, log_path=logs)
                reader.wait_ready()
                assert reader.kill() == -signal.SIGKILL
            # after the kills, the task itself opens from LMDB with the same digest
            async with await TaskState.open(
                client.transport,
                state_dir=state_dir,
                pipeline="r9",
                stage="agg",
                partition=0,
                stores=STORES,
                committed=checkpoint.committed(),
            ) as task:
                assert task.restored_from == "lmdb"
                assert {s: task.digest(s) for s in STORES} == digests
        finally:
            keeper.kill()

        shutil.rmtree(state_dir)
        progress: list[RestoreProgress] = []
        started = time.perf_counter()
        async with await TaskState.open(
            client.transport,
            state_dir=state_dir,
            pipeline="r9",
            stage="agg",
            partition=0,
            stores=STORES,
            committed=checkpoint.committed(),
            on_progress=progress.append,
        ) as task:
            seconds = time.perf_counter() - started
            assert task.restored_from == "changelog"
            assert {s: task.digest(s) for s in STORES} == digests
    restored = sum(p.restored for p in progress if p.done)
    assert restored > 0
    report(
        "R9",
        seed,
        kills=KILLS,
        max_readers=MAX_READERS,
        readers_full=0,
        restored_records=restored,
        restore_seconds=round(seconds, 3),
        restore_records_per_s=round(restored / seconds),
        digest_equal=True,
    )
