"""Run every example as a user would, and check its output against plain Python."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgpack
import pytest

from streamflow.log import Log, Record

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MINUTE_MS = 60_000


def run_example(name: str, data: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), str(data), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        cwd=data.parent,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    return done.stdout


def read(data: Path, topic: str) -> list[Record]:
    """Every record of *topic*, in (partition, offset) order."""
    with Log.open(data) as log:
        if topic not in log.topics():
            return []
        out: list[Record] = []
        for info in log.describe(topic).partitions:
            part = log.partition(topic, info.partition)
            offset = part.start_offset
            while offset < part.end_offset:
                batch = part.read(offset, max_records=10_000)
                out.extend(batch)
                offset = batch[-1].offset + 1
        return out


def values(data: Path, topic: str) -> list[Any]:
    return [r.value for r in read(data, topic)]


def frozen(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def test_quickstart_flags_the_busy_user_minutes(tmp_path: Path) -> None:
    data = tmp_path / "qs"
    out = run_example("quickstart.py", data)

    # Records that arrived after their window closed are in quickstart.late, not lost.
    late = Counter(frozen(v) for v in values(data, "quickstart.late"))
    counts: Counter[tuple[str, int]] = Counter()
    for payment in values(data, "payments"):
        if late[frozen(payment)]:
            late[frozen(payment)] -= 1
            continue
        if payment["amount"] > 0:
            counts[(payment["user_id"], payment["ts"] - payment["ts"] % MINUTE_MS)] += 1
    expected = {key: n for key, n in counts.items() if n > 60}
    alerts = values(data, "alerts")
    assert {(a["key"], a["start"]): a["value"]["n"] for a in alerts} == expected
    assert len(alerts) == len(expected)
    assert out.startswith(f"{len(expected)} busy user-minutes")


def test_metrics_aggregation_summarises_each_minute(tmp_path: Path) -> None:
    data = tmp_path / "metrics"
    out = run_example("metrics_aggregation.py", data, "--generate", "3000")

    events = values(data, "metrics")
    assert len(events) == 3000
    windows: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for e in events:  # offset order: the order the window folds them in
        windows[(e["service"], e["name"], e["ts"] - e["ts"] % MINUTE_MS)].append(e["value"])
    summaries = values(data, "metrics-1m")
    assert values(data, "metrics.late") == []  # 5 s of grace covers the 2 s of disorder
    found = {(s["service"], s["metric"], s["start"]): s for s in summaries}
    assert len(found) == len(summaries) == len(windows)
    for key, vals in windows.items():
        s = found[key]
        ordered = sorted(vals)
        assert s["end"] == key[2] + MINUTE_MS
        assert s["count"] == len(vals)
        assert s["max"] == max(vals)
        assert s["p95"] == ordered[math.ceil(0.95 * len(vals)) - 1]
        assert s["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-3)
    assert out.startswith(f"{len(windows)} one-minute summaries")


def expected_fraud_alerts(payments: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """The three rules, written out again, over each user's payments in order."""
    alerts: dict[tuple[str, int], Any] = {}
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in sorted(payments, key=lambda p: p["payment_id"]):
        if p["amount"] <= 0:  # the pipeline filters these out first
            continue
        past = history[p["user_id"]]
        in_window = [q for q in past if q["ts"] > p["ts"] - 10 * MINUTE_MS]
        if len(in_window) + 1 > 5:
            alerts[("velocity", p["payment_id"])] = {
                "payments": len(in_window) + 1,
                "window_minutes": 10,
            }
        if len(past) >= 3:
            average = sum(q["amount"] for q in past) / len(past)
            if p["amount"] > 5 * average:
                alerts[("large_amount", p["payment_id"])] = {
                    "amount": p["amount"],
                    "average": round(average, 2),
                    "factor": 5,
                }
        if past and past[-1]["country"] != p["country"]:
            minutes = (p["ts"] - past[-1]["ts"]) / MINUTE_MS
            if minutes <= 30:
                alerts[("country_hop", p["payment_id"])] = {
                    "from": past[-1]["country"],
                    "to": p["country"],
                    "minutes": round(minutes, 1),
                }
        past.append(p)
    return alerts


def test_fraud_detection_raises_every_rule_with_its_evidence(tmp_path: Path) -> None:
    data = tmp_path / "fraud"
    out = run_example("fraud_detection.py", data, "--generate", "2000")

    payments = values(data, "payments")
    assert len(payments) == 2000
    expected = expected_fraud_alerts(payments)
    alerts = values(data, "fraud-alerts")
    found = {(a["rule"], a["payment_id"]): a["evidence"] for a in alerts}
    assert len(found) == len(alerts)  # no alert twice
    assert found.keys() == expected.keys()
    for key, evidence in expected.items():
        assert found[key] == pytest.approx(evidence)
    assert {rule for rule, _ in found} == {"velocity", "large_amount", "country_hop"}
    assert out.startswith(f"{len(alerts)} alerts in topic fraud-alerts")


def test_activity_tracking_sessions_and_counts(tmp_path: Path) -> None:
    data = tmp_path / "activity"
    gap = 30 * MINUTE_MS
    out = run_example("activity_tracking.py", data, "--generate", "1500")

    views = values(data, "page-views")
    by_member: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in views:
        by_member[v["member_id"]].append(v)
    expected = set()
    for member, seen in by_member.items():
        seen.sort(key=lambda v: v["ts"])
        session = [seen[0]]
        for view in [*seen[1:], None]:
            if view is not None and view["ts"] - session[-1]["ts"] < gap:
                session.append(view)
                continue
            expected.add(
                (
                    member,
                    session[0]["ts"],
                    session[-1]["ts"] + gap,
                    len(session),
                    tuple(sorted({v["page_key"] for v in session})),
                    tuple(sorted({v["device"] for v in session})),
                )
            )
            session = [view] if view is not None else []
    sessions = values(data, "sessions")
    found = {
        (
            s["key"],
            s["start"],
            s["end"],
            s["value"]["views"],
            tuple(s["value"]["pages"]),
            tuple(s["value"]["devices"]),
        )
        for s in sessions
    }
    assert len(found) == len(sessions)
    assert found == expected

    latest = {r.key: r.value for r in read(data, "member-page-views")}
    assert latest == dict(Counter(f"{v['member_id']}|{v['page_key']}" for v in views))
    assert out.startswith(f"{len(expected)} sessions of {len(by_member)} members (1500 views)")


def test_enrichment_join_sees_the_table_as_of_each_order(tmp_path: Path) -> None:
    data = tmp_path / "enrichment"
    out = run_example("enrichment_join.py", data, "--generate", "600")

    # Each wave of input was processed by its own run, so an order sees every
    # customer record appended before it (log timestamps order the waves).
    customer_records = read(data, "customers")
    orders = read(data, "orders")
    expected = {}
    for order in orders:
        table: dict[str, Any] = {}
        for c in customer_records:
            if c.timestamp < order.timestamp:
                table[c.key] = c.value
        row = table.get(order.value["customer_id"])
        customer = None if row is None else {k: row[k] for k in ("name", "tier", "country")}
        expected[order.value["order_id"]] = {**order.value, "customer": customer}
    enriched = values(data, "orders-enriched")
    assert len(enriched) == len(orders) == 600
    assert {o["order_id"]: o for o in enriched} == expected
    tiers = Counter(o["customer"]["tier"] for o in enriched if o["customer"] is not None)
    assert tiers["platinum"] > 0  # later orders saw the upgrades
    assert any(o["customer"] is None for o in enriched)
    assert out.startswith("600 orders enriched")


@pytest.mark.slow
def test_crash_restore_demo_rebuilds_state_and_matches_a_clean_run(tmp_path: Path) -> None:
    data = tmp_path / "crash"
    out = run_example("crash_restore_demo.py", data, "--generate", "20000", timeout=240)

    assert "killed the job with SIGKILL mid-stream" in out
    assert "state rebuilt from the changelog" in out
    assert out.rstrip().endswith("results match a clean run")
    assert not (data / "job-state").exists() or any((data / "job-state").iterdir())
    balances: dict[str, dict[str, int]] = {}
    for t in values(data / "log", "transactions"):
        acc = balances.setdefault(t["account"], {"balance": 0, "transactions": 0})
        acc["balance"] += t["amount"]
        acc["transactions"] += 1
    assert sum(a["transactions"] for a in balances.values()) == 20000
    latest = {r.key: r.value for r in read(data / "log", "balances")}
    assert latest == balances
