"""Measure W1 and W2 of the shared payment workload on the built-in log and on Kafka.

Not a test (pytest does not collect it). Starts noida-db on loopback, produces
N events into one partition of each target (untimed), then times
``run_async(..., until_idle=True)`` of each job and prints events/s as JSON
(``W2_eo`` is W2 with ``processing="exactly_once"``: Kafka transactions on
Kafka, sequence numbers on the built-in log)::

    python -m tests.kafka.bench_pipelines 100000 [PEERS_DIR]

PEERS_DIR holds ``workload.py`` (default ``../shared/peers``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from streamflow import Pipeline, windows
from streamflow.runtime import run_async
from tests.runtime.helpers import produce, read

from .noida import NoidaBroker, _noida_binary

if TYPE_CHECKING:
    from streamflow.runtime.run import Processing


def main() -> None:
    """Run both jobs on both targets and print the figures."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    sys.path.insert(0, sys.argv[2] if len(sys.argv) > 2 else "../shared/peers")
    import workload as w  # type: ignore[import-not-found]

    events: list[dict[str, Any]] = w.gen_events(n)
    # recent event times: Kafka deletes records older than retention.ms at once
    shift = (int(time.time() * 1000) // 60_000 - 600) * 60_000 - w.T0_MS
    for e in events:
        e["ts"] += shift

    def w2(tag: str, name: str) -> Pipeline:
        job = Pipeline(f"{tag}-{name}")
        (
            job.source(f"{tag}-in", timestamp=lambda v: v["ts"])
            .key_by(lambda v: v["user_id"])
            .window(windows.tumbling(seconds=60))
            .aggregate("w2", initial=lambda: w.W2_EMPTY, fold=w.w2_fold)
            .sink(f"{tag}-{name}out")
        )
        return job

    def jobs(tag: str) -> dict[str, Pipeline]:
        w1 = Pipeline(f"{tag}-w1")
        w1.source(f"{tag}-in").map(w.w1_map).filter(w.w1_pred).sink(f"{tag}-w1out")
        return {"W1": w1, "W2": w2(tag, "w2"), "W2_eo": w2(tag, "w2_eo")}

    async def measure(target: str, tag: str, state: Path) -> dict[str, Any]:
        await produce(target, f"{tag}-in", events, partitions=1)
        out: dict[str, Any] = {}
        for name, job in jobs(tag).items():
            processing: Processing = "exactly_once" if name.endswith("_eo") else "at_least_once"
            started = time.perf_counter()
            await run_async(
                job, target, until_idle=True, processing=processing, state_dir=state / name
            )
            out[name] = round(n / (time.perf_counter() - started))
            out[f"{name}_results"] = len(await read(target, f"{tag}-{name.lower()}out"))
        return out

    binary = _noida_binary()
    if binary is None:
        raise SystemExit("noida-db is not installed")
    tmp = Path(tempfile.mkdtemp())
    broker = NoidaBroker(binary, tmp / "noida")
    broker.start()
    try:
        figures = {
            "embedded": trio.run(measure, str(tmp / "log"), "e", tmp / "se"),
            "kafka": trio.run(measure, f"kafka://127.0.0.1:{broker.port}", "k", tmp / "sk"),
        }
    finally:
        broker.stop()
    print(json.dumps({"events": n, "events_per_s": figures}))


if __name__ == "__main__":
    main()
