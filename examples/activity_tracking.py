"""Activity tracking: page views into sessions, and page views per member and page.

Page-view events carry many dimensions ``{"member_id", "page_key", "ts",
"device", "country", "referrer", "duration_ms"}`` and arrive on the topic
``page-views``. One source feeds two branches:

* sessionization: per member, session windows with a 30-minute inactivity gap;
  each closed session goes to the topic ``sessions`` as
  ``{"key": member, "start": ..., "end": ..., "value": {"views": n, "pages": [...],
  "devices": [...]}}`` (``end`` is the last view plus the gap);
* a running count of views per member and page key, written to the topic
  ``member-page-views`` after every view (key ``"member|page"``, value the new
  count): the latest record per key is the current count, so the topic can
  be compacted.

Run:  python examples/activity_tracking.py [DATA_DIR] [--generate N]
      (default ./activity-data and 5,000 generated views; the directory is recreated)
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path
from typing import Any

import trio

import streamflow
from streamflow import Pipeline, windows

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE_MS = 60_000
SESSION_GAP_MS = 30 * MINUTE_MS
PAGES = ["home", "feed", "profile", "jobs", "messages", "search", "settings"]


def generate(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Return *n* page views, in time order, from members who come back in bursts."""
    rng = random.Random(seed)
    members = [f"m{i:03d}" for i in range(max(1, n // 40))]
    next_view = {m: T0_MS + rng.randint(0, 60 * MINUTE_MS) for m in members}
    device = {m: rng.choice(["ios", "android", "web"]) for m in members}
    views = []
    for _ in range(n):
        member = min(members, key=next_view.__getitem__)  # whoever is due next
        ts = next_view[member]
        views.append(
            {
                "member_id": member,
                "page_key": rng.choice(PAGES),
                "ts": ts,
                "device": device[member] if rng.random() < 0.9 else "web",
                "country": rng.choice(["US", "IN", "BR", "DE"]),
                "referrer": rng.choice([None, "email", "search", "push"]),
                "duration_ms": rng.randint(500, 90_000),
            }
        )
        # Within a session views are < 20 minutes apart; a new session starts > 45 later.
        if rng.random() < 0.15:
            next_view[member] = ts + rng.randint(45 * MINUTE_MS, 180 * MINUTE_MS)
        else:
            next_view[member] = ts + rng.randint(5_000, 20 * MINUTE_MS)
    return views


def start_session() -> dict[str, Any]:
    """Return an empty session."""
    return {"views": 0, "pages": [], "devices": []}


def add_view(session: dict[str, Any], view: dict[str, Any]) -> dict[str, Any]:
    """Fold one page view into a session."""
    return {
        "views": session["views"] + 1,
        "pages": sorted({*session["pages"], view["page_key"]}),
        "devices": sorted({*session["devices"], view["device"]}),
    }


def build_pipeline() -> Pipeline:
    """Sessionize page views per member, and count views per member and page."""
    pipeline = Pipeline("activity")
    views = pipeline.source("page-views", timestamp=lambda v: v["ts"])
    (
        views.key_by(lambda v: v["member_id"])
        .window(windows.session(gap_ms=SESSION_GAP_MS))
        .aggregate("sessions", initial=start_session, fold=add_view)
        .sink("sessions")
    )
    (
        views.key_by(lambda v: f"{v['member_id']}|{v['page_key']}")
        .count("views-per-member-page")
        .sink("member-page-views")
    )
    return pipeline


async def produce(data_dir: Path, views: list[dict[str, Any]]) -> None:
    """Create the ``page-views`` topic and send the views, keyed by member."""
    async with streamflow.connect(data_dir) as client:
        await client.create_topic("page-views", partitions=1)
        await client.create_topic("member-page-views", partitions=1, cleanup_policy="compact")
        async with client.producer() as producer:
            await producer.send_many("page-views", views, keys=[v["member_id"] for v in views])


async def read_topic(data_dir: Path, topic: str) -> list[tuple[Any, Any]]:
    """Return ``(key, value)`` of every record of *topic*, in offset order."""
    async with (
        streamflow.connect(data_dir) as client,
        client.consumer(topic, start="earliest") as consumer,
    ):
        found: list[tuple[Any, Any]] = []
        while batch := await consumer.poll(max_records=10_000, timeout=0.2):
            found.extend((record.key, record.value) for record in batch)
        return found


def main(data_dir: Path, views: int = 5_000) -> None:
    """Generate page views, run the job until all are processed, print what it found."""
    shutil.rmtree(data_dir, ignore_errors=True)
    trio.run(produce, data_dir, generate(views))
    streamflow.run(build_pipeline(), data_dir, until_idle=True)
    sessions = [value for _, value in trio.run(read_topic, data_dir, "sessions")]
    counts = dict(trio.run(read_topic, data_dir, "member-page-views"))  # the latest per key wins
    members = {s["key"] for s in sessions}
    views_in_sessions = sum(s["value"]["views"] for s in sessions)
    print(f"{len(sessions)} sessions of {len(members)} members ({views_in_sessions} views)")
    longest = max(sessions, key=lambda s: (s["value"]["views"], s["start"]))
    print(
        f"  longest: {longest['key']}, {longest['value']['views']} views over "
        f"{(longest['end'] - SESSION_GAP_MS - longest['start']) // MINUTE_MS} minutes, "
        f"pages {longest['value']['pages']}"
    )
    print(f"{len(counts)} member|page counters; the top five:")
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]:
        print(f"  {key:20} {count}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=Path("activity-data"))
    parser.add_argument("--generate", type=int, default=5_000, metavar="N")
    args = parser.parse_args()
    main(args.data_dir, args.generate)
