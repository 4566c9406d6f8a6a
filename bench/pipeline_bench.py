"""Measure stateless pipelines end to end on the canonical payment workload (issue 4).

W1 (``w1_map`` then ``w1_pred``) from a source topic into a sink topic, and the
same behind ``key_by(user_id)`` (two stages through a repartition topic), each
run with ``streamflow.run(..., until_idle=True)`` on an embedded log in a fresh
process (see ``peers.py``: producing the input is not timed; the run is timed
from its call until every result is durable in the sink topic). In the same run,
for ratios: the plain Python loop (``naive-fn`` of ``bench_naive.py``) and, when
``bytewax`` is importable, Bytewax's W1 flow.

    python bench/pipeline_bench.py                  # 1,000,000 events, median of 3
    python bench/pipeline_bench.py --n 200000 --reps 1
    python bench/pipeline_bench.py --profile        # cProfile of one W1 run (peers-profile.txt)

Bytewax is never a dependency of streamflow: ``bash bench/run_peers.sh`` makes
``bench/.venv`` with it; run this script with ``bench/.venv/bin/python``.
``--peers`` points at the directory holding ``workload.py`` (default
``../shared/peers`` next to the repository).

Targets: W1 >= 0.25 x the plain loop (about 0.5 x Bytewax, which runs in memory);
the two-stage variant >= 0.5 x single-stage W1.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402


def main() -> None:
    """Run W1 in one and two stages against the plain loop and Bytewax; print the ratios."""
    a = peers.parse()
    a.peers = a.peers.resolve()
    a.workloads = "W1"
    bench = peers.Bench(a)
    load = os.getloadavg()
    print(f"generated {a.n:,} events in {bench.gen_s:.2f}s (untimed); load average {load}")
    try:
        if a.profile:
            peers.run_child(a, "W1", bench.fresh(1), "at_least_once", a.profile)
            print(f"profile written to {a.profile}")
            return
        if not a.no_peers:
            bench.naive("W1")
            bench.bytewax("W1")
        bench.streamflow("W1")
        bench.streamflow("W1-2stage")
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    ratios = peers.report(bench, ["W1"])
    after = os.getloadavg()
    print(f"load average after {after}")
    bench.W.emit(bench.rows, a.json, {"ratios": ratios, "load_before": load, "load_after": after})


if __name__ == "__main__":
    main()
