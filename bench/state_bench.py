"""Measure stateful pipelines end to end and the restore rate of their state (issue 5).

W2 (``key_by`` user, 60 s tumbling window count and sum) and W3 (keyed running
state with the trailing-60 s fraud rule, via ``process``) run in streamflow with
LMDB state, changelog and checkpoints on (``commit_interval_ms`` 1000), each in
a fresh process, timed as in ``peers.py``; in the same run the plain Python loop
and Bytewax (in memory, no durability) from ``../shared/peers/`` run the same
per-event functions. After the last repetition of each workload the store is
rebuilt from its changelog into an empty LMDB directory, which is what a task
does when its state directory is lost; the rate is changelog records applied
per second.

    python bench/state_bench.py                       # 1,000,000 events, median of 3
    python bench/state_bench.py --n 200000 --reps 1   # a quick look
    bench/.venv/bin/python bench/state_bench.py       # with Bytewax (see run_peers.sh)

Targets (issues 5 and 8): W2 >= 5 x Bytewax W2, W3 >= 1.5 x Bytewax W3,
restore >= 500,000 records/s (issue 5 asked 200,000).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402

STORES = {"W2": "w2", "W3": "w3"}
RESTORE_TARGET = 500_000


async def rebuild(directory: Path, store_name: str, into: Path) -> tuple[int, float, float]:
    """Rebuild *store_name* of every task from its changelog in *directory* into *into*.

    Returns the number of changelog records applied, the seconds it took and the
    CPU seconds it used (threads included).
    """
    import streamflow
    from streamflow.state import StateStore, changelog_topic
    from streamflow.state.restore import rebuild_store

    topic = changelog_topic("bench", store_name)
    applied = 0
    seconds = cpu = 0.0
    async with streamflow.connect(directory) as client:
        transport = client.transport
        description = await transport.describe(topic)
        for info in description.partitions:
            store = StateStore.open(into / f"restore-{info.partition}", [store_name])
            try:
                _, end = await transport.offsets(topic, info.partition)
                c0, t0 = time.process_time(), time.perf_counter()
                applied += await rebuild_store(
                    transport, store, store_name, topic, info.partition, end
                )
                seconds += time.perf_counter() - t0
                cpu += time.process_time() - c0
            finally:
                store.close()
    return applied, seconds, cpu


def restore_rate(bench: peers.Bench, workload: str, reps: int) -> dict[str, Any]:
    """Time the rebuild of *workload*'s store from the last run's changelog (median of *reps*)."""
    directory = bench.tmp / "run"
    rates: list[float] = []
    cpu_rates: list[float] = []
    times: list[float] = []
    applied = 0
    for _ in range(reps):
        into = Path(tempfile.mkdtemp(prefix="restore-", dir=bench.tmp))
        try:
            applied, seconds, cpu = trio.run(rebuild, directory, STORES[workload], into)
        finally:
            shutil.rmtree(into, ignore_errors=True)
        rates.append(applied / seconds)
        cpu_rates.append(applied / cpu)
        times.append(seconds)
    row = {
        "name": f"{workload} restore from changelog",
        "records": applied,
        "median_records_per_s": statistics.median(rates),
        "min_records_per_s": min(rates),
        "max_records_per_s": max(rates),
        "median_records_per_cpu_s": statistics.median(cpu_rates),
        "median_seconds": statistics.median(times),
    }
    print(
        f"{row['name']:<38} {applied:>9,} records  median "
        f"{row['median_records_per_s']:>12,.0f}/s  [{min(rates):,.0f} .. {max(rates):,.0f}]  "
        f"per CPU-second {row['median_records_per_cpu_s']:,.0f}  "
        f"in {row['median_seconds']:.3f}s",
        flush=True,
    )
    return row


def main() -> None:
    """Run W2 and W3 against the peers, then the restore rates, and print the targets."""
    a = peers.parse()
    a.peers = a.peers.resolve()
    workloads = [w for w in a.workloads.split(",") if w in STORES] or list(STORES)
    bench = peers.Bench(a)
    load = os.getloadavg()
    print(f"generated {a.n:,} events in {bench.gen_s:.2f}s (untimed); load average {load}")
    restores: list[dict[str, Any]] = []
    try:
        for w in workloads:
            if not a.no_peers:
                bench.naive(w)
                bench.bytewax(w)
            bench.streamflow(w)
            restores.append(restore_rate(bench, w, a.reps))
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    ratios = peers.report(bench, workloads)
    for row in restores:
        ok = row["median_records_per_s"] >= RESTORE_TARGET
        print(
            f"  {'ok ' if ok else 'MISS'} {row['name']} >= {RESTORE_TARGET:,} records/s "
            f"({row['median_records_per_s']:,.0f}; per CPU-second "
            f"{row['median_records_per_cpu_s']:,.0f})"
        )
    after = os.getloadavg()
    print(f"load average after {after}")
    bench.W.emit(
        bench.rows + restores, a.json, {"ratios": ratios, "load_before": load, "load_after": after}
    )


if __name__ == "__main__":
    main()
