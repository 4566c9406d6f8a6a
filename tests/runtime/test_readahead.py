"""The read-ahead: the next fetch runs on a worker thread while a batch is processed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from streamflow import Pipeline
from streamflow.errors import CorruptBatch
from streamflow.log import Log, StoredReader
from streamflow.log.batch import HEADER_SIZE
from streamflow.log.embedded import EmbeddedTransport
from streamflow.log.naming import log_path
from streamflow.runtime import run_async
from streamflow.runtime.readahead import ReadAhead
from tests.log.helpers import batch_positions, flip_byte, partition_dir

from .helpers import read

if TYPE_CHECKING:
    from pathlib import Path


def fill(log: Log, batches: int, size: int = 100, value_bytes: int = 100) -> None:
    """Append *batches* batches of *size* records to topic ``t``."""
    log.create_topic("t")
    p = log.partition("t", 0)
    for b in range(batches):
        values = [{"i": b * size + i, "pad": "x" * value_bytes} for i in range(size)]
        p.append_columns([None] * size, values, [b] * size)


async def test_read_ahead_returns_what_a_fetch_returns_decoded_on_take(tmp_path: Path) -> None:
    log = Log.open(tmp_path)
    fill(log, 20)
    transport = EmbeddedTransport(log, owns_log=True)
    assert isinstance(transport, StoredReader)
    try:
        at = {("t", 0): 250}  # inside a batch: the records before 250 are dropped
        ahead = ReadAhead(dict(at))
        await ahead.run(transport, 5_000)
        got = await ahead.take(dict(at))
        assert got == await transport.fetch(at, max_bytes=5_000, timeout=0)
        assert got[("t", 0)][0].offsets[0] == 250
        # A task that moved on meanwhile gets nothing from it.
        other = ReadAhead(dict(at))
        await other.run(transport, 5_000)
        assert await other.take({("t", 0): 300}) == {}
    finally:
        await transport.aclose()


async def test_a_corrupt_batch_read_ahead_raises_corrupt_batch_on_take(tmp_path: Path) -> None:
    log = Log.open(tmp_path)
    fill(log, 5)
    path = log_path(partition_dir(tmp_path), 0)
    third = batch_positions(path)[2]
    flip_byte(path, third + HEADER_SIZE + 1)
    transport = EmbeddedTransport(log, owns_log=True)
    try:
        ahead = ReadAhead({("t", 0): 0})
        await ahead.run(transport, 1 << 20)  # reads the bytes, does not look inside
        with pytest.raises(CorruptBatch) as caught:
            await ahead.take({("t", 0): 0})
        assert caught.value.path == path
        assert caught.value.position == third
    finally:
        await transport.aclose()


async def test_a_job_whose_source_turns_corrupt_further_on_stops_with_corrupt_batch(
    tmp_path: Path,
) -> None:
    # 6 MiB of source: more than one fetch (4 MiB), so later batches are read ahead.
    with Log.open(tmp_path) as log:
        fill(log, 60, size=1_000)
    path = log_path(partition_dir(tmp_path), 0)
    late = batch_positions(path)[50]
    flip_byte(path, late + HEADER_SIZE + 1)
    p = Pipeline("ra")
    p.source("t").map(lambda v: v["i"]).sink("out")
    with trio.fail_after(60), pytest.raises(CorruptBatch) as caught:
        await run_async(p, tmp_path, until_idle=True)
    assert caught.value.path.name == path.name
    assert caught.value.position == late
    # Everything before the corrupt batch went through, once.
    done = [r.value for r in await read(tmp_path, "out")]
    assert done == list(range(len(done)))
    assert 0 < len(done) <= 50_000
