"""R5: damaged segment and index files are always detected; no wrong record is ever served.

Each trial copies a pristine log (cleanly closed, or abandoned with an
unsynced tail), damages one file (bit flip, zeroed range, truncation, appended
garbage, deleted or garbled index), opens the log and reads everything back.
A trial is *detected* when the open or a read raises ``CorruptBatch`` naming
the file and byte position, or recovery logs that it truncated a torn tail, or
(index damage only) every record comes back exactly. Whatever is served must be
the original records, in order.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from typing import TYPE_CHECKING

from streamflow.errors import CorruptBatch
from streamflow.log import Log, Message

from .harness import report, soak

if TYPE_CHECKING:
    from pathlib import Path

TRIALS = 5000 if soak() else 1000
KINDS = ("flip", "zero", "truncate", "garbage", "index_delete", "index_garbage", "index_truncate")


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def build(path: Path, clean: bool) -> tuple[list[tuple[int, object]], int]:
    """Write the pristine log; return its records and how many are fsynced."""
    rng = random.Random(7)
    with Log.open(path) as log:
        log.create_topic("t", segment_bytes=4096, fsync="interval", flush_ms=10**9)
        p = log.partition("t", 0)
        for i in range(120):
            n = rng.randint(1, 5)
            p.append(
                [
                    Message(key=i % 9, value=f"{i}-{j}-" + "v" * rng.randint(0, 120))
                    for j in range(n)
                ]
            )
            if i == 100:
                p.flush()
                synced = p.end_offset
        records = [(r.offset, r.value) for r in p.read(0, 10_000)]
        if not clean:
            log.abandon()
        else:
            synced = len(records)
    return records, synced


def damage(rng: random.Random, directory: Path, kind: str) -> Path:
    files = sorted(directory.glob("*.log"))
    if kind.startswith("index"):
        files = sorted(directory.glob("*.index")) + sorted(directory.glob("*.timeindex"))
    files = [f for f in files if f.stat().st_size > 0] or files
    target = rng.choice(files)
    data = bytearray(target.read_bytes())
    if kind == "flip" and data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif kind == "zero" and data:
        i = rng.randrange(len(data))
        n = rng.randint(1, 64)
        before = bytes(data[i : i + n])
        data[i : i + n] = bytes(len(data[i : i + n]))
        if before == bytes(len(before)):  # already zeros: make it a real change
            data[i] = 0xFF
    elif kind in ("truncate", "index_truncate") and data:
        del data[rng.randrange(len(data)) :]
    elif kind in ("garbage", "index_garbage"):
        n = rng.randint(1, 200)
        if kind == "garbage" or not data:
            data.extend(rng.randbytes(n))
        else:
            i = rng.randrange(len(data))
            data[i : i + n] = rng.randbytes(len(data[i : i + n]))
    elif kind == "index_delete":
        target.unlink()
        return target
    target.write_bytes(bytes(data))
    return target


def test_corruption_is_detected_and_never_served(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    pristine = {clean: tmp_path / f"pristine-{clean}" for clean in (True, False)}
    built = {clean: build(path, clean) for clean, path in pristine.items()}
    handler = Warnings()
    logger = logging.getLogger("streamflow.log")
    logger.addHandler(handler)
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    wrong = undetected = 0
    try:
        for trial in range(TRIALS):
            clean = trial % 2 == 0
            original, synced = built[clean]
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine[clean], work)
            kind = rng.choice(KINDS)
            by_kind[kind] += 1
            target = damage(rng, work / "topics" / "t" / "0", kind)
            handler.count = 0
            served: list[tuple[int, object]] = []
            error: CorruptBatch | None = None
            try:
                with Log.open(work) as log:
                    p = log.partition("t", 0)
                    offset = p.start_offset
                    while offset < p.end_offset:
                        batch = p.read(offset, 50)
                        served.extend((r.offset, r.value) for r in batch)
                        offset = batch[-1].offset + 1
            except CorruptBatch as exc:
                error = exc
            if error is not None:  # names the damaged file and the byte position
                assert error.path.name.endswith(".log")
                assert error.position >= 0
            if served != original[: len(served)]:
                wrong += 1
            if error is not None:
                outcomes["corrupt_batch_error"] += 1
            elif handler.count:
                outcomes["tail_truncated_and_logged"] += 1
            elif served == original:
                outcomes["repaired_or_unaffected"] += 1
                if not kind.startswith("index"):
                    undetected += 1  # a changed .log must never pass silently
            elif kind == "truncate" and len(served) >= synced:
                # a cut at a batch boundary past the recovery point looks exactly
                # like writes a power loss took: nothing fsynced is missing
                outcomes["unsynced_tail_cut"] += 1
            else:
                undetected += 1
            assert wrong == 0, f"trial {trial}: {kind} on {target.name} served a wrong record"
            assert undetected == 0, f"trial {trial}: {kind} on {target.name} went undetected"
    finally:
        logger.removeHandler(handler)
    report(
        "R5",
        seed,
        trials=TRIALS,
        detected_pct=100.0 * (TRIALS - undetected) / TRIALS,
        wrong_records_served=wrong,
        by_kind=dict(by_kind),
        outcomes=dict(outcomes),
    )
