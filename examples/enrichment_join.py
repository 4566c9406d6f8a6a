"""Enrich a stream of orders with a compacted ``customers`` topic used as a table.

The topic ``customers`` is compacted (``cleanup_policy="compact"``): it keeps
the newest record per customer id, and a record whose value is ``None`` (a
tombstone) deletes the customer. The pipeline reads it into a table
(``to_table``), keys the ``orders`` stream by customer id, and joins each
order with the customer's current row (a left join: an order of an unknown
or deleted customer gets ``"customer": None``). Results go to
``orders-enriched``.

The script runs the job three times, as new data arrives: customers, then
orders, then customer changes (a tier upgrade, a deletion) followed by more
orders. The table is state (an LMDB store with its changelog topic), so each
run continues from the last: later orders see the changed rows.

Run:  python examples/enrichment_join.py [DATA_DIR] [--generate N]
      (default ./enrichment-data and 2,000 generated orders; the directory is recreated)
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path
from typing import Any

import trio

import streamflow
from streamflow import Pipeline

PARTITIONS = 2  # customers and the keyed orders are co-partitioned by customer id


def enrich(order: dict[str, Any], customer: dict[str, Any] | None) -> dict[str, Any]:
    """Return the order with the customer's name, tier and country (``None`` if unknown)."""
    if customer is None:
        return {**order, "customer": None}
    return {**order, "customer": {k: customer[k] for k in ("name", "tier", "country")}}


def build_pipeline() -> Pipeline:
    """Join orders, keyed by customer id, with the customers table."""
    pipeline = Pipeline("enrichment")
    customers = pipeline.source("customers").to_table("customers")
    (
        pipeline.source("orders")
        .key_by(lambda order: order["customer_id"])
        .join(customers, enrich)
        .sink("orders-enriched")
    )
    return pipeline


def generate_customers(n: int, seed: int = 11) -> dict[str, dict[str, Any]]:
    """Return *n* customers by id."""
    rng = random.Random(seed)
    return {
        f"c{i:04d}": {
            "name": f"Customer {i}",
            "tier": rng.choice(["bronze", "silver", "gold"]),
            "country": rng.choice(["FR", "US", "JP", "BR"]),
        }
        for i in range(n)
    }


def generate_orders(
    n: int, customer_ids: list[str], first_id: int = 0, seed: int = 13
) -> list[dict[str, Any]]:
    """Return *n* orders of the given customers, and a few of unknown ones."""
    rng = random.Random(seed + first_id)
    orders = []
    for i in range(first_id, first_id + n):
        customer = rng.choice(customer_ids) if rng.random() < 0.97 else f"x{i}"
        orders.append({"order_id": i, "customer_id": customer, "amount": rng.randint(1, 500)})
    return orders


def generate(n: int) -> tuple[dict[str, dict[str, Any]], list[Any], list[Any], list[Any]]:
    """Return the customers, the first orders, the customer changes and the later orders.

    A change is ``(customer_id, row)``; ``row`` is ``None`` for a deletion.
    """
    customers = generate_customers(max(2, n // 10))
    ids = sorted(customers)
    first = generate_orders(n // 2, ids)
    changes: list[tuple[str, dict[str, Any] | None]] = [
        (cid, {**customers[cid], "tier": "platinum"}) for cid in ids[: len(ids) // 4]
    ]
    changes += [(cid, None) for cid in ids[-max(1, len(ids) // 10) :]]
    later = generate_orders(n - n // 2, ids, first_id=n // 2)
    return customers, first, changes, later


async def send(data_dir: Path, topic: str, records: list[tuple[Any, Any]]) -> None:
    """Append ``(key, value)`` records to *topic*."""
    async with streamflow.connect(data_dir) as client, client.producer() as producer:
        await producer.send_many(topic, [v for _, v in records], keys=[k for k, _ in records])


async def create_topics(data_dir: Path) -> None:
    """Create the compacted ``customers`` topic and the ``orders`` topic."""
    async with streamflow.connect(data_dir) as client:
        await client.create_topic("customers", partitions=PARTITIONS, cleanup_policy="compact")
        await client.create_topic("orders", partitions=PARTITIONS)


async def read_enriched(data_dir: Path) -> list[dict[str, Any]]:
    """Return every record of ``orders-enriched``."""
    async with (
        streamflow.connect(data_dir) as client,
        client.consumer("orders-enriched", start="earliest") as consumer,
    ):
        found: list[dict[str, Any]] = []
        while batch := await consumer.poll(max_records=10_000, timeout=0.2):
            found.extend(record.value for record in batch)
        return found


def main(data_dir: Path, orders: int = 2_000) -> None:
    """Load customers, join two waves of orders around customer changes, print a summary."""
    shutil.rmtree(data_dir, ignore_errors=True)
    customers, first, changes, later = generate(orders)
    pipeline = build_pipeline()
    trio.run(create_topics, data_dir)

    trio.run(send, data_dir, "customers", list(customers.items()))
    streamflow.run(pipeline, data_dir, until_idle=True)  # 1: the table is loaded
    trio.run(send, data_dir, "orders", [(o["customer_id"], o) for o in first])
    streamflow.run(pipeline, data_dir, until_idle=True)  # 2: orders meet the table
    trio.run(send, data_dir, "customers", changes)
    streamflow.run(pipeline, data_dir, until_idle=True)  # 3: the table changes ...
    trio.run(send, data_dir, "orders", [(o["customer_id"], o) for o in later])
    streamflow.run(pipeline, data_dir, until_idle=True)  # ... and later orders see it

    enriched = sorted(trio.run(read_enriched, data_dir), key=lambda o: o["order_id"])
    unknown = sum(1 for o in enriched if o["customer"] is None)
    platinum = sum(1 for o in enriched if o["customer"] and o["customer"]["tier"] == "platinum")
    print(f"{len(enriched)} orders enriched from {len(customers)} customers")
    print(f"  {unknown} orders of unknown or deleted customers (customer: None)")
    print(f"  {platinum} orders placed after their customer's upgrade to platinum")
    for order in enriched[:3]:
        print(f"  {order}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("enrichment-data"))
    parser.add_argument("--generate", type=int, default=2_000, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.generate)
