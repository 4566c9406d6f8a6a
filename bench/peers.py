"""Compare streamflow with its peers on the canonical payment workload, side by side in one run.

W1 (stateless: ``w1_map`` then ``w1_pred``), W2 (``key_by`` user, 60 s tumbling
window count and sum) and W3 (keyed running state with the trailing-60 s fraud
rule, written with ``process``) run in streamflow through its durable log, with
LMDB state and changelog for W2 and W3; in the same run the plain Python loop
(``bench_naive.py``) and Bytewax (``bench_bytewax.py``, in memory, no
durability) from ``../shared/peers/`` run the same per-event functions, and
Pathway too when it is importable. Every result is checked against
``workload.reference``; a failed check stops the run.

What is timed for streamflow: the input is produced to the ``payments`` topic
first (not timed); then a fresh Python process (which never held the input list)
runs ``streamflow.run(pipeline, DIR, until_idle=True)``, timed from its call until
every result is durable in the sink topic and the run returned. That process
also reports its peak RSS and an RSS trace. Peers are timed as in
``../shared/peers/`` (``run_main`` for Bytewax, the loop for the plain loop).

    python bench/peers.py                          # 1,000,000 events, median of 3
    python bench/peers.py --n 200000 --reps 1      # a quick look
    python bench/peers.py --workloads W2 --profile # cProfile of one streamflow W2 run
    bash bench/run_peers.sh                        # the same, from a fresh clone, with Bytewax

Options: ``--exactly-once`` runs W2 at-least-once and under
``processing="exactly_once"`` in alternating pairs, one pair per repetition (the
overhead is the median of the paired time ratios), ``--two-stage`` adds W1 behind
``key_by``, ``--scaling`` adds W1 and W2 over 2 partitions with 1 and 2 worker
processes sharing a broker, ``--w3-parts`` adds W3 with its state in a plain dict and
with a function that does nothing (what W3's time is made of), ``--no-peers`` leaves the
peers out, ``--json PATH`` saves
every row. Besides the events/s table, a second table divides by the CPU seconds each
system used, which other load on a shared machine inflates much less than wall time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEERS = REPO.parent / "shared" / "peers"
CHUNK = 5_000
SOURCE = "payments"
SINK = "out"
WORKLOADS = ("W1", "W2", "W3")
#: Grace of the scaling runs: two source partitions are read by tasks that need not
#: keep pace in event time, so with no grace a window can close before the slower
#: task's records for it arrive (late records, a failed check); 2,000 s covers the
#: whole input of 1,000,000 events (~1,000 s of event time).
SCALING_GRACE_MS = 2_000_000


# -- the workload, in streamflow ------------------------------------------------------------


def load_workload(peers: Path) -> Any:
    """Import ``workload.py`` (and make the peers' modules importable) from *peers*."""
    if str(peers) not in sys.path:
        sys.path.insert(0, str(peers))
    return importlib.import_module("workload")


class Trail(list):  # type: ignore[type-arg]
    """The trailing-60 s timestamps of W3's state: a list (msgpack stores it) with ``popleft``.

    ``w3_step`` keeps the timestamps in a ``deque``, which msgpack cannot store;
    this list subclass has the calls ``w3_step`` makes (``append``, ``[0]``,
    ``popleft``, ``len``) and is stored as an array. It holds a dozen items at
    most, so ``pop(0)`` is as cheap as a deque's ``popleft``.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        """Remove and return the oldest timestamp."""
        return self.pop(0)


def build(W: Any, workload: str) -> Any:
    """Return the streamflow pipeline of *workload*.

    ``W1``, ``W2``, ``W3``; ``W1-2stage`` is W1 behind ``key_by``; ``W2-grace`` is W2
    with windows kept open for ``SCALING_GRACE_MS`` (for inputs of several
    partitions, whose tasks advance in event time at their own pace);
    ``W3-dict`` and ``W3-noop`` are W3 with its state in a plain dict, and with
    a function that does nothing (``--w3-parts``: what W3's time is made of).
    """
    from streamflow import Pipeline, windows

    p = Pipeline("bench")
    if workload in ("W1", "W1-2stage"):
        s = p.source(SOURCE)
        if workload == "W1-2stage":
            s = s.key_by(user_of)
        s.map(W.w1_map).filter(W.w1_pred).sink(SINK)
        return p
    s = p.source(SOURCE, timestamp=ts_of).key_by(user_of)
    if workload in ("W2", "W2-grace"):
        empty = W.W2_EMPTY
        grace = SCALING_GRACE_MS if workload == "W2-grace" else 0
        (
            s.window(windows.tumbling(ms=W.WINDOW_MS), grace_ms=grace)
            .aggregate("w2", initial=lambda: empty, fold=W.w2_fold)
            .sink(SINK)
        )
        return p
    step = W.w3_step
    if workload == "W3-noop":  # the framework's own cost: a process function doing nothing
        s.process("w3", lambda ctx, key, value: None).sink(SINK)
        return p
    if workload == "W3-dict":  # w3_step on a plain dict: no state handle, nothing durable
        trails: dict[Any, Any] = {}

        def in_memory(ctx: Any, key: Any, value: Any) -> None:
            state, alerts = step(trails.get(key), value)
            trails[key] = state
            for alert in alerts:
                ctx.emit(alert)

        s.process("w3", in_memory).sink(SINK)
        return p

    def fraud(ctx: Any, key: Any, value: Any) -> None:
        state = ctx.state.get()
        if state is None:
            state = [0, 0.0, Trail()]  # what w3_step starts a key with, storable
        elif type(state[2]) is not Trail:
            state[2] = Trail(state[2])  # loaded from LMDB or the changelog
        state, alerts = step(state, value)
        ctx.state.set(state)
        for alert in alerts:
            ctx.emit(alert)

    s.process("w3", fraud).sink(SINK)
    return p


def user_of(e: dict[str, Any]) -> Any:
    """Return the event's user (the key of W2 and W3)."""
    return e["user_id"]


def ts_of(e: dict[str, Any]) -> int:
    """Return the event's time (ms), the event time of W2 and W3."""
    ts: int = e["ts"]
    return ts


def write_input(directory: Path, events: list[dict[str, Any]], partitions: int) -> None:
    """Produce *events* to the ``payments`` topic of a new log in *directory*. Blocking."""
    from streamflow.log import Log

    with Log.open(directory) as log:
        log.create_topic(SOURCE, partitions=partitions)
        for p in range(partitions):
            part = events[p::partitions]
            for i in range(0, len(part), CHUNK):
                chunk = part[i : i + CHUNK]
                log.partition(SOURCE, p).append_columns(
                    [None] * len(chunk), chunk, [e["ts"] for e in chunk]
                )


def read_output(directory: Path, topic: str = SINK) -> list[Any]:
    """Return every value of *topic* in the log at *directory*. Blocking."""
    from streamflow.log import Log

    out: list[Any] = []
    with Log.open(directory) as log:
        for info in log.describe(topic).partitions:
            part = log.partition(topic, info.partition)
            offset = part.start_offset
            while offset < part.end_offset:
                batches = part.read_batches(offset, max_bytes=8 << 20)
                for batch in batches:
                    out.extend(batch.values)
                offset = batches[-1].next_offset
    return out


def check(W: Any, workload: str, values: list[Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Check streamflow's sink values of *workload* against the reference."""
    if workload.startswith("W1"):
        return {"ok": len(values) == ref["w1_count"], "outputs": len(values)}
    if workload == "W2":
        rows = (
            (v["key"], (v["start"] - W.T0_MS) // W.WINDOW_MS, v["value"][0], v["value"][1])
            for v in values
        )
        result: dict[str, Any] = W.check_w2(rows, ref)
        ends_ok = all(v["end"] - v["start"] == W.WINDOW_MS for v in values)
        result["ok"] = result["ok"] and ends_ok
        result["outputs"] = result["windows"]
        return result
    if workload == "W3-noop":
        return {"ok": not values, "outputs": len(values)}
    alerts = [tuple(v) for v in values]
    return {
        "ok": len(alerts) == ref["w3_alerts"] and W.alerts_digest(alerts) == ref["w3_digest"],
        "outputs": len(alerts),
    }


# -- the timed child process ----------------------------------------------------------------


def rss_mib(field: str = "VmRSS") -> float:
    """Return this process's resident set size (or *field* of /proc/self/status) in MiB.

    ``VmHWM`` is the peak; unlike ``ru_maxrss`` it is not inherited from the
    parent process across ``fork`` and ``exec``.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(a: argparse.Namespace) -> None:
    """Run one streamflow job on ``--dir`` and print its figures as one JSON line."""
    import gc

    import streamflow

    W = load_workload(a.peers)
    pipeline = build(W, a.child)
    # Import what the run imports lazily, as the peers import their engine before timing.
    import streamflow.log.client
    import streamflow.operators.process
    import streamflow.operators.windows
    import streamflow.runtime.run
    import streamflow.state  # noqa: F401

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append((time.perf_counter() - t0, rss_mib()))

    sampler = threading.Thread(target=sample, daemon=True)
    gc.collect()
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    sampler.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    streamflow.run(pipeline, str(a.dir), True, a.processing)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    stop.set()
    if prof is not None:
        import pstats

        prof.disable()
        with open(a.profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(40)
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
    peak = rss_mib("VmHWM")
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_rss_mib": peak, "rss": samples}))


def run_child(
    a: argparse.Namespace, workload: str, directory: Path, processing: str, profile: str = ""
) -> dict[str, Any]:
    """Run *workload* on *directory* in a fresh process; return its JSON figures."""
    command = [sys.executable, __file__, "--child", workload, "--dir", str(directory)]
    command += ["--peers", str(a.peers), "--processing", processing]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"streamflow {workload} failed:\n{done.stderr[-4000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def rss_at(samples: list[list[float]], fraction: float) -> float:
    """Return the RSS sample taken nearest to *fraction* of the run (0 when none)."""
    if not samples:
        return 0.0
    end = samples[-1][0]
    return min(samples, key=lambda s: abs(s[0] - fraction * end))[1]


# -- the runner -----------------------------------------------------------------------------


class Bench:
    """The shared input (generated once), its reference answers and the result rows."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.W = load_workload(a.peers)
        self.events, self.gen_s = self.W.prepare(a.n)
        self.ref = self.W.reference(self.events)
        self.rows: list[dict[str, Any]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="sf-peers-", dir=a.dir))
        self._templates: dict[int, Path] = {}
        #: Set by ``exactly_once_pairs``: median paired overheads and the pairs' figures.
        self.eo_overhead: dict[str, Any] = {}

    def template(self, partitions: int) -> Path:
        """Return a log directory holding the input over *partitions* (made once)."""
        if partitions not in self._templates:
            path = self.tmp / f"input-{partitions}"
            write_input(path, self.events, partitions)
            self._templates[partitions] = path
        return self._templates[partitions]

    def fresh(self, partitions: int) -> Path:
        """Return a copy of the input log for one repetition (not timed)."""
        target = self.tmp / "run"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.template(partitions), target)
        return target

    def add(self, name: str, walls: list[float], cpus: list[float], **extra: Any) -> None:
        """Record a row (median of *walls*) and print it."""
        row = self.W.summarize(name, self.a.n, walls, cpus, **extra)
        self.rows.append(row)
        line = self.W.fmt_row(row)
        if "peak_rss_mib" in extra:
            line += f"  rss peak {extra['peak_rss_mib']:.0f} MiB"
        print(line, flush=True)

    def streamflow(
        self, workload: str, processing: str = "at_least_once", partitions: int = 1
    ) -> None:
        """Time *workload* in streamflow (median of ``--reps``), checking every repetition."""
        runs = [self.run_checked(workload, processing, partitions) for _ in range(self.a.reps)]
        self.add_streamflow(workload, processing, partitions, runs)

    def run_checked(self, workload: str, processing: str, partitions: int) -> dict[str, Any]:
        """Run *workload* once on a fresh copy of the input; check and return its figures."""
        directory = self.fresh(partitions)
        figures = run_child(self.a, workload, directory, processing)
        verdict = check(self.W, workload, read_output(directory), self.ref)
        if not verdict["ok"]:
            raise SystemExit(f"streamflow {workload} {processing}: check FAILED {verdict}")
        return figures

    def add_streamflow(
        self, workload: str, processing: str, partitions: int, runs: list[dict[str, Any]]
    ) -> None:
        """Record the row of *runs* (one child's figures per repetition)."""
        walls = [r["wall"] for r in runs]
        cpus = [r["cpu"] for r in runs]
        suffix = "" if processing == "at_least_once" else f" {processing}"
        suffix += "" if partitions == 1 else f" {partitions} partitions"
        trace = runs[walls.index(sorted(walls)[len(walls) // 2])]["rss"]
        self.add(
            f"{workload} streamflow{suffix}",
            walls,
            cpus,
            impl="streamflow",
            workload=workload,
            processing=processing,
            peak_rss_mib=max(r["peak_rss_mib"] for r in runs),
            rss_mid_mib=rss_at(trace, 0.5),
            rss_end_mib=rss_at(trace, 1.0),
        )

    def exactly_once_pairs(self, workload: str) -> None:
        """Time *workload* at-least-once and exactly-once in alternating pairs.

        Each repetition runs both modes back to back, the first of the pair
        alternating between repetitions, so load that drifts over the run
        weighs on both; the overhead is the median of the per-pair ratios
        (wall and CPU), which is steadier than a ratio of two medians taken
        minutes apart.
        """
        modes = ("at_least_once", "exactly_once")
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for rep in range(self.a.reps):
            for mode in modes if rep % 2 == 0 else modes[::-1]:
                runs[mode].append(self.run_checked(workload, mode, 1))
        for mode in modes:
            self.add_streamflow(workload, mode, 1, runs[mode])
        pairs = list(zip(runs["at_least_once"], runs["exactly_once"], strict=True))
        self.eo_overhead = {
            "wall": statistics.median(eo["wall"] / alo["wall"] - 1 for alo, eo in pairs),
            "cpu": statistics.median(eo["cpu"] / alo["cpu"] - 1 for alo, eo in pairs),
            "pairs": [[alo["wall"], eo["wall"], alo["cpu"], eo["cpu"]] for alo, eo in pairs],
        }
        print(
            f"{workload} exactly-once overhead, median of {len(pairs)} paired runs: "
            f"wall {self.eo_overhead['wall']:+.1%}, CPU {self.eo_overhead['cpu']:+.1%}",
            flush=True,
        )

    def naive(self, workload: str) -> None:
        """Time the plain loop (``naive-fn``) of *workload*."""
        naive = importlib.import_module("bench_naive")

        fn = {"W1": naive.w1_fn, "W2": naive.w2_fn, "W3": naive.w3_fn}[workload]
        walls, cpus = [], []
        for _ in range(self.a.reps):
            wall, cpu, res = self.W.timed(fn, self.events)
            if not naive.check(workload, res, self.ref)["ok"]:
                raise SystemExit(f"plain loop {workload}: check FAILED")
            walls.append(wall)
            cpus.append(cpu)
        self.add(f"{workload} plain loop", walls, cpus, impl="naive", workload=workload)

    def floor(self, workload: str) -> None:
        """Time the plain loop plus the msgpack work a durable run cannot skip.

        The input is packed into 5,000-record payloads first (not timed). Timed:
        unpacking them (reading the source), for W2 and W3 packing the values with
        their keys again (the append to the repartition topic between the stages;
        the in-process hand-off gives the next stage the unpacked values, so they
        are not unpacked twice), then the plain loop over the result. No
        framework, no I/O: the ceiling of this design.
        """
        naive = importlib.import_module("bench_naive")
        import msgpack

        fn = {"W1": naive.w1_fn, "W2": naive.w2_fn, "W3": naive.w3_fn}[workload]
        events = self.events
        payloads = [
            msgpack.packb([None, None, [None] * len(events[i : i + CHUNK]), events[i : i + CHUNK]])
            for i in range(0, len(events), CHUNK)
        ]
        repartition = workload != "W1"

        def run() -> Any:
            decoded: list[Any] = []
            for payload in payloads:
                decoded += msgpack.unpackb(payload)[3]
            if repartition:
                for i in range(0, len(decoded), CHUNK):
                    chunk = decoded[i : i + CHUNK]
                    msgpack.packb([None, None, [e["user_id"] for e in chunk], chunk])
            return fn(decoded)

        walls, cpus = [], []
        for _ in range(self.a.reps):
            wall, cpu, res = self.W.timed(run)
            if not naive.check(workload, res, self.ref)["ok"]:
                raise SystemExit(f"codec floor {workload}: check FAILED")
            walls.append(wall)
            cpus.append(cpu)
        self.add(f"{workload} codec floor", walls, cpus, impl="floor", workload=workload)

    def bytewax(self, workload: str) -> None:
        """Time Bytewax on *workload* (in memory), or say why it is skipped."""
        if importlib.util.find_spec("bytewax") is None:
            print(f"{workload} bytewax: skipped (not importable; use bench/run_peers.sh)")
            return
        bw = importlib.import_module("bench_bytewax")

        walls, cpus = [], []
        for _ in range(self.a.reps):
            out: list[Any] = []
            flow = bw.FLOWS[workload](bw.ListSource(self.events, 1000), out)
            wall, cpu, _ = self.W.timed(bw.run_main, flow)
            if not bw.check(workload, out, self.ref)["ok"]:
                raise SystemExit(f"bytewax {workload}: check FAILED")
            walls.append(wall)
            cpus.append(cpu)
            del out, flow
        self.add(f"{workload} bytewax", walls, cpus, impl="bytewax", workload=workload)

    def pathway(self, workloads: list[str]) -> None:
        """Run ``bench_pathway.py`` (its own process) when Pathway is importable."""
        if importlib.util.find_spec("pathway") is None:
            print("pathway: skipped (not importable; pip install pathway==0.33.0)")
            return
        out = self.tmp / "pathway.json"
        wanted = [w for w in workloads if w in ("W1", "W2")]
        command = [sys.executable, str(self.a.peers / "bench_pathway.py"), "--n", str(self.a.n)]
        command += ["--reps", str(self.a.reps), "--workloads", ",".join(wanted)]
        subprocess.run([*command, "--json", str(out)], check=True, cwd=self.a.peers)
        for row in json.loads(out.read_text())["results"]:
            row["name"] = f"{row['workload']} pathway"
            self.rows.append(row)
            print(self.W.fmt_row(row), flush=True)

    def scaling(self) -> None:
        """Time W1 and W2 over 2 partitions with 1 and 2 worker processes sharing a broker.

        W2 keeps ``SCALING_GRACE_MS`` of grace (see there). Every repetition is
        checked against the reference; a failed check is reported in the row's
        name (``INCOMPLETE``) instead of stopping the run, since it is a finding
        about several processes, not a measurement to drop.
        """
        for workload, check_as in (("W1", "W1"), ("W2-grace", "W2")):
            job = self.tmp / f"{check_as}_job.py"
            job.write_text(
                "import sys\n"
                f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                "import peers\n"
                f"W = peers.load_workload(peers.Path({str(self.a.peers)!r}))\n"
                f"pipeline = peers.build(W, {workload!r})\n"
            )
            for processes in (1, 2):
                walls, cpus = [], []
                failed = 0
                for _ in range(self.a.reps):
                    directory = self.fresh(2)
                    wall, cpu = run_on_broker(directory, job, processes, self.tmp / "state")
                    verdict = check(self.W, check_as, read_output(directory), self.ref)
                    if not verdict["ok"]:
                        failed += 1
                        print(f"{check_as} with {processes} processes: check FAILED {verdict}")
                    walls.append(wall)
                    cpus.append(cpu)
                note = f" INCOMPLETE in {failed} of {len(walls)}" if failed else ""
                self.add(
                    f"{check_as} streamflow broker, {processes} process(es){note}",
                    walls,
                    cpus,
                    impl="streamflow",
                    workload=check_as,
                    processes=processes,
                    failed_checks=failed,
                )


def run_on_broker(directory: Path, job: Path, processes: int, state: Path) -> tuple[float, float]:
    """Serve *directory* with a broker and run *job* in *processes* workers; return wall, CPU."""
    shutil.rmtree(state, ignore_errors=True)
    broker = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli", "broker", "--data", str(directory), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        command = [sys.executable, "-m", "streamflow.cli", "run", str(job)]
        command += ["--broker", f"tcp://127.0.0.1:{port}", "--until-idle"]
        command += ["--processes", str(processes), "--state-dir", str(state)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    finally:
        broker.terminate()
        broker.wait(timeout=30)
    return wall, cpu


TARGETS = {"W1": 0.5, "W2": 5.0, "W3": 1.5}


def _ratio_table(
    title: str, rates: dict[str, float], workloads: list[str], suffix: str
) -> dict[str, float]:
    """Print one table of *rates* with streamflow's ratio to each peer; return the ratios."""
    ratios: dict[str, float] = {}
    print(f"\n{title} and streamflow's ratio to each peer")
    peers = ("plain loop", "codec floor", "bytewax", "pathway")
    print(f"{'workload':<10} {'streamflow':>12} " + " ".join(f"{p:>21}" for p in peers))
    for w in workloads:
        sf = rates.get(f"{w} streamflow")
        cells = []
        for peer in peers:
            other = rates.get(f"{w} {peer}")
            if other and sf:
                ratios[f"{w} vs {peer}{suffix}"] = sf / other
                cells.append(f"{other:>12,.0f} ({sf / other:.2f}x)")
            else:
                cells.append(f"{'-':>21}")
        print(f"{w:<10} {sf or 0:>12,.0f} " + " ".join(cells))
    return ratios


def report(bench: Bench, workloads: list[str]) -> dict[str, float]:
    """Print streamflow's ratio to each peer and the targets; return the ratios."""
    by = {r["name"]: r["median_eps"] for r in bench.rows}
    cpu = {r["name"]: r["median_cpu_s"] for r in bench.rows if "median_cpu_s" in r}
    per_cpu = {name: bench.a.n / seconds for name, seconds in cpu.items() if seconds}
    ratios: dict[str, float] = {}
    ratios |= _ratio_table("events/s (median)", by, workloads, "")
    # CPU seconds are what the job itself used, whatever else shares the machine.
    ratios |= _ratio_table("events per CPU-second (median CPU)", per_cpu, workloads, " (CPU)")
    if "W1 streamflow" in by and "W1-2stage streamflow" in by:
        ratios["W1 2 stages vs 1 stage"] = by["W1-2stage streamflow"] / by["W1 streamflow"]
    if bench.eo_overhead:
        # Median of per-pair ratios (see Bench.exactly_once_pairs): time taken, not rate.
        ratios["W2 exactly-once overhead"] = bench.eo_overhead["wall"]
        ratios["W2 exactly-once overhead (CPU)"] = bench.eo_overhead["cpu"]
    for w in ("W1", "W2"):
        one = by.get(f"{w} streamflow broker, 1 process(es)")
        two = by.get(f"{w} streamflow broker, 2 process(es)")
        if one and two:
            ratios[f"{w} 2 processes vs 1"] = two / one
    print("\ntargets:")
    for w, target in TARGETS.items():
        got = ratios.get(f"{w} vs bytewax")
        if got is not None:
            by_cpu = ratios[f"{w} vs bytewax (CPU)"]
            print(
                f"  {'ok ' if got >= target else 'MISS'} {w} >= {target} x Bytewax "
                f"({got:.2f}; per CPU-second {by_cpu:.2f})"
            )
    if "W1 vs plain loop" in ratios:
        got = ratios["W1 vs plain loop"]
        print(f"  {'ok ' if got >= 0.25 else 'MISS'} W1 >= 0.25 x plain loop ({got:.2f})")
    if "W1 2 stages vs 1 stage" in ratios:
        got = ratios["W1 2 stages vs 1 stage"]
        print(f"  {'ok ' if got >= 0.5 else 'MISS'} W1 2 stages >= 0.5 x 1 stage ({got:.2f})")
    if "W2 exactly-once overhead" in ratios:
        got = ratios["W2 exactly-once overhead"]
        print(
            f"  {'ok ' if got <= 0.15 else 'MISS'} W2 exactly-once overhead <= 15 % "
            f"({got:+.1%} wall time, median of paired runs)"
        )
        got = ratios["W2 exactly-once overhead (CPU)"]
        print(f"  {'ok ' if got <= 0.15 else 'MISS'} ... in CPU seconds ({got:.1%})")
    for r in bench.rows:
        if r.get("workload") == "W2" and "peak_rss_mib" in r:
            ok = r["peak_rss_mib"] < 500
            print(
                f"  {'ok ' if ok else 'MISS'} {r['name']}: peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"< 500 (mid-run {r['rss_mid_mib']:.0f}, end {r['rss_end_mib']:.0f})"
            )
    bytewax = by.get("W3 bytewax")
    for part in ("W3-dict", "W3-noop"):
        got = by.get(f"{part} streamflow")
        if got and bytewax:
            ratios[f"{part} vs bytewax"] = got / bytewax
            print(f"  info {part}: {got:,.0f} events/s = {got / bytewax:.2f} x Bytewax W3")
    for w in ("W1", "W2"):
        if f"{w} 2 processes vs 1" in ratios:
            got = ratios[f"{w} 2 processes vs 1"]
            print(f"  info {w} over a broker: 2 processes / 1 = {got:.2f}")
    return ratios


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--dir", default=None, help="where temporary logs go (default: $TMPDIR)")
    ap.add_argument("--exactly-once", action="store_true", help="also W2 exactly-once")
    ap.add_argument("--two-stage", action="store_true", help="also W1 behind key_by")
    ap.add_argument("--scaling", action="store_true", help="also W1, W2 with 1 and 2 processes")
    ap.add_argument(
        "--w3-parts", action="store_true", help="also W3 with a plain-dict state and a no-op"
    )
    ap.add_argument("--no-peers", action="store_true", help="streamflow rows only")
    ap.add_argument("--profile", nargs="?", const="peers-profile.txt", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--processing", default="at_least_once", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    """Run the comparison and print the table."""
    a = parse()
    a.peers = a.peers.resolve()
    if a.child:
        child(a)
        return
    bench = Bench(a)
    load = os.getloadavg()
    print(
        f"generated {a.n:,} events in {bench.gen_s:.2f}s (untimed); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    workloads = [w for w in a.workloads.split(",") if w]
    try:
        if a.profile:
            for w in workloads:
                path = f"{a.profile}.{w}" if len(workloads) > 1 else a.profile
                run_child(a, w, bench.fresh(1), a.processing, path)
                print(f"{w}: profile written to {path}")
            return
        for w in workloads:
            if not a.no_peers:
                bench.naive(w)
                bench.floor(w)
                bench.bytewax(w)
            if w == "W2" and a.exactly_once:
                bench.exactly_once_pairs(w)
            else:
                bench.streamflow(w)
            if w == "W1" and a.two_stage:
                bench.streamflow("W1-2stage")
            if w == "W3" and a.w3_parts:
                bench.streamflow("W3-dict")
                bench.streamflow("W3-noop")
        if a.scaling:
            bench.scaling()
        if not a.no_peers:
            bench.pathway(workloads)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    ratios = report(bench, workloads)
    after = os.getloadavg()
    print(f"load average after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    meta = {"ratios": ratios, "load_before": load, "load_after": after}
    if bench.eo_overhead:
        meta["exactly_once_pairs"] = bench.eo_overhead
    bench.W.emit(bench.rows, a.json, meta)


if __name__ == "__main__":
    main()
