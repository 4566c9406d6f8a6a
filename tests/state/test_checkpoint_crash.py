from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pytest

import streamflow
from streamflow.state import TaskState, changelog_topic

from .checkpoint_child import KEYS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CHILD = Path(__file__).with_name("checkpoint_child.py")
ROOT = Path(__file__).parents[2]


def run_and_kill(root: Path, rng: random.Random) -> int:
    """Start the child, let it finish a few checkpoints, SIGKILL it mid-work; return last seen."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(root)],
        stdout=subprocess.PIPE,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    last = 0
    try:
        ready = proc.stdout.readline().split()
        assert ready[0] == b"READY", ready
        for _ in range(rng.randint(1, 3)):
            line = proc.stdout.readline().split()
            assert line[0] == b"CHECKPOINT", line
            last = int(line[1])
        time.sleep(rng.uniform(0, 0.3))  # lands inside the next checkpoint's work
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        proc.stdout.close()
    return last


@asynccontextmanager
async def reopen(root: Path, committed: Any = None) -> AsyncIterator[TaskState]:
    async with streamflow.connect(root / "data", cleaner=False) as client:
        task = await TaskState.open(
            client.transport,
            state_dir=root / "state",
            pipeline="crash",
            stage="count",
            partition=0,
            stores=["s"],
            committed={} if committed is None else committed,
        )
        async with task:
            yield task


async def changelog_latest(root: Path) -> dict[Any, Any]:
    async with streamflow.connect(root / "data", cleaner=False) as client:
        transport = client.transport
        topic = changelog_topic("crash", "s")
        start, end = await transport.offsets(topic, 0)
        latest: dict[Any, Any] = {}
        while start < end:
            found = await transport.fetch({(topic, 0): start}, timeout=0)
            for batch in found[(topic, 0)]:
                for key, value in zip(batch.keys, batch.values, strict=True):
                    # records carry the LMDB bytes: the value is unpacked once more
                    latest[key] = None if value is None else msgpack.unpackb(value)
                start = batch.next_offset
        return latest


@pytest.mark.slow
async def test_sigkill_mid_checkpoint_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STREAMFLOW_SEED", "5")))
    seen = 0
    for _ in range(5):
        seen = max(seen, run_and_kill(tmp_path, rng))
        async with reopen(tmp_path) as task:
            offset = task.input_offsets[("in", 0)]
            assert offset >= seen  # nothing acknowledged is lost
            values = {msgpack.unpackb(v) for _, v in task.store.scan("s")}
            assert values == {offset}  # every key reflects exactly that offset
            assert task.store.count("s") == KEYS
            digest = task.digest("s")
            committed = task.last_checkpoint.committed()
        # the changelog, after compensation, says the same as LMDB
        assert set((await changelog_latest(tmp_path)).values()) == {offset}

    shutil.rmtree(tmp_path / "state")
    async with reopen(tmp_path, committed) as task:
        assert task.restored_from == "changelog"
        assert task.digest("s") == digest
