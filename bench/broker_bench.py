"""Measure the client over loopback TCP (a broker) against the embedded log.

In one run, on fresh log directories, with ~100-byte msgpack records keyed
by user id on a 4-partition topic (fsync="interval"):

* produce throughput with 1 and 4 producers (``send_many`` in chunks of
  1,000): embedded = producers in this process on one log; TCP = producer
  *processes* talking to a broker subprocess on 127.0.0.1;
* consume throughput: one plain consumer reading the whole topic from the
  start (``poll(max_records=5000)``);
* end-to-end latency at 1,000 records/s: a producer task sends one record
  per millisecond (``linger_ms=0``, each ``send`` in its own task) while a
  consumer in the same process long-polls; latency = time from the ``send``
  call to the record coming out of ``poll`` (p50/p99 over ``--seconds``).

Every TCP figure is also printed as a ratio to the embedded figure of the
same run. The CPU time the broker process and the consuming process spend
per record (from ``/proc``, so Linux only) is printed too: unlike rates, it
barely moves when other work shares the cores. Targets (issue 3): TCP
produce and consume >= 0.5 x embedded; p99 end-to-end latency < 20 ms at
1,000 records/s.

Run::

    python bench/broker_bench.py [--n 200000] [--seconds 5] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import streamflow

TOPIC = "payments"
PARTITIONS = 4
CHUNK = 1_000


def make_values(n: int, seed: int = 7) -> tuple[list[int], list[dict[str, Any]]]:
    rng = random.Random(seed)
    keys = [rng.randrange(10_000) for _ in range(n)]
    values = [
        {
            "user": k,
            "amount": round(rng.uniform(1, 500), 2),
            "ts": 1_700_000_000_000 + i,
            "merchant": f"m{rng.randrange(1000):04d}",
            "country": "NL",
            "currency": "EUR",
            "status": "ok",
        }
        for i, k in enumerate(keys)
    ]
    return keys, values


async def produce(target: str, n: int, offset: int = 0) -> tuple[float, float]:
    """Send n records; return (start, end) wall-clock times around the sends."""
    keys, values = make_values(n, seed=offset + 1)
    async with streamflow.connect(target) as client, client.producer() as producer:
        start = time.time()
        for i in range(0, n, CHUNK):
            await producer.send_many(TOPIC, values[i : i + CHUNK], keys=keys[i : i + CHUNK])
        await producer.flush()
        end = time.time()
    return start, end


async def produce_embedded(target: str, n: int, producers: int) -> float:
    keys, values = make_values(n)
    share = n // producers
    async with streamflow.connect(target) as client:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(producers):

                async def run(w: int = w) -> None:
                    async with client.producer() as producer:
                        lo, hi = w * share, (w + 1) * share
                        for i in range(lo, hi, CHUNK):
                            j = min(i + CHUNK, hi)
                            await producer.send_many(TOPIC, values[i:j], keys=keys[i:j])

                nursery.start_soon(run)
        return n / (time.perf_counter() - start)


def produce_processes(url: str, n: int, producers: int) -> float:
    share = n // producers
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(share), str(w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(producers)
    ]
    for w in workers:
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "READY"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("GO\n")
        w.stdin.flush()
    spans = []
    for w in workers:
        out, _ = w.communicate(timeout=600)
        start, end = map(float, out.split())
        spans.append((start, end))
    return share * producers / (max(e for _, e in spans) - min(s for s, _ in spans))


async def consume(target: str, n: int) -> float:
    async with streamflow.connect(target) as client, client.consumer(TOPIC) as consumer:
        got = 0
        start = time.perf_counter()
        while got < n:
            got += len(await consumer.poll(max_records=5_000, timeout=1.0))
        return got / (time.perf_counter() - start)


async def latency(target: str, seconds: float) -> list[float]:
    """Return end-to-end latencies (ms) at 1,000 records/s."""
    sent_at: dict[int, float] = {}
    samples: list[float] = []
    total = int(seconds * 1000)
    async with streamflow.connect(target) as client:
        async with (
            client.consumer(TOPIC, start="latest") as consumer,
            client.producer(linger_ms=0) as producer,
        ):
            await consumer.poll(timeout=0.1)  # positions resolved: now at the end

            async def receive() -> None:
                while len(samples) < total:
                    for r in await consumer.poll(max_records=5_000, timeout=1.0):
                        samples.append((time.perf_counter() - sent_at[r.value["seq"]]) * 1000)

            async def send_one(i: int) -> None:
                sent_at[i] = time.perf_counter()
                await producer.send(TOPIC, {"seq": i, "pad": "x" * 80}, key=i % 100)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                t0 = trio.current_time()
                for i in range(total):
                    await trio.sleep_until(t0 + i / 1000)
                    nursery.start_soon(send_one, i)
    return samples


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process *pid* has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_broker(data: Path) -> tuple[subprocess.Popen[str], str]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "streamflow.log.broker", "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert broker.stdout is not None
    word, port = broker.stdout.readline().split()
    assert word == "READY"
    return broker, f"tcp://127.0.0.1:{port}"


def stop_broker(broker: subprocess.Popen[str]) -> None:
    broker.terminate()
    broker.wait(timeout=30)


async def create(target: str) -> None:
    async with streamflow.connect(target) as client:
        await client.create_topic(TOPIC, partitions=PARTITIONS)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int, seconds: float, root: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for producers in (1, 4):
        emb = root / f"emb-{producers}"
        trio.run(create, str(emb))
        rows[f"produce x{producers} embedded"] = trio.run(produce_embedded, str(emb), n, producers)
        if producers == 1:
            client_cpu = time.process_time()
            rows["consume embedded"] = trio.run(consume, str(emb), n)
            rows["consume embedded client cpu"] = (time.process_time() - client_cpu) / n * 1e6
        broker, url = start_broker(root / f"tcp-{producers}")
        try:
            trio.run(create, url)
            broker_cpu = cpu_seconds(broker.pid)
            rows[f"produce x{producers} tcp"] = produce_processes(url, n, producers)
            rows[f"produce x{producers} tcp broker cpu"] = (
                (cpu_seconds(broker.pid) - broker_cpu) / n * 1e6
            )
            if producers == 1:
                broker_cpu, client_cpu = cpu_seconds(broker.pid), time.process_time()
                rows["consume tcp"] = trio.run(consume, url, n)
                rows["consume tcp client cpu"] = (time.process_time() - client_cpu) / n * 1e6
                rows["consume tcp broker cpu"] = (cpu_seconds(broker.pid) - broker_cpu) / n * 1e6
        finally:
            stop_broker(broker)
    lat_dir = root / "latency"
    trio.run(create, str(lat_dir))
    embedded = trio.run(latency, str(lat_dir), seconds)
    broker, url = start_broker(root / "latency-tcp")
    try:
        trio.run(create, url)
        tcp = trio.run(latency, url, seconds)
    finally:
        stop_broker(broker)
    for name, samples in (("embedded", embedded), ("tcp", tcp)):
        rows[f"latency {name} p50 ms"] = statistics.median(samples)
        rows[f"latency {name} p99 ms"] = percentile(samples, 0.99)
    return rows


def report(rows: dict[str, Any]) -> None:
    print(f"{'figure':<28}{'embedded':>14}{'tcp':>14}{'tcp/emb':>10}")
    for label, unit in (
        ("produce x1", "rec/s"),
        ("produce x4", "rec/s"),
        ("consume", "rec/s"),
    ):
        emb, tcp = rows[f"{label} embedded"], rows[f"{label} tcp"]
        print(f"{label + ' (' + unit + ')':<28}{emb:>14,.0f}{tcp:>14,.0f}{tcp / emb:>10.2f}")
    for q in ("p50", "p99"):
        emb, tcp = rows[f"latency embedded {q} ms"], rows[f"latency tcp {q} ms"]
        print(f"{'latency ' + q + ' (ms)':<28}{emb:>14.2f}{tcp:>14.2f}{tcp / emb:>10.2f}")
    print("cpu per record (us)")
    emb = rows["consume embedded client cpu"]
    print(f"{'  consume, consumer':<28}{emb:>14.2f}{rows['consume tcp client cpu']:>14.2f}")
    print(f"{'  consume, broker':<28}{'-':>14}{rows['consume tcp broker cpu']:>14.2f}")
    for producers in (1, 4):
        label = f"  produce x{producers}, broker"
        print(f"{label:<28}{'-':>14}{rows[f'produce x{producers} tcp broker cpu']:>14.2f}")
    checks = {
        "tcp produce x1 >= 0.5 embedded": rows["produce x1 tcp"]
        >= 0.5 * rows["produce x1 embedded"],
        "tcp produce x4 >= 0.5 embedded": rows["produce x4 tcp"]
        >= 0.5 * rows["produce x4 embedded"],
        "tcp consume >= 0.5 embedded": rows["consume tcp"] >= 0.5 * rows["consume embedded"],
        "tcp p99 latency < 20 ms": rows["latency tcp p99 ms"] < 20,
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


def worker(url: str, n: int, index: int) -> None:
    print("READY", flush=True)
    assert sys.stdin.readline().strip() == "GO"
    start, end = trio.run(produce, url, n, index * n)
    print(start, end, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records per throughput row")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency run length")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    root = Path(tempfile.mkdtemp(prefix="broker-bench-", dir=args.dir))
    try:
        print(f"n={args.n} records, {PARTITIONS} partitions, dir {root}, cpus {os.cpu_count()}")
        rows = run(args.n, args.seconds, root)
        if args.json:
            print(json.dumps(rows, indent=2))
        report(rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
