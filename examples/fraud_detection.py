"""Fraud rules as plain Python functions over per-user state, with ``process``.

Payments ``{"payment_id", "user_id", "amount", "country", "merchant", "ts"}``
arrive on the topic ``payments``. A ``process`` step keeps, per user, the
recent payment times, the count and total of past payments, and the last
country; three rules read that state and the payment:

* ``velocity``: more than MAX_PAYMENTS payments in a sliding 10-minute window;
* ``large_amount``: an amount above AMOUNT_FACTOR x the user's running average
  (once the user has MIN_HISTORY payments);
* ``country_hop``: a merchant country other than the previous payment's,
  within HOP_MINUTES minutes of it.

Each firing rule emits an alert to the topic ``fraud-alerts`` with the rule's
name and its evidence, for example::

    {"rule": "large_amount", "user_id": "u017", "payment_id": 5123, "ts": ...,
     "evidence": {"amount": 1450.0, "average": 41.25, "factor": 5}}

The state lives in an LMDB store named ``user-state``, backed by the compacted
topic ``fraud.user-state.changelog``, so a restarted job picks up where it was.

Run:  python examples/fraud_detection.py [DATA_DIR] [--generate N]
      (default ./fraud-data and 10,000 generated payments; the directory is recreated)
"""

from __future__ import annotations

import argparse
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import streamflow
from streamflow import Pipeline

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE_MS = 60_000
MAX_PAYMENTS = 5  # velocity: more than this many ...
WINDOW_MS = 10 * MINUTE_MS  # ... within this sliding window
AMOUNT_FACTOR = 5  # large_amount: above this many times the running average ...
MIN_HISTORY = 3  # ... once the user has this many payments
HOP_MINUTES = 30  # country_hop: a new country within this many minutes

Payment = dict[str, Any]
State = dict[str, Any]
Evidence = dict[str, Any]


def velocity(state: State, payment: Payment) -> Evidence | None:
    """Fire when the payment makes more than MAX_PAYMENTS in the last 10 minutes."""
    recent = [ts for ts in state["recent"] if ts > payment["ts"] - WINDOW_MS]
    if len(recent) + 1 > MAX_PAYMENTS:
        return {"payments": len(recent) + 1, "window_minutes": WINDOW_MS // MINUTE_MS}
    return None


def large_amount(state: State, payment: Payment) -> Evidence | None:
    """Fire when the amount is above AMOUNT_FACTOR times the user's running average."""
    if state["count"] < MIN_HISTORY:
        return None
    average = state["total"] / state["count"]
    if payment["amount"] > AMOUNT_FACTOR * average:
        return {"amount": payment["amount"], "average": round(average, 2), "factor": AMOUNT_FACTOR}
    return None


def country_hop(state: State, payment: Payment) -> Evidence | None:
    """Fire when the country changed within HOP_MINUTES of the previous payment."""
    last = state["last"]
    if last is None or last["country"] == payment["country"]:
        return None
    minutes = (payment["ts"] - last["ts"]) / MINUTE_MS
    if minutes <= HOP_MINUTES:
        return {"from": last["country"], "to": payment["country"], "minutes": round(minutes, 1)}
    return None


RULES = [velocity, large_amount, country_hop]


def new_state() -> State:
    """Return the state of a user without payments."""
    return {"recent": [], "count": 0, "total": 0.0, "last": None}


def check_payment(ctx: Any, user_id: Any, payment: Payment) -> None:
    """Run every rule on the payment against the user's state, then update the state."""
    state = ctx.state.get(new_state())
    for rule in RULES:
        evidence = rule(state, payment)
        if evidence is not None:
            ctx.emit(
                {
                    "rule": rule.__name__,
                    "user_id": user_id,
                    "payment_id": payment["payment_id"],
                    "ts": payment["ts"],
                    "evidence": evidence,
                }
            )
    state["recent"] = [ts for ts in state["recent"] if ts > payment["ts"] - WINDOW_MS]
    state["recent"].append(payment["ts"])
    state["count"] += 1
    state["total"] += payment["amount"]
    state["last"] = {"country": payment["country"], "ts": payment["ts"]}
    ctx.state.set(state)


def build_pipeline() -> Pipeline:
    """Key payments by user and run the rules over each user's state."""
    pipeline = Pipeline("fraud")
    (
        pipeline.source("payments", timestamp=lambda p: p["ts"])
        .filter(lambda p: p["amount"] > 0)
        .key_by(lambda p: p["user_id"])
        .process("user-state", check_payment)
        .sink("fraud-alerts")
    )
    return pipeline


def generate(n: int, seed: int = 3) -> list[Payment]:
    """Return *n* payments over a day: mostly ordinary, with bursts, spikes and hops."""
    rng = random.Random(seed)
    users = [f"u{i:03d}" for i in range(max(1, n // 50))]
    home = {user: rng.choice(["FR", "DE", "NL", "ES"]) for user in users}
    payments: list[Payment] = []
    ts = T0_MS
    while len(payments) < n:
        ts += rng.randint(1_000, 20_000)
        user = rng.choice(users)
        pattern = rng.random()
        if pattern < 0.01:  # a burst: several payments a minute apart
            burst = [(ts + i * MINUTE_MS // 2, rng.uniform(5, 30), home[user]) for i in range(7)]
        elif pattern < 0.02:  # an unusually large payment
            burst = [(ts, rng.uniform(2_000, 5_000), home[user])]
        elif pattern < 0.03:  # a payment abroad, then back home
            burst = [(ts, rng.uniform(5, 80), "BR"), (ts + 10 * MINUTE_MS, 20.0, home[user])]
        else:
            burst = [(ts, round(rng.expovariate(1 / 40), 2), home[user])]
        for at, amount, country in burst:
            payments.append(
                {
                    "payment_id": 0,
                    "user_id": user,
                    "amount": round(amount, 2),
                    "country": country,
                    "merchant": f"m{rng.randint(1, 500)}",
                    "ts": at,
                }
            )
    payments.sort(key=lambda p: p["ts"])  # a stream arrives in time order
    for number, payment in enumerate(payments):
        payment["payment_id"] = number
    return payments[:n]


async def produce(data_dir: Path, payments: list[Payment]) -> None:
    """Create the ``payments`` topic (2 partitions) and send the payments, keyed by user."""
    async with streamflow.connect(data_dir) as client:
        await client.create_topic("payments", partitions=2)
        async with client.producer() as producer:
            await producer.send_many("payments", payments, keys=[p["user_id"] for p in payments])


async def read_alerts(data_dir: Path) -> list[dict[str, Any]]:
    """Return every record of ``fraud-alerts``."""
    async with (
        streamflow.connect(data_dir) as client,
        client.consumer("fraud-alerts", start="earliest") as consumer,
    ):
        found: list[dict[str, Any]] = []
        while batch := await consumer.poll(max_records=10_000, timeout=0.2):
            found.extend(record.value for record in batch)
        return found


def main(data_dir: Path, payments: int = 10_000) -> None:
    """Generate payments, run the rules until all are checked, print the alerts."""
    shutil.rmtree(data_dir, ignore_errors=True)
    trio.run(produce, data_dir, generate(payments))
    streamflow.run(build_pipeline(), data_dir, until_idle=True)
    alerts = trio.run(read_alerts, data_dir)
    alerts.sort(key=lambda a: (a["ts"], a["payment_id"], a["rule"]))
    counts = Counter(a["rule"] for a in alerts)
    print(
        f"{len(alerts)} alerts in topic fraud-alerts: "
        + ", ".join(f"{rule} {counts[rule]}" for rule in sorted(counts))
    )
    for alert in alerts[:8]:
        print(
            f"  {alert['rule']:12} {alert['user_id']} payment {alert['payment_id']}: "
            f"{alert['evidence']}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("fraud-data"))
    parser.add_argument("--generate", type=int, default=10_000, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.generate)
