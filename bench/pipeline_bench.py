"""Measure pipelines end to end on the canonical payment workload (issue 4).

W1 (``w1_map`` then ``w1_pred``) from a source topic into a sink topic, and the
same behind ``key_by(user_id)`` (two stages through a repartition topic), each
run with ``streamflow.run(..., until_idle=True)`` on an embedded log. Timed:
from the start of the run (first read of the source topic) until every result
is durable in the sink topic and the run returned; producing the input is not
timed. In the same run, for ratios: the plain Python loop (``naive-fn`` of
``bench_naive.py``) and, when ``bytewax`` is importable, Bytewax's W1 flow.

    python bench/pipeline_bench.py                  # 1,000,000 events, 3 reps
    python bench/pipeline_bench.py --n 200000 --reps 1
    python bench/pipeline_bench.py --profile        # cProfile of one W1 run

Bytewax is never a dependency of streamflow: ``pip install bytewax==0.21.1``
into the bench environment to include it. ``--peers`` points at the directory
holding ``workload.py`` (default ``../shared/peers`` next to the repository).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
CHUNK = 5_000


def load_peers(path: Path) -> Any:
    sys.path.insert(0, str(path))
    import workload

    return workload


def write_input(directory: Path, events: list[dict[str, Any]], partitions: int) -> None:
    from streamflow.log import Log

    with Log.open(directory) as log:
        log.create_topic("payments", partitions=partitions)
        for p in range(partitions):
            part = events[p::partitions]
            for i in range(0, len(part), CHUNK):
                chunk = part[i : i + CHUNK]
                log.partition("payments", p).append_columns(
                    [None] * len(chunk), chunk, [e["ts"] for e in chunk]
                )


def count_output(directory: Path, topic: str) -> int:
    from streamflow.log import Log

    with Log.open(directory) as log:
        return sum(
            log.partition(topic, p.partition).end_offset for p in log.describe(topic).partitions
        )


def build(W: Any, two_stage: bool) -> Any:
    from streamflow import Pipeline

    p = Pipeline("bench")
    s = p.source("payments")
    if two_stage:
        s = s.key_by(lambda e: e["user_id"])
    s.map(W.w1_map).filter(W.w1_pred).sink("w1")
    return p


def run_case(
    W: Any, events: list[dict[str, Any]], two_stage: bool, partitions: int, profile: bool = False
) -> tuple[float, float, int]:
    import streamflow

    tmp = Path(tempfile.mkdtemp(prefix="sf-pipeline-bench-"))
    try:
        write_input(tmp, events, partitions)
        pipeline = build(W, two_stage)
        if profile:
            prof = cProfile.Profile()
            prof.enable()
        wall, cpu, _ = W.timed(streamflow.run, pipeline, str(tmp), True)
        if profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        return wall, cpu, count_output(tmp, "w1")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bytewax_w1(
    W: Any, peers: Path, events: list[dict[str, Any]]
) -> tuple[float, float, int] | None:
    try:
        import bytewax  # noqa: F401
    except ImportError:
        return None
    sys.path.insert(0, str(peers))
    import bench_bytewax as B

    out: list[Any] = []
    flow = B.flow_w1(B.ListSource(events, 1000), out)
    wall, cpu, _ = W.timed(B.run_main, flow)
    return wall, cpu, len(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    W = load_peers(a.peers)
    events, gen_s = W.prepare(a.n)
    ref = W.reference(events)
    print(f"generated {a.n:,} events in {gen_s:.2f}s (untimed); W1 expects {ref['w1_count']:,}")

    if a.profile:
        run_case(W, events, False, a.partitions, profile=True)
        return

    def naive(evs: list[dict[str, Any]]) -> list[Any]:
        out = []
        app = out.append
        for e in evs:
            r = W.w1_map(e)
            if W.w1_pred(r):
                app(r)
        return out

    results: list[dict[str, Any]] = []
    cases: list[tuple[str, Any]] = [
        ("W1 naive-fn (plain loop)", lambda: W.timed(naive, events)),
        ("W1 streamflow 1 stage", lambda: run_case(W, events, False, a.partitions)),
        ("W1 streamflow key_by, 2 stages", lambda: run_case(W, events, True, a.partitions)),
        ("W1 bytewax", lambda: bytewax_w1(W, a.peers, events)),
    ]
    for name, fn in cases:
        walls, cpus = [], []
        skipped = False
        for _ in range(a.reps):
            got = fn()
            if got is None:
                skipped = True
                break
            wall, cpu, res = got
            n_out = res if isinstance(res, int) else len(res)
            if n_out != ref["w1_count"]:
                raise SystemExit(f"{name}: {n_out} outputs, expected {ref['w1_count']}")
            walls.append(wall)
            cpus.append(cpu)
        if skipped:
            print(
                f"{name:<38} skipped: bytewax is not importable "
                "(pip install bytewax==0.21.1 into the bench environment)"
            )
            continue
        r = W.summarize(name, a.n, walls, cpus)
        results.append(r)
        print(W.fmt_row(r), flush=True)

    by = {r["name"]: r["median_eps"] for r in results}
    one = by["W1 streamflow 1 stage"]
    two = by["W1 streamflow key_by, 2 stages"]
    naive_eps = by["W1 naive-fn (plain loop)"]
    ratios = {
        "w1_vs_plain_loop": one / naive_eps,
        "two_stage_vs_w1": two / one,
    }
    if "W1 bytewax" in by:
        ratios["w1_vs_bytewax"] = one / by["W1 bytewax"]
    print("ratios:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    w1_met = "met" if ratios["w1_vs_plain_loop"] >= 0.25 else "NOT met"
    print(
        f"targets: W1 >= 0.25 x plain loop: {w1_met}; "
        f"2-stage >= 0.5 x W1: {'met' if ratios['two_stage_vs_w1'] >= 0.5 else 'NOT met'}"
    )
    W.emit(results, a.json, {"gen_s": gen_s, "ratios": ratios, "partitions": a.partitions})


if __name__ == "__main__":
    main()
