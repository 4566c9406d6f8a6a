"""Checkpoint forever in a loop, printing ``CHECKPOINT <round>`` after each one.

Run by test_checkpoint_crash.py, which SIGKILLs it at random moments. Every
key of store ``s`` holds the round number, and the input offset of round r is
r, so a consistent checkpoint has every value equal to its input offset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

import streamflow
from streamflow.state import TaskState

KEYS = 20_000


async def main(root: Path) -> None:
    async with streamflow.connect(root / "data", cleaner=False) as client:
        task = await TaskState.open(
            client.transport,
            state_dir=root / "state",
            pipeline="crash",
            stage="count",
            partition=0,
            stores=["s"],
            committed={},
        )
        first = task.input_offsets.get(("in", 0), 0) + 1
        view = task.view("s")
        print("READY", first, flush=True)
        for r in range(first, first + 1_000_000):
            for k in range(KEYS):
                view.put(k, r)
            await task.checkpoint({("in", 0): r})
            print("CHECKPOINT", r, flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
