"""Crash and restore: kill a stateful job hard, delete its local state, and get it all back.

The job keeps a balance per account (``aggregate`` over transactions) in an
LMDB store whose every change also goes to the compacted changelog topic
``balances.balances.changelog``. The script:

1. starts a broker (``streamflow broker``, loopback, any free port);
2. starts the job in its own process (``streamflow run`` on this very file),
   and writes transactions while it runs, until it has checkpointed some;
3. kills it with SIGKILL, mid-stream, and deletes its state directory;
4. writes the rest and starts the job again, until all input is processed: it
   rebuilds its state from the changelog first, and resumes from the
   committed offsets;
5. runs the same job on all the input in a fresh directory (a clean run) and
   checks that every account's final balance matches it, and matches a plain
   Python sum of the input.

Run:  python examples/crash_restore_demo.py [DATA_DIR] [--generate N]
      (default ./crash-demo-data and 200,000 transactions; the directory is recreated)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

import streamflow
from streamflow import Pipeline

ACCOUNTS = 500


def build_pipeline() -> Pipeline:
    """Keep each account's balance and transaction count; emit it after each transaction."""
    pipeline = Pipeline("balances")
    (
        pipeline.source("transactions")
        .key_by(lambda t: t["account"])
        .aggregate(
            "balances",
            initial=lambda: {"balance": 0, "transactions": 0},
            fold=lambda acc, t: {
                "balance": acc["balance"] + t["amount"],
                "transactions": acc["transactions"] + 1,
            },
        )
        .sink("balances")
    )
    return pipeline


pipeline = build_pipeline()  # what `streamflow run crash_restore_demo.py` runs


def generate(n: int, seed: int = 17) -> list[dict[str, Any]]:
    """Return *n* transactions (integer cents, so sums are exact)."""
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "account": f"acct-{rng.randrange(ACCOUNTS):03d}",
            "amount": rng.randint(-500, 1000),
        }
        for i in range(n)
    ]


def expected_balances(transactions: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Return the final balance and count of every account, in plain Python."""
    out: dict[str, dict[str, int]] = {}
    for t in transactions:
        acc = out.setdefault(t["account"], {"balance": 0, "transactions": 0})
        acc["balance"] += t["amount"]
        acc["transactions"] += 1
    return out


def streamflow_command(*args: str) -> list[str]:
    """Return the command line that runs ``streamflow ARGS`` with this Python."""
    return [sys.executable, "-m", "streamflow.cli", *args]


def start_broker(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a broker on a free loopback port (its log: broker.log); return it and its URL."""
    with (data_dir / "broker.log").open("ab") as log:
        broker = subprocess.Popen(
            streamflow_command("--data", str(data_dir / "log"), "broker", "--port", "0"),
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert broker.stdout is not None
    line = broker.stdout.readline().decode()  # "listening on 127.0.0.1:PORT"
    if not line.startswith("listening on "):
        broker.kill()
        raise SystemExit(f"the broker did not start: {line!r}")
    return broker, "tcp://" + line.split()[-1]


def start_job(url: str, state_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Start the job in its own process; its log lines go to *log_path*."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            streamflow_command(
                "run", __file__, "--broker", url, "--state-dir", str(state_dir), *extra
            ),
            stdout=log,
            stderr=log,
        )


async def create_topic(url: str) -> None:
    """Create the input topic ``transactions`` (2 partitions)."""
    async with streamflow.connect(url) as client:
        await client.create_topic("transactions", partitions=2)


async def produce(url: str, transactions: list[dict[str, Any]]) -> None:
    """Send *transactions* to the broker, keyed by account."""
    async with streamflow.connect(url) as client, client.producer() as producer:
        keys = [t["account"] for t in transactions]
        await producer.send_many("transactions", transactions, keys=keys)


async def produce_until_checkpoint(
    url: str, transactions: list[dict[str, Any]], job: subprocess.Popen[bytes]
) -> tuple[int, int]:
    """Send transactions in chunks while the job runs, until it has checkpointed some.

    Stage ``s1`` (after ``key_by``) holds the state; its consumer group is
    ``balances.s1``, and it commits its input offsets with every checkpoint.
    Returns how many transactions were sent and how many the checkpoint covers.
    """
    partitions = [("balances.s1.repartition", p) for p in range(2)]
    sent = 0
    async with streamflow.connect(url) as client, client.producer() as producer:
        with trio.fail_after(120):
            while True:
                if job.poll() is not None:
                    raise SystemExit("the job exited before it was killed; see job.log")
                if sent < len(transactions) // 2:
                    chunk = transactions[sent : sent + 1_000]
                    keys = [t["account"] for t in chunk]
                    await producer.send_many("transactions", chunk, keys=keys)
                    sent += len(chunk)
                try:
                    committed = await client.transport.committed("balances.s1", partitions)
                except streamflow.errors.UnknownTopic:  # the job has not created it yet
                    committed = {}
                done = sum(c.offset for c in committed.values())
                if done > 0:
                    return sent, done
                await trio.sleep(0.05)


async def final_balances(target: str | Path) -> dict[str, dict[str, int]]:
    """Return the newest balance per account in the ``balances`` topic."""
    async with (
        streamflow.connect(target) as client,
        client.consumer("balances", start="earliest") as consumer,
    ):
        latest: dict[str, dict[str, int]] = {}
        while batch := await consumer.poll(max_records=50_000, timeout=0.2):
            for record in batch:
                latest[record.key] = record.value  # in offset order: the newest wins
        return latest


def clean_run(directory: Path, transactions: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Run the job once, uninterrupted, on all the input in a fresh log directory."""

    async def load() -> None:
        async with streamflow.connect(directory) as client:
            await client.create_topic("transactions", partitions=2)
            async with client.producer() as producer:
                for t in transactions:
                    await producer.send("transactions", t, key=t["account"])

    trio.run(load)
    streamflow.run(build_pipeline(), directory, until_idle=True)
    return trio.run(final_balances, directory)


def main(data_dir: Path, transactions: int = 200_000) -> None:
    """Crash the job, delete its state, restart it, and compare with a clean run."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    state_dir = data_dir / "job-state"
    log_path = data_dir / "job.log"
    inputs = generate(transactions)
    broker, url = start_broker(data_dir)
    try:
        trio.run(create_topic, url)
        print(f"broker at {url}; starting the job, then writing transactions")
        job = start_job(url, state_dir, log_path)
        sent, checkpointed = trio.run(produce_until_checkpoint, url, inputs, job)
        job.send_signal(signal.SIGKILL)
        job.wait()
        print(
            f"killed the job with SIGKILL mid-stream: {sent} transactions written, "
            f"a checkpoint covering {checkpointed} of them"
        )

        files = sum(len(names) for _, _, names in os.walk(state_dir))
        shutil.rmtree(state_dir)
        print(f"deleted its state directory {state_dir} ({files} files)")

        trio.run(produce, url, inputs[sent:])
        print(f"wrote the other {len(inputs) - sent} transactions; restarting the job")
        restarted = start_job(url, state_dir, log_path, "--until-idle")
        if restarted.wait(timeout=300) != 0:
            raise SystemExit(f"the restarted job failed; see {log_path}")
        restores = [
            line.split("restoring ", 1)[1]
            for line in log_path.read_text().splitlines()
            if "restoring balances" in line and "(done)" in line and " 0/0 " not in line
        ]
        for line in restores:
            print(f"  state rebuilt from the changelog: {line}")
        recovered = trio.run(final_balances, url)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=60)
        if broker.stdout is not None:
            broker.stdout.close()

    clean = clean_run(data_dir / "clean-run", inputs)
    expected = expected_balances(inputs)
    same = recovered == clean == expected
    print(
        f"{len(recovered)} accounts after crash and restore; clean run: {len(clean)}; "
        f"plain Python: {len(expected)}"
    )
    if same:
        print("results match a clean run")
        return
    wrong = sorted(
        a for a in expected if recovered.get(a) != expected[a] or clean.get(a) != expected[a]
    )
    for account in wrong[:5]:
        print(
            f"  {account}: after restore {recovered.get(account)}, clean run {clean.get(account)},"
            f" expected {expected[account]}"
        )
    raise SystemExit(f"RESULTS DIFFER from a clean run for {len(wrong)} accounts")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("crash-demo-data"))
    parser.add_argument("--generate", type=int, default=200_000, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.generate)
