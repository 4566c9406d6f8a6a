"""Delete a finished job's state directory and run it on new input: state comes back."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
import trio

from streamflow import Pipeline, windows
from streamflow.runtime import run_async

from .helpers import produce, read

if TYPE_CHECKING:
    from pathlib import Path


def job() -> Pipeline:
    # one source partition: each repartition partition has one writer, so runs agree
    p = Pipeline("restorejob", parallelism=2)
    keyed = p.source("clicks", timestamp=lambda v: v["ts"]).key_by(lambda v: v["user"])
    keyed.count("clicks").sink("counts")
    keyed.window(windows.tumbling(ms=100)).aggregate(
        "spend", initial=lambda: 0, fold=lambda acc, v: acc + v["cents"]
    ).sink("windows")
    return p


def clicks(first: int, n: int) -> list[dict[str, Any]]:
    return [{"user": i % 7, "ts": 10 * i, "cents": i} for i in range(first, first + n)]


async def run_once(data: Path, mode: str) -> None:
    with trio.fail_after(60):
        await run_async(job(), data, until_idle=True, processing=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
async def test_state_is_rebuilt_from_the_changelog_after_the_state_dir_is_deleted(
    tmp_path: Path, mode: str
) -> None:
    for name in ("kept", "lost"):
        await produce(tmp_path / name, "clicks", clicks(0, 300), partitions=1)
        await run_once(tmp_path / name, mode)
    state = tmp_path / "lost" / "state" / "restorejob"
    assert any(state.iterdir())
    shutil.rmtree(state)
    for name in ("kept", "lost"):
        # windows up to ts 2990 closed at the end of the first run; these come later
        await produce(tmp_path / name, "clicks", clicks(300, 200), partitions=1)
        await run_once(tmp_path / name, mode)

    assert any(state.iterdir())
    counts = [(r.key, r.value) for r in await read(tmp_path / "lost", "counts")]
    assert len(counts) == 500  # one update per input, none twice
    final: dict[int, int] = {}
    for key, value in counts:
        final[key] = max(final.get(key, 0), value)
    assert final == {u: sum(1 for i in range(500) if i % 7 == u) for u in range(7)}
    for topic in ("counts", "windows"):
        kept = sorted((r.key, str(r.value)) for r in await read(tmp_path / "kept", topic))
        lost = sorted((r.key, str(r.value)) for r in await read(tmp_path / "lost", topic))
        assert lost == kept
