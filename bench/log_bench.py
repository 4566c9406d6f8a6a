"""Measure the log's append and read throughput against the raw file ceiling.

Each record is a ~100-byte msgpack map (a payment: user id, amount, event
time, merchant, country, currency, status) keyed by its user id. Per fsync
policy (always, interval, never) and batch size (1, 100, 10,000) the script
times, on one partition of a fresh topic:

* fast path: ``Partition.append_columns`` / ``Partition.read_batches``
  (what the runtime and the broker use);
* convenient path: ``Partition.append([Message, ...])`` / ``Partition.read``;
* ceiling: the same batches msgpack-encoded (``[timestamp, key, value]`` per
  record) and written, length-prefixed, to a plain file with one write per
  batch, plus ``os.fsync`` per batch on the ``always`` row; read back with one
  read per batch and decoded.

Every figure is also given as a ratio to the ceiling row of the same policy
and batch size, measured in the same run. Timed: the append loop (until the
last append returns) and the read loop; topic creation, generation of the
input and closing are not timed. Repetitions are interleaved (each runs
every cell once); a figure is the median over ``--reps`` repetitions and a
ratio the median of the per-repetition ratios. Batch-1 rows use at most
``--n-single`` records (``--n-single-always`` under ``fsync="always"``), so
the run ends quickly.

Run::

    python bench/log_bench.py [--n 200000] [--reps 3] [--dir DIR] [--json] [--profile]

``--dir`` defaults to a fresh directory in the system temp dir (on this
machine's disk); the filesystem type is printed, since fsync on tmpfs costs
nothing. ``--profile`` also prints a cProfile of the fast append and read at
the largest batch size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from streamflow.log import Log, Message, Partition

if TYPE_CHECKING:
    from collections.abc import Callable

POLICIES = ("always", "interval", "never")
BATCH_SIZES = (1, 100, 10_000)
PATHS = ("ceiling", "fast", "convenient")
LENGTH = struct.Struct(">I")
EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00Z


@dataclass
class Row:
    path: str
    policy: str
    batch: int
    records: int
    payload_bytes: int
    append_s: float
    read_s: float
    append_ratio: float = float("nan")
    read_ratio: float = float("nan")

    @property
    def append_rps(self) -> float:
        return self.records / self.append_s

    @property
    def read_rps(self) -> float:
        return self.records / self.read_s

    @property
    def append_mbps(self) -> float:
        return self.payload_bytes / self.append_s / 1e6

    @property
    def read_mbps(self) -> float:
        return self.payload_bytes / self.read_s / 1e6


@dataclass
class Workload:
    keys: list[str]
    values: list[dict[str, Any]]
    timestamps: list[int]
    payload_bytes: list[int]  # msgpack size of key + value, per record


def make_workload(n: int, seed: int = 42) -> Workload:
    rng = random.Random(seed)
    keys: list[str] = []
    values: list[dict[str, Any]] = []
    timestamps: list[int] = []
    sizes: list[int] = []
    ts = EPOCH_MS
    for _ in range(n):
        ts += rng.randint(0, 2)
        user = f"u{rng.randrange(10_000):05d}"
        value = {
            "user_id": user,
            "amount": round(rng.expovariate(1 / 50), 2),
            "ts": ts,
            "merchant": f"m{rng.randrange(100):03d}",
            "country": rng.choice(("DE", "FR", "NL", "US", "GB")),
            "currency": "EUR",
            "status": "approved",
        }
        keys.append(user)
        values.append(value)
        timestamps.append(ts)
        sizes.append(len(msgpack.packb(user)) + len(msgpack.packb(value)))
    return Workload(keys, values, timestamps, sizes)


def fs_type(path: Path) -> str:
    real = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, mount, typ = line.split()[:3]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, typ
    except OSError:
        pass
    return kind


def timed(func: Callable[[], None]) -> float:
    gc.collect()
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


# -- ceiling: plain file ------------------------------------------------------------------------


def ceiling(work: Workload, n: int, batch: int, policy: str, path: Path) -> tuple[float, float]:
    fsync_each = policy == "always"
    pack = msgpack.Packer(use_bin_type=True).pack

    def append() -> None:
        with open(path, "wb") as f:
            for i in range(0, n, batch):
                end = min(i + batch, n)
                stamps, keys, values = work.timestamps, work.keys, work.values
                body = pack([[stamps[j], keys[j], values[j]] for j in range(i, end)])
                f.write(LENGTH.pack(len(body)) + body)
                f.flush()
                if fsync_each:
                    os.fsync(f.fileno())

    def read() -> None:
        count = 0
        with open(path, "rb") as f:
            while header := f.read(LENGTH.size):
                (size,) = LENGTH.unpack(header)
                count += len(msgpack.unpackb(f.read(size), raw=False))
        assert count == n, (count, n)

    append_s = timed(append)
    read_s = timed(read)
    path.unlink()
    return append_s, read_s


# -- the log ------------------------------------------------------------------------------------


def log_run(
    log: Log, topic: str, work: Workload, n: int, batch: int, policy: str, fast: bool
) -> tuple[float, float]:
    log.create_topic(topic, partitions=1, fsync=policy)
    part = log.partition(topic, 0)

    def append_fast() -> None:
        for i in range(0, n, batch):
            end = min(i + batch, n)
            part.append_columns(work.keys[i:end], work.values[i:end], work.timestamps[i:end])

    def append_convenient() -> None:
        for i in range(0, n, batch):
            end = min(i + batch, n)
            part.append(
                [
                    Message(key=k, value=v, timestamp=t)
                    for k, v, t in zip(
                        work.keys[i:end], work.values[i:end], work.timestamps[i:end], strict=True
                    )
                ]
            )

    def read_fast() -> None:
        offset, count = part.start_offset, 0
        while offset < part.end_offset:
            for records in part.read_batches(offset):
                count += len(records)
                offset = records.next_offset
        assert count == n, (count, n)

    def read_convenient() -> None:
        offset, count = part.start_offset, 0
        while records := part.read(offset, max_records=500):
            count += len(records)
            offset = records[-1].offset + 1
        assert count == n, (count, n)

    append_s = timed(append_fast if fast else append_convenient)
    read_s = timed(read_fast if fast else read_convenient)
    log.delete_topic(topic)
    return append_s, read_s


def count_for(args: argparse.Namespace, policy: str, batch: int) -> int:
    n: int = args.n
    if batch == 1:
        single: int = args.n_single_always if policy == "always" else args.n_single
        return min(n, single)
    return n


Times = dict[tuple[str, str, int], list[tuple[float, float]]]


def measure(args: argparse.Namespace, work: Workload, root: Path) -> tuple[list[Row], Times]:
    """Time every (path, policy, batch) cell, repetitions interleaved.

    One repetition runs every cell once, the three policies of a batch size
    back to back, so that drift in the machine's load hits all cells alike;
    ratios are medians of per-repetition ratios (paired with the ceiling run
    of the same repetition).
    """
    times: Times = {}
    with Log.open(root / "log") as log:
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
            for batch in BATCH_SIZES:
                for policy in POLICIES:
                    n = count_for(args, policy, batch)
                    for path in PATHS:
                        if path == "ceiling":
                            run = ceiling(work, n, batch, policy, root / "ceiling.bin")
                        else:
                            topic = f"bench-{path}-{policy}-{batch}-{rep}"
                            run = log_run(log, topic, work, n, batch, policy, path == "fast")
                        times.setdefault((path, policy, batch), []).append(run)
    rows: list[Row] = []
    for policy in POLICIES:
        for batch in BATCH_SIZES:
            n = count_for(args, policy, batch)
            base = times[("ceiling", policy, batch)]
            for path in PATHS:
                runs = times[(path, policy, batch)]
                row = Row(
                    path,
                    policy,
                    batch,
                    n,
                    sum(work.payload_bytes[:n]),
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs),
                    statistics.median(b[0] / r[0] for b, r in zip(base, runs, strict=True)),
                    statistics.median(b[1] / r[1] for b, r in zip(base, runs, strict=True)),
                )
                rows.append(row)
    return rows, times


def print_header() -> None:
    print(
        f"{'path':<11}{'fsync':<9}{'batch':>6}{'records':>9}"
        f"{'append rec/s':>14}{'MB/s':>8}{'x ceil':>8}"
        f"{'read rec/s':>13}{'MB/s':>8}{'x ceil':>8}"
    )


def print_row(row: Row) -> None:
    print(
        f"{row.path:<11}{row.policy:<9}{row.batch:>6}{row.records:>9}"
        f"{row.append_rps:>14,.0f}{row.append_mbps:>8.1f}{row.append_ratio:>8.2f}"
        f"{row.read_rps:>13,.0f}{row.read_mbps:>8.1f}{row.read_ratio:>8.2f}",
        flush=True,
    )


def check_targets(rows: list[Row], times: Times) -> list[dict[str, Any]]:
    big = max(BATCH_SIZES)
    fast = {(r.policy, r.batch): r for r in rows if r.path == "fast"}
    checks: list[dict[str, Any]] = []
    for policy in POLICIES:
        row = fast[(policy, big)]
        checks.append(
            {
                "target": f"fast append, fsync={policy}, batch {big:,}: >= 0.5 x ceiling",
                "value": row.append_ratio,
                "ok": row.append_ratio >= 0.5,
            }
        )
        checks.append(
            {
                "target": f"fast read, fsync={policy}, batch {big:,}: >= 0.5 x ceiling",
                "value": row.read_ratio,
                "ok": row.read_ratio >= 0.5,
            }
        )
    for batch in BATCH_SIZES:
        pairs = zip(
            times[("fast", "never", batch)], times[("fast", "interval", batch)], strict=True
        )
        ratio = statistics.median(never[0] / interval[0] for never, interval in pairs)
        checks.append(
            {
                "target": f"fast append, batch {batch:,}: interval >= 0.9 x never",
                "value": ratio,
                "ok": ratio >= 0.9,
            }
        )
    return checks


def profile(work: Workload, root: Path, n: int, n_single: int) -> str:
    """Profile the paths furthest from the ceiling: big-batch append, reads."""
    out = io.StringIO()

    def report(title: str, func: Callable[[], None]) -> None:
        profiler = cProfile.Profile()
        profiler.runcall(func)
        print(f"== cProfile: {title} ==", file=out)
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)

    with Log.open(root / "profile") as log:
        for batch, count in ((max(BATCH_SIZES), n), (1, min(n, n_single))):
            topic = f"profile-{batch}"
            log.create_topic(topic, partitions=1, fsync="never")
            part = log.partition(topic, 0)

            def append(part: Partition = part, batch: int = batch, count: int = count) -> None:
                for i in range(0, count, batch):
                    end = min(i + batch, count)
                    keys, values = work.keys[i:end], work.values[i:end]
                    part.append_columns(keys, values, work.timestamps[i:end])

            def read_fast(part: Partition = part) -> None:
                offset = 0
                while offset < part.end_offset:
                    for records in part.read_batches(offset):
                        offset = records.next_offset

            def read_convenient(part: Partition = part) -> None:
                offset = 0
                while records := part.read(offset, max_records=500):
                    offset = records[-1].offset + 1

            report(f"append_columns, batch {batch:,}, {count:,} records", append)
            report(f"read_batches, written in batches of {batch:,}", read_fast)
            report(f"read(max_records=500), written in batches of {batch:,}", read_convenient)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records per batched row")
    parser.add_argument("--n-single", type=int, default=20_000, help="records, batch-1 rows")
    parser.add_argument(
        "--n-single-always", type=int, default=1_000, help="records, batch-1 fsync=always rows"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="streamflow-log-bench-", dir=args.dir))
    kind = fs_type(root)
    work = make_workload(args.n)
    gc.collect()
    gc.freeze()  # the resident input list must not slow the timed cyclic GC
    mean_bytes = sum(work.payload_bytes) / len(work.payload_bytes)
    environment = {
        "dir": str(root),
        "fstype": kind,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "record_bytes_mean": round(mean_bytes, 1),
        "reps": args.reps,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        if not args.json:
            print(
                f"dir {root} (filesystem {kind}); records: key + value {mean_bytes:.0f} bytes "
                f"msgpack; median of {args.reps} reps; MB = payload bytes"
            )
            if kind in ("tmpfs", "ramfs"):
                print("warning: tmpfs: fsync costs nothing here; use --dir on a real disk")
        rows, times = measure(args, work, root)
        checks = check_targets(rows, times)
        environment["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        report = profile(work, root, args.n, args.n_single) if args.profile else ""
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        doc = {
            "environment": environment,
            "rows": [
                {
                    **asdict(row),
                    "append_rps": row.append_rps,
                    "read_rps": row.read_rps,
                    "append_mbps": row.append_mbps,
                    "read_mbps": row.read_mbps,
                }
                for row in rows
            ],
            "targets": checks,
            "profile": report or None,
        }
        print(json.dumps(doc, indent=2))
        return
    print_header()
    for row in rows:
        print_row(row)
    print(
        f"load average before {environment['loadavg_before']}, after {environment['loadavg_after']}"
    )
    print("\ntargets:")
    for check in checks:
        print(f"  {'ok  ' if check['ok'] else 'MISS'} {check['target']} ({check['value']:.2f})")
    if report:
        print()
        print(report)


if __name__ == "__main__":
    main()
